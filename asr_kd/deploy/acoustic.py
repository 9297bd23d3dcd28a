"""Acoustic-model back ends for transcription: the PyTorch network of a model directory, or its
ONNX export run by onnxruntime. Both take normalised features and return per-frame
log-probabilities (log posteriors over senones, or CTC log-probs over tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from asr_kd.errors import DataError

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "acoustic.onnx", "onnx-int8": "acoustic.int8.onnx"}
INPUT_NAMES = ("x", "x_lens")
OUTPUT_NAMES = ("log_probs", "log_probs_len")


class AcousticModel(Protocol):
    def __call__(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Return one (T' x V) float32 log-probability matrix per (T x D) feature matrix."""
        ...


def pad_batch(feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x [B, T_max, D] float32, lengths [B] int64)``, padding with zeros."""
    lengths = np.array([f.shape[0] for f in feats], dtype=np.int64)
    x = np.zeros((len(feats), int(lengths.max()), feats[0].shape[1]), dtype=np.float32)
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return x, lengths


def output_lengths(model: torch.nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """Output frames per utterance: subsampled for a CTC encoder, unchanged for a spliced DNN."""
    fn = getattr(model, "output_lengths", None)
    return fn(lengths) if fn is not None else lengths


class TorchAcoustic:
    """The PyTorch network of a model directory on ``device``."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        x, lengths = pad_batch(feats)
        xt, lt = torch.from_numpy(x).to(self.device), torch.from_numpy(lengths).to(self.device)
        logp = torch.log_softmax(self.model(xt, lt).float(), dim=-1).cpu().numpy()
        out_lens = output_lengths(self.model, torch.from_numpy(lengths)).tolist()
        return [logp[i, : int(n)] for i, n in enumerate(out_lens)]


class OnnxAcoustic:
    """An ONNX export (:func:`asr_kd.deploy.onnx_export.export_onnx`) run by onnxruntime."""

    def __init__(self, path: Path | str, num_threads: int = 1, device: str = "cpu") -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path} does not exist; export the model first with `asr-kd export --model-dir {path.parent}`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail) for a bad file
            if not str(err).startswith("[ONNXRuntimeError]"):
                raise
            raise DataError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0][:120]}); export it again with "
                            f"`asr-kd export --model-dir {path.parent}`") from None

    def __call__(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        x, lengths = pad_batch(feats)
        logp, out_lens = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: x, INPUT_NAMES[1]: lengths})
        return [logp[i, : int(n)] for i, n in enumerate(out_lens)]


class EnsembleAcoustic:
    """Several model directories' networks fused by the arithmetic mean of their posteriors (the
    ensemble of the paper): ``log(mean_i p_i)``."""

    def __init__(self, members: Sequence[TorchAcoustic]) -> None:
        self.members = list(members)

    def __call__(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        outs = [m(feats) for m in self.members]
        fused = []
        for i in range(len(feats)):
            stack = np.stack([o[i] for o in outs])
            top = stack.max(axis=0)
            fused.append((top + np.log(np.exp(stack - top).mean(axis=0))).astype(np.float32))
        return fused


def ensemble_acoustic(model_dirs: Sequence[Path | str], device: str = "cpu") -> EnsembleAcoustic:
    """Return the ensemble of several hybrid model directories' networks (PyTorch); ConfigError
    unless they are all hybrid models over the same senones (equal transition-id -> pdf tables)
    with the same features and normalisation, so that the first directory's features, priors and
    graph serve them all."""
    from asr_kd.deploy.model_dir import TID2PDF_FILE, load_cmvn, load_int_array, load_network, load_spec
    from asr_kd.errors import ConfigError

    first = Path(model_dirs[0])
    spec0 = load_spec(first)
    table = load_int_array(first / TID2PDF_FILE) if spec0.kind == "hybrid" else None
    cmvn0 = load_cmvn(first, spec0)
    for d in model_dirs:
        spec = load_spec(d)
        if spec.kind != "hybrid" or table is None:
            raise ConfigError(f"an ensemble fuses hybrid DNN model directories; {d} is a {spec.kind} model")
        if not np.array_equal(load_int_array(Path(d) / TID2PDF_FILE), table):
            raise ConfigError(f"{d} and {first} model different senones; an ensemble needs models of one GMM's alignments")
        # Every member is fed the first one's features: they must be what each was trained on.
        cmvn = load_cmvn(d, spec)
        same_cmvn = (cmvn is None) == (cmvn0 is None) and (cmvn is None or (np.array_equal(cmvn.sum, cmvn0.sum)
                                                                            and np.array_equal(cmvn.sumsq, cmvn0.sumsq)))
        if spec.features != spec0.features or spec.normalization != spec0.normalization or not same_cmvn:
            raise ConfigError(f"{d} and {first} normalise different features (feature config, normalisation or CMVN statistics); "
                              "an ensemble feeds every member the first one's: rebuild them with the same make-model-dir options "
                              "(a network trained on per-utterance CMVN, a *-uttcmvn system, only joins others normalised per utterance)")
    return EnsembleAcoustic([TorchAcoustic(load_network(d), device) for d in model_dirs])


class GmmAcoustic:
    """The GMMs of a GMM-HMM model directory: per-pdf log-likelihoods (frames x pdfs) of each
    utterance's MFCC + deltas, computed with numpy (:class:`asr_kd.decode.gmm_decode.GmmScorer`)."""

    def __init__(self, model_dir: Path | str) -> None:
        from asr_kd.decode.gmm_decode import GmmScorer
        from asr_kd.deploy.model_dir import GMM_FILE, REBUILD, require_files
        from asr_kd.gmm.train import GmmSystem

        require_files(model_dir, [GMM_FILE])
        try:
            system = GmmSystem.load(Path(model_dir) / GMM_FILE)
        except DataError:  # its message suggests recipe stage 3, which does not mend a model directory
            raise DataError(f"{Path(model_dir) / GMM_FILE} is not a readable GMM system file; {REBUILD}") from None
        self.scorer = GmmScorer(system.am)

    def __call__(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.scorer.loglikes(f) for f in feats]


def make_acoustic(model_dir: Path | str, backend: str = "torch", device: str = "cpu", num_threads: int = 1) -> AcousticModel:
    """Return the ``backend`` (``torch``, ``onnx`` or ``onnx-int8``) acoustic model of ``model_dir``
    (a GMM-HMM directory: its GMMs, with the torch backend, the default, only)."""
    from asr_kd.deploy.model_dir import load_network, load_spec
    from asr_kd.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if load_spec(model_dir).kind == "gmm":
        if backend != "torch":
            raise ConfigError(f"{model_dir} is a GMM-HMM model: it runs with numpy; --backend {backend} applies to networks")
        return GmmAcoustic(model_dir)
    if backend == "torch":
        return TorchAcoustic(load_network(model_dir), device)
    return OnnxAcoustic(Path(model_dir) / ONNX_FILES[backend], num_threads, device)
