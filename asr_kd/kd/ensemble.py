"""Fusion of a teacher ensemble's posteriors (Hinton, Vinyals & Dean 2015, section 4).

The paper's speech ensemble averages the probabilities of N acoustic models that differ only in
their random seed ("arithmetic" fusion). "geometric" fusion averages the log-probabilities and
renormalises (a product of experts); for temperature-softened logits it equals the softmax of the
mean logit at that temperature.

Every function here takes the teachers stacked along a leading dimension, ``[N, ..., C]`` (or a
sequence of N tensors ``[..., C]``), e.g. ``[N, frames, C]`` or ``[N, B, T, C]``, and returns
log-probabilities ``[..., C]``. An optional boolean ``mask`` of shape ``[...]`` marks the valid
rows (True) of padded batches; masked rows come out as the uniform distribution whatever the
teachers said there (padding may hold garbage, even NaN), so downstream losses never see NaN.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lhotse import CutSet
from lhotse.cut import Cut

from asr_kd.config import KD_FUSIONS
from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import FrameDataset, make_sampler
from asr_kd.errors import ConfigError

TeacherOutputs = Tensor | Sequence[Tensor]


def fuse_log_probs(log_probs: TeacherOutputs, fusion: str = "arithmetic", mask: Tensor | None = None) -> Tensor:
    """Return the log-probabilities ``[..., C]`` of the fused distribution of N teachers whose
    log-probabilities are ``log_probs`` (``[N, ..., C]`` or N tensors ``[..., C]``).

    ``fusion="arithmetic"``: ``log(mean_i p_i)``; ``"geometric"``: ``log_softmax(mean_i log p_i)``.
    """
    stacked = _stack(log_probs)
    stacked = _blank_masked_rows(stacked, mask)
    if fusion == "arithmetic":
        # log-sum-exp keeps tiny posteriors exact, where exp-then-mean would underflow.
        fused = torch.logsumexp(stacked, dim=0) - math.log(stacked.shape[0])
    elif fusion == "geometric":
        fused = torch.log_softmax(stacked.mean(dim=0), dim=-1)
    else:
        raise ConfigError(f"ensemble fusion must be one of {KD_FUSIONS}, got {fusion!r}; set kd.fusion accordingly")
    return _uniform_where_masked(fused, mask)


def fuse_logits(
    logits: TeacherOutputs,
    temperature: float = 1.0,
    fusion: str = "arithmetic",
    mask: Tensor | None = None,
) -> Tensor:
    """Return the log-probabilities ``[..., C]`` of the fused ensemble at ``temperature``: each
    teacher's logits are softened (``log_softmax(z_i / T)``) and then fused as in
    :func:`fuse_log_probs`."""
    if not temperature > 0:
        raise ConfigError(f"ensemble temperature must be positive, got {temperature}; set kd.temperature > 0")
    stacked = _blank_masked_rows(_stack(logits), mask)
    return fuse_log_probs(torch.log_softmax(stacked / temperature, dim=-1), fusion, mask)


def mean_logits(logits: TeacherOutputs, mask: Tensor | None = None) -> Tensor:
    """Return the teachers' mean logits ``[..., C]`` (the regression target of logit matching);
    masked rows are zero."""
    stacked = _blank_masked_rows(_stack(logits), mask)
    return stacked.mean(dim=0)


class TeacherEnsemble(nn.Module):
    """N frozen teachers evaluated together: the ``online`` mode runs this inside the student's
    training loop instead of reading stored soft targets.

    Each teacher is called with the same positional arguments and must return logits of one
    common shape ``[..., C]``. The teachers stay in eval mode (no dropout) even when a parent
    module is put in training mode, and no gradient flows into them.
    """

    def __init__(self, teachers: Sequence[nn.Module], fusion: str = "arithmetic") -> None:
        super().__init__()
        if len(teachers) == 0:
            raise ConfigError("a teacher ensemble needs at least one teacher; train the teachers (stage 4) first")
        if fusion not in KD_FUSIONS:
            raise ConfigError(f"ensemble fusion must be one of {KD_FUSIONS}, got {fusion!r}; set kd.fusion accordingly")
        self.teachers = nn.ModuleList(teachers)
        self.fusion = fusion
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        self.teachers.eval()

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        """Keep the teachers in eval mode whatever ``mode`` says; return self."""
        super().train(mode)
        self.teachers.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, *inputs: Tensor, **kwargs: Tensor) -> Tensor:
        """Return every teacher's logits stacked, ``[N, ..., C]``; ``kwargs`` go to every teacher
        (``positions`` of a frame-subsampled batch)."""
        outs = [t(*inputs, **kwargs) for t in self.teachers]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1:
            raise ValueError(f"teachers disagree on the output shape: {sorted(shapes)}")
        return torch.stack(outs)

    def forward(self, *inputs: Tensor, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
        """Return the fused log-probabilities ``[..., C]`` of the ensemble at ``temperature``."""
        return fuse_logits(self.teacher_logits(*inputs), temperature, self.fusion, mask)


def _stack(outputs: TeacherOutputs) -> Tensor:
    """Return the teachers' outputs as one ``[N, ..., C]`` tensor."""
    if isinstance(outputs, Tensor):
        if outputs.dim() < 2:
            raise ValueError(f"teacher outputs must be [N, ..., C], got shape {tuple(outputs.shape)}")
        return outputs
    if len(outputs) == 0:
        raise ValueError("no teacher outputs to fuse")
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"teacher outputs differ in shape: {sorted(shapes)}")
    return torch.stack(list(outputs))


def _check_mask(stacked: Tensor, mask: Tensor) -> None:
    if tuple(mask.shape) != tuple(stacked.shape[1:-1]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match the rows {tuple(stacked.shape[1:-1])} of teacher outputs {tuple(stacked.shape)}")


def _blank_masked_rows(stacked: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the masked rows so that padding garbage (inf, NaN) cannot reach the arithmetic."""
    if mask is None:
        return stacked
    _check_mask(stacked, mask)
    return torch.where(mask.bool()[None, ..., None], stacked, torch.zeros((), dtype=stacked.dtype))


def _uniform_where_masked(log_probs: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return log_probs
    uniform = torch.full((), -math.log(log_probs.shape[-1]), dtype=log_probs.dtype)
    return torch.where(mask.bool()[..., None], log_probs, uniform)


INFERENCE_DEVICE_ENV = "ASR_KD_INFERENCE_DEVICE"


def inference_device(device: str | torch.device | None = None) -> torch.device:
    """Where networks score outside training: ``device`` if given, else the environment's
    ``ASR_KD_INFERENCE_DEVICE`` (``auto``: CUDA if present; ``cpu``; ``cuda``; run.sh's --device
    sets it for stages 3, 5, 7, 8 and 10 and CTC stages 5-7), else the CPU."""
    if device is not None:
        return torch.device(device)
    name = os.environ.get(INFERENCE_DEVICE_ENV, "").strip() or "cpu"
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{INFERENCE_DEVICE_ENV} must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{INFERENCE_DEVICE_ENV}=cuda (run.sh --device cuda) but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


@torch.no_grad()
def score_cuts(
    models: Sequence[torch.nn.Module], cuts: Iterable[Cut] | CutSet, dataset: Callable[[CutSet], dict], temperature: float = 1.0,
    fusion: str = "arithmetic", max_duration: float = 20.0, device: str | torch.device | None = None,
    output_lengths: Callable[[Tensor], Tensor] | None = None, on_device: bool = False,
) -> Iterator[tuple[Cut, Tensor]]:
    """Yield ``(cut, log_probs)`` in manifest order, ``log_probs`` float32 ``[frames', C]``: the
    fused posteriors of ``models`` at ``temperature`` (one model: its own ``log_softmax(z/T)``),
    scored on ``device`` (default: :func:`inference_device`) in batches of whole cuts (``max_duration``
    seconds) that ``dataset`` turns into padded ``features`` and their ``lengths``, padding masked
    out of the fusion. The code shared by the frame classifiers' and the CTC models' inference.

    ``output_lengths``: a model's output frames for its input frames (a CTC encoder's subsampling;
    default: one output a frame). ``on_device``: leave ``log_probs`` where they were scored (stage
    5 works on each cut there); by default they are on the CPU, copied once a batch."""
    device = inference_device(device)
    ensemble = TeacherEnsemble(list(models), fusion).to(device)
    cutset = cuts if isinstance(cuts, CutSet) else CutSet.from_cuts(cuts)
    for cut_batch in make_sampler(cutset, max_duration, shuffle=False, seed=0, bucketing=False):
        batch = dataset(cut_batch)
        feats, lengths = batch["features"].to(device), batch["lengths"].to(device)
        # Output lengths stay on the CPU: slicing a cut's rows then needs no device sync.
        out_lengths = batch["lengths"] if output_lengths is None else output_lengths(batch["lengths"])
        width = feats.shape[1] if output_lengths is None else int(out_lengths.max())
        mask = torch.arange(width, device=device)[None, :] < out_lengths.to(device)[:, None]
        log_probs = ensemble(feats, lengths, temperature=temperature, mask=mask).float()
        if not on_device:
            log_probs = log_probs.cpu()
        for i, cut in enumerate(cut_batch):
            yield cut, log_probs[i, : int(out_lengths[i])]


def ensemble_log_posteriors(
    models: Sequence[torch.nn.Module], cuts: Iterable[Cut] | CutSet, cmvn: CmvnStats | None, temperature: float = 1.0,
    fusion: str = "arithmetic", max_duration: float = 20.0, device: str | torch.device | None = None, *, on_device: bool = False,
) -> Iterator[tuple[Cut, torch.Tensor]]:
    """Yield ``(cut, log_probs)`` in manifest order, ``log_probs`` float32 ``[frames, C]`` on the
    CPU (``on_device``: where they were scored): the fused posteriors of frame classifiers
    ``models`` at ``temperature`` (:func:`score_cuts`), scored on ``device`` (default:
    :func:`inference_device`).

    Every model is fed ``cmvn``'s normalisation: a network trained on per-utterance CMVN
    (:func:`asr_kd.train.frame_classifier.load_frame_classifier` marks it) is refused.
    """
    if any(getattr(m, "input_normalization", None) == "utterance" for m in models):
        raise ConfigError("an ensemble here is fed the part's CMVN statistics; a network trained on per-utterance CMVN (a *_uttcmvn "
                          "student) cannot join it (decode it through its model directory: asr-kd make-model-dir --system <kind>-uttcmvn)")
    dataset = FrameDataset(cmvn, labels_name=None, soft_targets=False)
    return score_cuts(models, cuts, dataset.__getitem__, temperature, fusion, max_duration, device, on_device=on_device)
