"""Distillation from an ensemble of CTC models: frame-level KL, spike misalignment, pseudo-labels.

Frame-level KD applies the paper's recipe (Hinton, Vinyals & Dean 2015, section 2) to CTC output
frames: ``T^2 * KL(teacher_T || student_T)`` per frame, averaged over the frames kept. CTC
posteriors are mostly blank with a one-frame "spike" per label, and two CTC models trained from
different initialisations may put the spike of the same label at different frames; averaging
such teachers blurs their spikes, and a student matching the blur learns neither timing. The
options here: ``blank_handling`` (include / exclude / down-weight frames whose fused teacher
argmax is blank), teachers that share an initial checkpoint (:mod:`asr_kd.stages.ctc_s4_teachers`), teachers
whose spikes are guided onto one guide model's frames (:class:`GuidedCtcLoss`), and a measurement
of the misalignment (:func:`spike_misalignment`).

Sequence-level KD does not need aligned spikes: the ensemble's greedy or n-best hypotheses are
the targets of an ordinary CTC loss (:func:`pseudo_labels`, :func:`weighted_ctc_loss`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr_kd.config import CtcConfig
from asr_kd.ctc.beam import prefix_beam_search
from asr_kd.decode.ctc import collapse_ctc
from asr_kd.errors import ConfigError
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.losses import soft_cross_entropy

BLANK = 0


# --------------------------------------------------------------------------------------------
# Frame-level KL
# --------------------------------------------------------------------------------------------


def valid_frames(lengths: Tensor, num_frames: int) -> Tensor:
    """Return the boolean ``[B, num_frames]`` mask of frames inside each length."""
    return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


def blank_frame_weights(teacher_probs: Tensor, mask: Tensor, blank_handling: str, blank_weight: float = 0.1) -> Tensor:
    """Return per-frame weights ``[B, T]``: 0 on padding; on frames whose teacher argmax is blank
    1 ("include"), 0 ("exclude") or ``blank_weight`` ("downweight"); 1 on the other frames."""
    weights = mask.to(teacher_probs.dtype)
    if blank_handling == "include":
        return weights
    is_blank = teacher_probs.argmax(dim=-1) == BLANK
    if blank_handling == "exclude":
        return weights * (~is_blank).to(weights.dtype)
    if blank_handling == "downweight":
        return weights * torch.where(is_blank, torch.full_like(weights, blank_weight), torch.ones_like(weights))
    raise ConfigError(f"ctc.blank_handling must be include, exclude or downweight, got {blank_handling!r}")


def frame_kd_loss(
    student_logits: Tensor, teacher_probs: Tensor, mask: Tensor, temperature: float, blank_handling: str = "include",
    blank_weight: float = 0.1,
) -> Tensor:
    """Return ``T^2 * KL(teacher || softmax(student / T))`` averaged over the weighted frames.

    ``teacher_probs`` ``[B, T, V]`` are already softened at ``temperature`` (dense, or top-k
    expanded with zeros elsewhere); ``mask`` ``[B, T]`` marks real frames. The KL is the soft
    cross entropy of :mod:`asr_kd.kd.losses` minus the teacher's entropy (a constant, so the
    gradient is the hybrid path's), which makes the loss exactly 0 when the student equals the
    teacher. ``T^2`` keeps the gradient's size independent of ``T`` (Hinton et al., section 2).
    """
    # bf16/fp16 (autocast) logits are computed on in float32; float64 stays float64.
    student_logits = student_logits.float() if student_logits.dtype in (torch.float16, torch.bfloat16) else student_logits
    teacher_probs = teacher_probs.to(student_logits.dtype)
    weights = blank_frame_weights(teacher_probs, mask, blank_handling, blank_weight)
    cross = soft_cross_entropy(student_logits, teacher_probs, temperature, reduction="none")
    entropy = -(teacher_probs * torch.log(teacher_probs.clamp(min=1e-30))).sum(dim=-1)
    per_frame = (cross - entropy) * temperature**2
    return (per_frame * weights).sum() / weights.sum().clamp(min=1e-12)


def ctc_loss(logits: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Return the CTC loss (torch's, blank 0) averaged over utterances, each divided by its number
    of target tokens; utterances too short for their targets contribute 0 (``zero_infinity``)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    losses = F.ctc_loss(log_probs, targets, out_lengths, target_lengths, blank=BLANK, reduction="none", zero_infinity=True)
    return (losses / target_lengths.clamp(min=1).to(losses.dtype)).mean()


def weighted_ctc_loss(logits: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor, weights: Tensor) -> Tensor:
    """Return the CTC loss against ``n`` hypotheses per utterance, weighted by ``weights`` ``[B, n]``
    (e.g. the hypotheses' normalised ensemble probabilities; 0 for a missing hypothesis): each
    utterance's loss is ``sum_j w_j CTC(hyp_j) / length(hyp_j)``, then averaged over utterances."""
    b, n = weights.shape
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    rep = log_probs.repeat_interleave(n, dim=0).transpose(0, 1)  # [T, B*n, V]
    losses = F.ctc_loss(rep, targets, out_lengths.repeat_interleave(n), target_lengths, blank=BLANK, reduction="none", zero_infinity=True)
    losses = losses / target_lengths.clamp(min=1).to(losses.dtype)
    return (losses.view(b, n) * weights.to(losses.dtype)).sum(dim=1).mean()


def topk_to_dense(ids: Tensor, probs: Tensor, num_tokens: int) -> Tensor:
    """Return dense ``[..., num_tokens]`` probabilities from stored top-k ``ids``/``probs``."""
    dense = torch.zeros(*ids.shape[:-1], num_tokens, dtype=probs.dtype, device=probs.device)
    return dense.scatter_add_(-1, ids.clamp(min=0, max=num_tokens - 1), probs)


class CtcFrameKdLoss:
    """``compute_loss(model, batch)`` of a frame-level distilled student: ``kd_weight *`` the
    frame KL against the ensemble (online: the teachers run here; stored: the batch's top-k soft
    targets) ``+ ctc_weight *`` the CTC loss on the transcript."""

    def __init__(self, cfg: CtcConfig, ensemble: TeacherEnsemble | None = None) -> None:
        if cfg.kd_source == "online" and ensemble is None:
            raise ConfigError("ctc.kd_source=online needs the teacher ensemble")
        self.cfg = cfg
        self.ensemble = ensemble

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        logits = model(batch["features"], batch["lengths"])
        core = model.module if hasattr(model, "module") else model
        out_lengths = core.output_lengths(batch["lengths"])
        mask = valid_frames(out_lengths, logits.shape[1])
        if cfg.kd_source == "online":
            assert self.ensemble is not None
            self.ensemble.to(logits.device)
            teacher = self.ensemble(batch["features"], batch["lengths"], temperature=cfg.temperature, mask=mask).exp()
        else:
            ids, probs = batch["soft_ids"], batch["soft_probs"][:, : logits.shape[1]]
            # Codes decoded to every token come dense (ids None, data.stored_targets).
            teacher = probs if ids is None else topk_to_dense(ids[:, : logits.shape[1]], probs, logits.shape[-1])
            if teacher.shape[1] < logits.shape[1]:  # stored targets may be a frame short of T'
                teacher = F.pad(teacher, (0, 0, 0, logits.shape[1] - teacher.shape[1]))
                teacher[..., BLANK] += (teacher.sum(-1) == 0).to(teacher.dtype)
        kd = frame_kd_loss(logits, teacher, mask, cfg.temperature, cfg.blank_handling, cfg.blank_weight)
        hard = ctc_loss(logits, out_lengths, batch["targets"], batch["target_lengths"])
        loss = cfg.kd_weight * kd + cfg.ctc_weight * hard
        return loss, {"kd_loss": kd.detach(), "ctc_loss": hard.detach()}


class CtcSequenceKdLoss:
    """``compute_loss(model, batch)`` of a sequence-level distilled student: ``kd_weight *`` the
    weighted CTC loss on the batch's pseudo-labels ``+ ctc_weight *`` CTC on the transcript."""

    def __init__(self, cfg: CtcConfig) -> None:
        self.cfg = cfg

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch["features"], batch["lengths"])
        core = model.module if hasattr(model, "module") else model
        out_lengths = core.output_lengths(batch["lengths"])
        seq = weighted_ctc_loss(logits, out_lengths, batch["pseudo_targets"], batch["pseudo_lengths"], batch["pseudo_weights"])
        loss = self.cfg.kd_weight * seq
        metrics = {"pseudo_ctc_loss": seq.detach()}
        if self.cfg.ctc_weight > 0:
            hard = ctc_loss(logits, out_lengths, batch["targets"], batch["target_lengths"])
            loss = loss + self.cfg.ctc_weight * hard
            metrics["ctc_loss"] = hard.detach()
        return loss, metrics


def ctc_hard_loss(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """``compute_loss(model, batch)`` of teachers and the baseline: CTC on the transcript."""
    logits = model(batch["features"], batch["lengths"])
    core = model.module if hasattr(model, "module") else model
    loss = ctc_loss(logits, core.output_lengths(batch["lengths"]), batch["targets"], batch["target_lengths"])
    return loss, {}


def guided_ctc_term(logits: Tensor, guide_tokens: Tensor, mask: Tensor) -> Tensor:
    """Return the spike-guiding term of guided CTC (Kurata & Audhkhasi 2019): per utterance,
    1 minus the mean posterior that the model gives the guide's token on the frames where the
    guide's arg-max (``guide_tokens`` ``[B, T]``) is not blank; averaged over the utterances
    with at least one guide spike (0 when none has). The paper subtracts the summed posteriors
    from the CTC loss; normalising by the number of guide spikes keeps the term in [0, 1] like
    our per-token CTC loss, and the constant 1 keeps it non-negative (same gradient)."""
    if guide_tokens.shape != logits.shape[:2]:
        raise ConfigError(f"the guide's output has {tuple(guide_tokens.shape)} frames, the model's {tuple(logits.shape[:2])}; "
                          "guide and guided models need the same subsampling")
    probs = torch.softmax(logits.float(), dim=-1).gather(-1, guide_tokens.unsqueeze(-1)).squeeze(-1)
    spike = (guide_tokens != BLANK) & mask
    counts = spike.sum(dim=1)
    has = counts > 0
    if not bool(has.any()):
        return logits.new_zeros((), dtype=torch.float32)
    per_utt = (probs * spike.to(probs.dtype)).sum(dim=1) / counts.clamp(min=1).to(probs.dtype)
    return (1.0 - per_utt[has]).mean()


class GuidedCtcLoss:
    """``compute_loss(model, batch)`` of a guided teacher: CTC on the transcript ``+ weight *``
    :func:`guided_ctc_term` against the frozen ``guide`` model's arg-max tokens. Models guided by
    the same guide put their spikes on the same frames, so their posteriors fuse and distil
    without blurring the spikes."""

    def __init__(self, guide: nn.Module, weight: float) -> None:
        self.guide = guide.eval()
        for p in self.guide.parameters():
            p.requires_grad_(False)
        self.weight = weight

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch["features"], batch["lengths"])
        core = model.module if hasattr(model, "module") else model
        out_lengths = core.output_lengths(batch["lengths"])
        self.guide.to(logits.device)
        with torch.no_grad():
            guide_tokens = self.guide(batch["features"], batch["lengths"]).argmax(dim=-1)
        guided = guided_ctc_term(logits, guide_tokens, valid_frames(out_lengths, logits.shape[1]))
        hard = ctc_loss(logits, out_lengths, batch["targets"], batch["target_lengths"])
        return hard + self.weight * guided, {"ctc_loss": hard.detach(), "guide_loss": guided.detach()}


# --------------------------------------------------------------------------------------------
# Sequence-level pseudo-labels
# --------------------------------------------------------------------------------------------


def pseudo_labels(log_probs: np.ndarray, mode: str = "greedy", nbest: int = 4, beam_size: int = 8) -> list[tuple[list[int], float]]:
    """Return the hypotheses of one utterance's fused ensemble log-probabilities ``(T', V)`` as
    ``[(tokens, weight), ...]``: "greedy" gives the collapsed best path with weight 1; "nbest" the
    prefix beam search's ``nbest`` sequences, weights their probabilities renormalised over the list."""
    if mode == "greedy":
        return [(collapse_ctc(np.asarray(log_probs).argmax(-1).tolist()), 1.0)]
    if mode != "nbest":
        raise ConfigError(f"ctc.pseudo_labels must be greedy or nbest, got {mode!r}")
    hyps = prefix_beam_search(log_probs, beam_size=beam_size, nbest=nbest)
    scores = np.array([h.log_prob for h in hyps])
    w = np.exp(scores - scores.max())
    w = w / w.sum()
    return [(list(h.tokens), float(wi)) for h, wi in zip(hyps, w)]


# --------------------------------------------------------------------------------------------
# Spike misalignment between teachers
# --------------------------------------------------------------------------------------------


def spikes(log_probs: np.ndarray, blank: int = BLANK) -> list[tuple[int, int]]:
    """Return the ``(token, frame)`` spikes of a ``(T, V)`` posterior matrix: the first frame of
    each run of one non-blank argmax token (the frames greedy decoding emits a label at)."""
    path = np.asarray(log_probs).argmax(-1)
    out, prev = [], None
    for t, k in enumerate(path.tolist()):
        if k != blank and k != prev:
            out.append((int(k), t))
        prev = k
    return out


def _matched_pairs(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the frame pairs of the tokens matched by a minimum-edit-distance alignment of the
    two spike sequences (substitutions are not matches)."""
    n, m = len(a), len(b)
    dist = np.zeros((n + 1, m + 1), dtype=np.int64)
    dist[:, 0], dist[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = dist[i - 1, j - 1] + (0 if a[i - 1][0] == b[j - 1][0] else 1)
            dist[i, j] = min(sub, dist[i - 1, j] + 1, dist[i, j - 1] + 1)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if a[i - 1][0] == b[j - 1][0] and dist[i, j] == dist[i - 1, j - 1]:
            pairs.append((a[i - 1][1], b[j - 1][1]))
            i, j = i - 1, j - 1
        elif dist[i, j] == dist[i - 1, j - 1] + 1:
            i, j = i - 1, j - 1
        elif dist[i, j] == dist[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


class SpikeStats:
    """Accumulated misalignment between pairs of models over many utterances."""

    def __init__(self) -> None:
        self.offset_sum = 0.0
        self.matched = 0
        self.spikes = 0
        self.frames = 0
        self.disagree = 0
        self.blank_frames = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one utterance's pair of ``(T', V)`` posterior matrices."""
        sa, sb = spikes(a), spikes(b)
        pairs = _matched_pairs(sa, sb)
        self.offset_sum += float(sum(abs(x - y) for x, y in pairs))
        self.matched += len(pairs)
        self.spikes += max(len(sa), len(sb))
        pa, pb = np.asarray(a).argmax(-1), np.asarray(b).argmax(-1)
        self.frames += len(pa)
        self.disagree += int((pa != pb).sum())
        self.blank_frames += int((pa == BLANK).sum() + (pb == BLANK).sum())

    def summary(self) -> dict[str, float]:
        """Return mean absolute frame offset of matched spikes, share of spikes matched, share of
        frames whose argmax tokens differ, and the share of blank argmax frames."""
        return {
            "mean_spike_offset_frames": self.offset_sum / max(self.matched, 1),
            "spikes_matched": self.matched / max(self.spikes, 1),
            "argmax_disagreement": self.disagree / max(self.frames, 1),
            "blank_frame_share": self.blank_frames / max(2 * self.frames, 1),
        }


def spike_misalignment(per_model: Sequence[Sequence[np.ndarray]]) -> dict[str, float]:
    """Return :meth:`SpikeStats.summary` over every pair of models: ``per_model[i][u]`` is model
    ``i``'s ``(T', V)`` log-probabilities of utterance ``u``."""
    if len(per_model) < 2:
        raise ConfigError("spike misalignment needs at least two models")
    stats = SpikeStats()
    for i, j in itertools.combinations(range(len(per_model)), 2):
        for a, b in zip(per_model[i], per_model[j]):
            stats.update(a, b)
    out = stats.summary()
    out["num_models"] = float(len(per_model))
    out["num_pairs"] = float(math.comb(len(per_model), 2))
    return out
