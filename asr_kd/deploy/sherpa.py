"""Export a CTC model directory for sherpa-onnx's offline CTC recognizer, and run it.

sherpa-onnx computes its own features (kaldi-native-fbank: Kaldi's povey-window log-mel fbank,
no dither, no edge snipping, the same as stage 1's lhotse fbank) but normalises nothing for the
model type used here: its "zipformer CTC" model (icefall's export-onnx-ctc.py interface) takes
raw fbank ``x [N, T, C]`` and ``x_lens [N]`` (int64) and returns ``log_probs [N, T', V]`` and
``log_probs_len [N]``; V is read from the output's static last axis and the subsampling factor is
fixed at 4 (it only scales timestamps). NeMo CTC models would have sherpa-onnx normalise per
feature, but they get librosa-style (Slaney, hann window) filter banks, which our models never
saw. So the global CMVN of the model directory is folded into the exported graph.

With ``ctc_graph`` (``OfflineCtcFstDecoderConfig``) sherpa-onnx searches the HLG with
kaldi-decoder's FasterDecoder, reading column ``ilabel - 1`` as ours does, and returns word ids
(``result.words``), mapped to words here with the model directory's words.txt. It reports a word
only on an arc that reads a new non-blank token; a word label that determinisation left on a
blank or repeat arc is dropped, one cause of disagreement with our own decoder.

sherpa-onnx's HLG search takes the network's outputs as they are, with no acoustic scale or
blank penalty, and only its max-active is an option (its beam is kaldi-decoder's default, 16). So
the HLG scale and blank penalty the model directory records (``ctc_acoustic_scale`` and
``ctc_blank_penalty``, chosen on dev by CTC stage 7) are folded into the exported graph, which
returns scale x (log-probabilities, the blank's minus the penalty), and the recorded max-active is
written into the model's metadata, where :class:`SherpaCtc` reads it. The scale leaves a greedy
search's output as it is; a blank penalty does not (a greedy search of the exported model emits
more tokens, as it would with sherpa-onnx's own blank_penalty).

The hybrid DNN student cannot run in sherpa-onnx: it has no HMM transition model, no senone
priors and no HCLG search (its FST decoder is the CTC one above, whose decodable reads network
outputs by token id), so hybrid models keep onnxruntime + kaldi-decoder
(``asr-kd transcribe --backend onnx``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from asr_kd.config import DecodeConfig
from asr_kd.deploy.model_dir import WORDS_FILE, ModelSpec, load_cmvn, load_network, load_spec
from asr_kd.deploy.onnx_export import ExportableAcoustic, add_metadata, export_module, quantize_int8
from asr_kd.errors import ConfigError, DataError
from asr_kd.lang.symbols import SymbolTable

log = logging.getLogger(__name__)

SHERPA_MODEL = "model.onnx"
SHERPA_MODEL_INT8 = "model.int8.onnx"
SHERPA_SUBSAMPLING = 4  # hard-coded by sherpa-onnx for this model type
SHERPA_FRAME_LENGTH = 0.025  # seconds: sherpa-onnx's fbank window (its default, which SherpaCtc keeps)
EXPORT_COMMAND = "asr-kd export --model-dir <model dir> --sherpa-dir"  # how users (re)make a folder


def export_sherpa(model_dir: Path | str, out_dir: Path | str, int8: bool = True) -> Path:
    """Write ``model.onnx`` (``model.int8.onnx`` too with ``int8``; without it, one left by an
    earlier export is removed), ``tokens.txt``, ``HLG.fst`` and ``words.txt`` for sherpa-onnx
    under ``out_dir``; return ``out_dir``. ConfigError for a hybrid
    model or one normalised per utterance (sherpa-onnx would need the normalisation in the graph
    over the utterance, which this export does not do)."""
    model_dir, out = Path(model_dir), Path(out_dir)
    spec = check_sherpa_exportable(model_dir)
    cmvn = load_cmvn(model_dir, spec)
    assert cmvn is not None
    mean, std = cmvn.mean_std("global")
    decoding = spec.decode_config()
    module = ExportableAcoustic(load_network(model_dir), torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32),
                                output_scale=decoding.ctc_acoustic_scale, blank_penalty=decoding.ctc_blank_penalty)
    out.mkdir(parents=True, exist_ok=True)
    path = export_module(module, spec.features.num_mel_bins, out / SHERPA_MODEL)
    # sherpa-onnx picks the model class from its config (zipformer_ctc), not from metadata: these
    # keys describe the file, and SherpaCtc reads the fbank size and the max-active from them.
    metadata = {"model_type": "asr-kd-ctc",
                "comment": "asr-kd CTC encoder, global CMVN, blank penalty and HLG scale folded in; load as sherpa-onnx zipformer_ctc",
                "subsampling_factor": spec.subsampling, "feature_dim": spec.features.num_mel_bins,
                "ctc_acoustic_scale": decoding.ctc_acoustic_scale, "ctc_blank_penalty": decoding.ctc_blank_penalty,
                "ctc_max_active": decoding.max_active}
    add_metadata(path, metadata)
    if int8:
        add_metadata(quantize_int8(path, out / SHERPA_MODEL_INT8), metadata)
    else:  # an int8 model of an earlier export would no longer match the graph and words copied below
        (out / SHERPA_MODEL_INT8).unlink(missing_ok=True)
    for name in ("tokens.txt", "HLG.fst", WORDS_FILE):
        shutil.copyfile(model_dir / name, out / name)
    if spec.subsampling != SHERPA_SUBSAMPLING:
        # Only sherpa-onnx's timestamps use the factor; the words are unaffected.
        log.warning("model subsamples by %d but sherpa-onnx assumes %d: its timestamps will be off",
                    spec.subsampling, SHERPA_SUBSAMPLING)
    return out


def check_sherpa_exportable(model_dir: Path | str) -> ModelSpec:
    """Return the spec of ``model_dir``; ConfigError unless it is a CTC model with global CMVN,
    the only kind :func:`export_sherpa` writes (checked before any export writes a file)."""
    spec = load_spec(model_dir)
    if spec.kind != "ctc":
        raise ConfigError(f"{model_dir} holds a {spec.kind} model, and sherpa-onnx runs CTC models only: its FST decoder has no HMM "
                          "transitions, senone priors or HCLG search; drop --sherpa-dir, and transcribe it with "
                          "`asr-kd transcribe --backend onnx`")
    if spec.normalization != "global":
        raise ConfigError(f"{model_dir} normalises per utterance; rebuild it with --normalization global for sherpa-onnx")
    return spec


def sherpa_metadata(path: Path | str) -> dict[str, str]:
    """Return the metadata :func:`export_sherpa` wrote into the ONNX file ``path``."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


class SherpaCtc:
    """sherpa-onnx's offline CTC recognizer over an :func:`export_sherpa` folder, HLG search with
    the max-active :func:`export_sherpa` recorded in the model's metadata.

    ``feature_dim`` defaults to the fbank size the metadata records; a different one is refused,
    since sherpa-onnx would feed the network features of the wrong width."""

    def __init__(self, sherpa_dir: Path | str, feature_dim: int | None = None, sampling_rate: int = 16000, num_threads: int = 1,
                 int8: bool = False) -> None:
        import sherpa_onnx

        d = Path(sherpa_dir)
        model = d / (SHERPA_MODEL_INT8 if int8 else SHERPA_MODEL)
        for p in (model, d / "tokens.txt", d / "HLG.fst", d / WORDS_FILE):
            if not p.is_file():
                raise DataError(f"{p} does not exist; run `{EXPORT_COMMAND} {d}` first"
                                + (" (without --no-int8)" if p == model and int8 else ""))
        self.sampling_rate = sampling_rate
        self.words = SymbolTable.from_file(d / WORDS_FILE)
        meta = sherpa_metadata(model)
        self.feature_dim = _recorded_int(meta, model, "feature_dim", feature_dim)
        if feature_dim is not None and feature_dim != self.feature_dim:
            raise ConfigError(f"{model} was exported for {self.feature_dim} fbank bins, not {feature_dim}; "
                              f"drop --feature-dim (the model's own is used)")
        self.max_active = _recorded_int(meta, model, "ctc_max_active", DecodeConfig().max_active)
        self.recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
            model=str(model), tokens=str(d / "tokens.txt"), num_threads=num_threads, sample_rate=sampling_rate,
            feature_dim=self.feature_dim, ctc_graph=str(d / "HLG.fst"), ctc_max_active=self.max_active)

    def __call__(self, samples: Sequence[np.ndarray]) -> list[list[str]]:
        """Return the words of each 1-D float32 signal (at ``sampling_rate``)."""
        streams = []
        for s in samples:
            stream = self.recognizer.create_stream()
            stream.accept_waveform(self.sampling_rate, np.asarray(s, dtype=np.float32))
            streams.append(stream)
        self.recognizer.decode_streams(streams)
        return [[self.words.name(int(w)) for w in st.result.words] for st in streams]


def _recorded_int(meta: dict[str, str], model: Path, key: str, fallback: int | None) -> int:
    """``meta[key]`` as an int; where an older export lacks it, ``fallback`` with a warning (or a
    ConfigError when there is none)."""
    if key in meta:
        return int(meta[key])
    if fallback is None:
        raise ConfigError(f"{model} records no {key}; re-export it with `{EXPORT_COMMAND}` "
                          "or pass --feature-dim")
    log.warning("%s records no %s (an older export): using %d; re-export it with `%s` to decode at the model directory's "
                "settings", model, key, fallback, EXPORT_COMMAND)
    return fallback
