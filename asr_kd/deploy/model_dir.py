"""A self-contained model directory: everything that turns audio into words, copyable to another
machine, loaded without executing code.

```
model.json        kind (hybrid | gmm | ctc), feature config, normalisation, frame shift, subsampling, decoding
                  (hybrid: and the dev sweep that chose its acoustic scale, when make-model-dir --tune-scale-on did)
model.pt          hybrid, ctc: the network: {"model": state dict, "extra": what rebuilds it} (weights_only)
cmvn.npz          global CMVN statistics (normalisation "global"; absent for "utterance"; MFCC ones for gmm)
hybrid:  log_priors.txt (senone log priors), HCLG.fst, words.txt, tid2pdf.npy, tid2phone.npy
gmm:     gmm.npz (the GMM-HMM, arrays and JSON, no model.pt), HCLG.fst, words.txt, tid2pdf.npy, tid2phone.npy
ctc:     tokens.txt, units.json (bpe.model), HLG.fst, words.txt
```

A GMM directory's features are MFCC (the FeatureConfig's ``num_ceps``) with the mean removed
(global or per utterance; no variance normalisation, as the recipe's stage 3) and deltas
(``gmm_features`` in ``model.json``).

Per-speaker CMVN cannot follow a model to arbitrary audio (the speaker is unknown), so a model
directory normalises with global statistics, pooled from the training part's per-speaker ones,
or per utterance (each file with its own mean and variance). A network trained on per-utterance
normalised features (recipe stage 9's ``*-uttcmvn`` students) always gets the latter.

The hybrid HMM's transition model lives in the recipe's :class:`GmmSystem` file; only the two
tables decoding needs (transition-id -> pdf, transition-id -> phone) are copied, as arrays. Decoding uses ``FasterDecoder`` (best path only), which
needs nothing else of the transition model.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from asr_kd.config import DecodeConfig, DnnConfig, FeatureConfig, config_from_dict
from asr_kd.data.features import CmvnStats, utterance_normalize
from asr_kd.errors import ConfigError, DataError
from asr_kd.utils import atomic_path, write_text_atomic

MODEL_JSON = "model.json"
MODEL_PT = "model.pt"
CMVN_FILE = "cmvn.npz"
PRIORS_FILE = "log_priors.txt"
TID2PDF_FILE = "tid2pdf.npy"
TID2PHONE_FILE = "tid2phone.npy"
WORDS_FILE = "words.txt"
GMM_FILE = "gmm.npz"
MODEL_KINDS = ("hybrid", "gmm", "ctc")
NORMALIZATIONS = ("global", "utterance")
FORMAT_VERSION = 1
REBUILD = "rebuild the model directory with `asr-kd make-model-dir`"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What ``model.json`` says: the kind of model and how its input features are made."""

    kind: str
    features: FeatureConfig
    normalization: str
    subsampling: int = 1
    units: str = ""  # ctc: "phone" or "bpe"
    silence_phones: tuple[int, ...] = ()  # hybrid: phone ids trimmed from word ends in CTM output
    description: str = ""
    # the decoding the system's table WER was measured with (beam, max_active and the acoustic
    # scale, or for CTC the HLG scale and, where not 0, the blank penalty, tuned on dev by the
    # recipe); empty: DecodeConfig's defaults.
    decoding: dict = dataclasses.field(default_factory=dict)
    # gmm: how MFCCs become the GMMs' input after mean removal (delta_order, delta_window,
    # utterance_cmvn: GmmConfig's fields, :func:`asr_kd.gmm.features.gmm_features`).
    gmm_features: dict = dataclasses.field(default_factory=dict)
    # hybrid: the dev sweep that chose ``decoding``'s acoustic scale for this very network
    # (:meth:`asr_kd.decode.tuning.ScaleSweep.to_dict`, :func:`record_tuned_scale`); empty: the
    # scale came with ``decoding`` (the recipe's tables).
    scale_sweep: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")

    def decode_config(self) -> DecodeConfig:
        """Return the DecodeConfig this model is decoded with (its recorded ``decoding`` over the defaults)."""
        return config_from_dict(DecodeConfig, self.decoding, "model.json decoding")

    @property
    def frame_seconds(self) -> float:
        """Seconds per network output frame."""
        return self.features.frame_shift * self.subsampling

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["silence_phones"] = list(self.silence_phones)
        return json.dumps({"format": FORMAT_VERSION, **d}, indent=1) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> "ModelSpec":
        try:
            d = json.loads(path.read_text())
            d.pop("format", None)
            d["features"] = config_from_dict(FeatureConfig, d["features"], str(path))
            d["silence_phones"] = tuple(d.get("silence_phones", ()))
            return cls(**d)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path} is not a valid model description ({err}); rebuild the model directory with `asr-kd make-model-dir`") from None


def pooled_cmvn(stats: CmvnStats) -> CmvnStats:
    """Return one ``"global"`` key holding the sums of every key of ``stats`` (e.g. the training
    part's speakers): the statistics of all its frames together."""
    if not stats.keys:
        raise DataError("CMVN statistics hold no key; recompute the training part's features (stage 1)")
    return CmvnStats(["global"], stats.count.sum(keepdims=True), stats.sum.sum(0, keepdims=True), stats.sumsq.sum(0, keepdims=True))


def normalize_features(feats: np.ndarray, normalization: str, cmvn: CmvnStats | None, variance: bool = True) -> np.ndarray:
    """Return ``feats`` (T x D) with mean removed and (with ``variance``) variance scaled to one:
    by the global statistics ``cmvn``, or by the utterance's own (``normalization == "utterance"``)."""
    if normalization == "global":
        assert cmvn is not None
        return cmvn.normalize(feats, "global", variance)
    return utterance_normalize(feats, variance)


def _copy(src: Path | str, dst: Path) -> None:
    src = Path(src)
    if not src.is_file():
        raise DataError(f"{src} does not exist; it is needed for the model directory (train or build it first)")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _check_inputs(inputs: dict[str, tuple[Path | str | None, str]]) -> None:
    """DataError naming the first missing input (``{what: (path, how to make it)}``; a None path
    is not needed), before anything is written: a failed build leaves no half-written directory."""
    for what, (path, fix) in inputs.items():
        if path is not None and not Path(path).is_file():
            raise DataError(f"{what} {path} does not exist; it is needed for the model directory ({fix})")


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def _save_network(checkpoint: Path | str, out: Path, kind: str) -> None:
    """Copy only the weights and the model description of a training checkpoint (no optimizer,
    no RNG state) so that ``torch.load(weights_only=True)`` reads it."""
    from asr_kd.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    extra = ckpt.get("extra", {})
    need = "ctc_model" if kind == "ctc" else "model_config"
    if need not in extra:
        raise DataError(f"checkpoint {checkpoint} holds no {kind} model description ({need}); pass a checkpoint of a {kind} model")
    keep = {k: extra[k] for k in ("ctc_model", "model_config", "num_classes", "input_normalization") if k in extra}
    with atomic_path(out) as tmp:
        torch.save({"model": ckpt["model"], "extra": keep}, tmp)


def network_normalization(checkpoint: Path | str, normalization: str | None = None) -> str:
    """Return the normalisation a model directory of the network ``checkpoint`` uses:
    ``"utterance"`` for a network trained on per-utterance normalised features (its checkpoint's
    ``input_normalization``, :func:`asr_kd.train.frame_classifier.train_frame_classifier`), else
    ``normalization`` (default ``"global"``). ConfigError when ``normalization`` asks a network
    trained per utterance for global statistics it never saw."""
    from asr_kd.train.checkpoint import load_checkpoint

    trained = load_checkpoint(checkpoint).get("extra", {}).get("input_normalization")
    if trained == "utterance":
        if normalization not in (None, "utterance"):
            raise ConfigError(f"{checkpoint} was trained on features normalised per utterance; its model directory must normalise "
                              f"per utterance too (drop --normalization {normalization})")
        return "utterance"
    return normalization or "global"


def assemble_hybrid_model_dir(
    out_dir: Path | str, *, checkpoint: Path | str, log_priors: Path | str, graph_dir: Path | str, gmm_model: Path | str,
    lang_dir: Path | str, features: FeatureConfig, train_cmvn: Path | str | None, normalization: str | None = None, description: str = "",
    decoding: dict | None = None,
) -> Path:
    """Write a hybrid model directory at ``out_dir`` from explicit paths: the DNN ``checkpoint``,
    the senone ``log_priors`` (text, :func:`asr_kd.decode.priors.save_priors`), ``graph_dir``
    (HCLG.fst, words.txt), the GMM system whose transition model built HCLG, the lang directory
    (silence phones), the feature config and the training part's CMVN statistics (pooled into
    global ones); ``decoding`` (DecodeConfig fields, e.g. the tuned acoustic scale) goes into
    ``model.json``. ``normalization``: :func:`network_normalization`. Returns ``out_dir``."""
    from asr_kd.decode.priors import load_priors
    from asr_kd.gmm.train import GmmSystem

    _check_inputs({"network checkpoint": (checkpoint, "train it first"), "senone priors": (log_priors, "compute them first"),
                   **_hmm_search_inputs(gmm_model, graph_dir)})
    normalization = network_normalization(checkpoint, normalization)
    out = _start(out_dir, normalization, train_cmvn)
    tm = GmmSystem.load(gmm_model).tm
    priors = load_priors(log_priors, tm.num_pdfs)
    _save_network(checkpoint, out / MODEL_PT, "hybrid")
    np.savetxt(out / PRIORS_FILE, priors.astype(np.float64), fmt="%.8g")
    silence = _write_hmm_search(out, tm, graph_dir, lang_dir)
    spec = ModelSpec("hybrid", features, normalization, 1, silence_phones=silence, description=description, decoding=dict(decoding or {}))
    spec.decode_config()  # a bad field stops here, not when the directory is used
    write_text_atomic(out / MODEL_JSON, spec.to_json())
    return out


def _hmm_search_inputs(gmm_model: Path | str, graph_dir: Path | str) -> dict[str, tuple[Path | str | None, str]]:
    return {"GMM system": (gmm_model, "train it first (recipe stage 3)"),
            "decoding graph": (Path(graph_dir) / "HCLG.fst", "build it with `asr-kd make-hclg`"),
            "word table": (Path(graph_dir) / WORDS_FILE, "build the graph with `asr-kd make-hclg`")}


def _write_hmm_search(out: Path, tm, graph_dir: Path | str, lang_dir: Path | str) -> tuple[int, ...]:
    """Write what an HCLG search needs of the HMM (transition-id -> pdf and -> phone tables), the
    graph and its words; return the silence phone ids (trimmed from CTM word ends)."""
    from asr_kd.decode.hybrid import tid_to_pdf
    from asr_kd.lang.lang_dir import Lang

    _save_array(out / TID2PDF_FILE, tid_to_pdf(tm).astype(np.int32))
    _save_array(out / TID2PHONE_FILE, np.array([tm.transition_id_to_phone(t) for t in range(1, tm.num_transition_ids + 1)], dtype=np.int32))
    _copy(Path(graph_dir) / "HCLG.fst", out / "HCLG.fst")
    _copy(Path(graph_dir) / WORDS_FILE, out / WORDS_FILE)
    return tuple(Lang.load(lang_dir).silence_phone_ids)


def assemble_gmm_model_dir(
    out_dir: Path | str, *, gmm_model: Path | str, graph_dir: Path | str, lang_dir: Path | str, features: FeatureConfig,
    train_cmvn: Path | str | None, delta_order: int, delta_window: int, utterance_cmvn: bool = False, normalization: str = "global",
    description: str = "", decoding: dict | None = None,
) -> Path:
    """Write a GMM-HMM model directory at ``out_dir``: the GMM system (its own safe ``.npz``
    format), ``graph_dir``'s HCLG and words, the transition tables, the feature config, the
    training part's MFCC statistics (pooled into a global mean) and the deltas the GMMs expect
    (GmmConfig's ``delta_order``, ``delta_window``, ``utterance_cmvn``).
    Returns ``out_dir``."""
    from asr_kd.gmm.train import GmmSystem

    _check_inputs(_hmm_search_inputs(gmm_model, graph_dir))
    out = _start(out_dir, normalization, train_cmvn)
    system = GmmSystem.load(gmm_model)  # a malformed file stops here, with its one-line error
    _copy(gmm_model, out / GMM_FILE)
    (out / MODEL_PT).unlink(missing_ok=True)
    silence = _write_hmm_search(out, system.tm, graph_dir, lang_dir)
    spec = ModelSpec("gmm", features, normalization, 1, silence_phones=silence, description=description, decoding=dict(decoding or {}),
                     gmm_features={"delta_order": int(delta_order), "delta_window": int(delta_window),
                                   "utterance_cmvn": bool(utterance_cmvn)})
    spec.decode_config()
    write_text_atomic(out / MODEL_JSON, spec.to_json())
    return out


def assemble_ctc_model_dir(
    out_dir: Path | str, *, checkpoint: Path | str, units_dir: Path | str, hlg: Path | str, words: Path | str,
    features: FeatureConfig, train_cmvn: Path | str | None, normalization: str | None = None, description: str = "",
    decoding: dict | None = None,
) -> Path:
    """Write a CTC model directory at ``out_dir`` from explicit paths: the CTC ``checkpoint``,
    the units directory (tokens.txt, units.json, bpe.model), the HLG graph and its words.txt, the
    feature config and the training part's CMVN statistics; ``decoding`` (DecodeConfig fields,
    e.g. the HLG scale ``ctc_acoustic_scale`` and blank penalty ``ctc_blank_penalty`` chosen on
    dev) goes into ``model.json``. Returns
    ``out_dir``. ``normalization``: :func:`network_normalization`."""
    units_dir = Path(units_dir)
    _check_inputs({"network checkpoint": (checkpoint, "train the CTC student first"),
                   "CTC units": (units_dir / "tokens.txt", "prepare the CTC units first"),
                   "CTC units description": (units_dir / "units.json", "prepare the CTC units first"),
                   "CTC decoding graph": (hlg, f"build it with `asr-kd make-hlg --lang-dir <lang dir> --graph-dir {Path(hlg).parent}`"),
                   "word table": (words, "prepare the lang directory first")})
    normalization = network_normalization(checkpoint, normalization)
    out = _start(out_dir, normalization, train_cmvn)
    _save_network(checkpoint, out / MODEL_PT, "ctc")
    _copy(units_dir / "tokens.txt", out / "tokens.txt")
    _copy(units_dir / "units.json", out / "units.json")
    kind = json.loads((units_dir / "units.json").read_text())["kind"]
    if kind == "bpe":
        _copy(units_dir / "bpe.model", out / "bpe.model")
    _copy(hlg, out / "HLG.fst")
    _copy(words, out / WORDS_FILE)
    subsampling = int(torch.load(out / MODEL_PT, weights_only=True)["extra"]["ctc_model"]["subsampling"])
    spec = ModelSpec("ctc", features, normalization, subsampling, units=kind, description=description, decoding=dict(decoding or {}))
    write_text_atomic(out / MODEL_JSON, spec.to_json())
    return out


def _start(out_dir: Path | str, normalization: str, train_cmvn: Path | str | None) -> Path:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    out = Path(out_dir)
    pooled = None
    if normalization == "global":  # read before the folder is made, so that a missing file leaves none
        if train_cmvn is None:
            raise ConfigError("global normalisation needs the training part's CMVN statistics (cmvn_<train part>.npz)")
        pooled = pooled_cmvn(CmvnStats.load(train_cmvn))
    out.mkdir(parents=True, exist_ok=True)
    if pooled is not None:
        pooled.save(out / CMVN_FILE)
    else:
        (out / CMVN_FILE).unlink(missing_ok=True)
    return out


def record_tuned_scale(model_dir: Path | str, sweep) -> ModelSpec:
    """Make the best acoustic scale of ``sweep`` (a :class:`asr_kd.decode.tuning.ScaleSweep` of
    this directory's network on a dev part) the hybrid ``model_dir``'s decoding scale, and keep the
    sweep in ``model.json``; return the new spec."""
    spec = load_spec(model_dir)
    if spec.kind != "hybrid":
        raise ConfigError(f"{model_dir} is a {spec.kind} model directory; only a hybrid one's acoustic scale is tuned this way")
    spec = dataclasses.replace(spec, decoding={**spec.decoding, "acoustic_scale": sweep.best}, scale_sweep=sweep.to_dict())
    spec.decode_config()
    write_text_atomic(Path(model_dir) / MODEL_JSON, spec.to_json())
    return spec


def load_spec(model_dir: Path | str) -> ModelSpec:
    """Return the :class:`ModelSpec` of ``model_dir``; DataError if it is not a model directory."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise DataError(f"{model_dir} is not a model directory (no {MODEL_JSON}); build one with `asr-kd make-model-dir`")
    return ModelSpec.from_json(path)


def load_network(model_dir: Path | str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Return the network of ``model_dir`` in eval mode (read with ``weights_only=True``)."""
    from asr_kd.ctc.model import CtcEncoder
    from asr_kd.models.dnn import SplicedDnn

    path = Path(model_dir) / MODEL_PT
    if (Path(model_dir) / GMM_FILE).is_file() and not path.is_file():
        raise ConfigError(f"{model_dir} is a GMM-HMM model directory: it has no network to load or export")
    if not path.is_file():
        raise DataError(f"{path} does not exist; {REBUILD}")
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        extra = payload["extra"]
        if "ctc_model" in extra:
            model: torch.nn.Module = CtcEncoder.from_description(extra)
        else:
            model = SplicedDnn(config_from_dict(DnnConfig, extra["model_config"], str(path)), int(extra["num_classes"]))
        model.load_state_dict(payload["model"])
    except (RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
        # torch's zip reader says "PytorchStreamReader failed ..." for a truncated file.
        raise DataError(f"{path} is not a readable network ({_first_line(err)}); {REBUILD}") from None
    return model.to(device).eval()


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0].split(". ")[0] if lines else type(err).__name__)[:120]


def require_files(model_dir: Path | str, names: Sequence[str]) -> None:
    """DataError naming the first of ``names`` missing from ``model_dir``, with the fix (the
    directory is made whole by make-model-dir, not by the recipe stage that made the file)."""
    for name in names:
        path = Path(model_dir) / name
        if not path.is_file():
            raise DataError(f"{path} does not exist; {REBUILD}")


def load_cmvn(model_dir: Path | str, spec: ModelSpec) -> CmvnStats | None:
    """Return the global CMVN statistics of ``model_dir`` (None for per-utterance normalisation);
    DataError naming the file when it is missing or unreadable."""
    if spec.normalization != "global":
        return None
    require_files(model_dir, [CMVN_FILE])
    path = Path(model_dir) / CMVN_FILE
    try:
        stats = CmvnStats.load(path)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not readable CMVN statistics ({_first_line(err)}); {REBUILD}") from None
    if "global" not in stats.keys:
        raise DataError(f"{path} holds no global CMVN statistics; {REBUILD}")
    return stats


def load_int_array(path: Path) -> np.ndarray:
    """Read an integer table written by the model directory (never a pickle)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; {REBUILD}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"{path} is not a readable integer table ({_first_line(err)}); {REBUILD}") from None
