"""Training and running one CTC model: the shared training loop with CTC losses, dev scoring
(greedy token error rate), loading a trained model, (fused) log-probabilities of cuts, and the
greedy / prefix-beam / HLG scores of a set of log-probabilities. Library code: the CTC stages
(``asr_kd/stages/ctc_s*.py``) and deployment call it; it knows no recipe folder.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from torch import Tensor, nn

from asr_kd.config import CtcConfig, DecodeConfig, TrainConfig, save_config
from asr_kd.ctc.beam import prefix_beam_search
from asr_kd.ctc.kd import ctc_hard_loss, ctc_loss
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.units import CtcUnits
from asr_kd.data.ctc_data import CtcDataset, PseudoLabels
from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import SkipBatches, make_loader, make_sampler
from asr_kd.decode.ctc import decode_ctc_batch, greedy_ctc
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import score_cuts
from asr_kd.metrics.wer import WerResult, compute_wer
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.ddp import DistInfo, init_distributed
from asr_kd.train.loop import LossFn, TrainResult, to_device, train
from asr_kd.train.optim import resolve_schedule
from asr_kd.train.state import seed_everything

log = logging.getLogger(__name__)

BEST_METRIC = "token_error_rate"


def token_errors(refs: Mapping[str, Sequence[int]], hyps: Mapping[str, Sequence[int]]) -> WerResult:
    """Return the edit distance of the token sequences ``hyps`` against ``refs``, scored as words
    (one word per token id), with the per-utterance details."""
    def as_text(seqs: Mapping[str, Sequence[int]]) -> dict[str, str]:
        return {k: " ".join(str(t) for t in v) for k, v in seqs.items()}

    return compute_wer(as_text(refs), as_text(hyps))


def token_error_rate(refs: Mapping[str, Sequence[int]], hyps: Mapping[str, Sequence[int]]) -> float:
    """Return the token error rate (edit distance over reference tokens) of ``hyps``."""
    return token_errors(refs, hyps).wer


def evaluate_ctc(model: CtcEncoder, loader: Iterable[Mapping[str, Any]], device: torch.device) -> dict[str, float]:
    """Return ``{"loss": mean dev CTC loss per token, "token_error_rate": greedy TER}`` over the
    loader's batches (model in eval mode, gradients off: the caller's job)."""
    losses, refs, hyps = [], {}, {}
    for batch in loader:
        batch = to_device(batch, device)
        logits = model(batch["features"], batch["lengths"])
        out_lengths = model.output_lengths(batch["lengths"])
        losses.append(float(ctc_loss(logits, out_lengths, batch["targets"], batch["target_lengths"])) * len(batch["cut_ids"]))
        logp = torch.log_softmax(logits.float(), -1).cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(batch["target_lengths"].cpu().numpy())])
        targets = batch["targets"].cpu().numpy()
        for i, cut_id in enumerate(batch["cut_ids"]):
            refs[cut_id] = targets[offsets[i]: offsets[i + 1]].tolist()
            hyps[cut_id] = greedy_ctc(logp[i, : int(out_lengths[i])])
    if not refs:
        raise DataError("the dev set is empty; pass dev cuts with transcripts")
    return {"loss": sum(losses) / len(refs), BEST_METRIC: token_error_rate(refs, hyps)}


def train_ctc_model(
    train_cuts: CutSet, dev_cuts: CutSet | None, train_cmvn: CmvnStats | None, dev_cmvn: CmvnStats | None, units: CtcUnits,
    cfg: CtcConfig, train_config: TrainConfig, exp_dir: Path | str, compute_loss: LossFn = ctc_hard_loss,
    pseudo: PseudoLabels | None = None, soft_targets: bool = False, init_checkpoint: Path | None = None,
    resume: bool = True, info: DistInfo | None = None, encoder_only: bool = False,
) -> TrainResult:
    """Train a :class:`CtcEncoder` of ``cfg.model_size`` with the shared loop and return its
    :class:`TrainResult`; the dev greedy token error rate picks ``best.pt``.

    ``compute_loss`` defaults to CTC on the transcripts; ``pseudo`` adds pseudo-labels to the
    batches, ``soft_targets`` the stored top-k targets. ``init_checkpoint`` starts from another
    run's weights (the shared initial alignment of the teachers); with ``encoder_only`` every
    weight but the output layer's (:func:`load_encoder`: a phone model's encoder for a BPE model,
    ``ctc.phone_init_steps``). Under ``torchrun`` every rank
    joins the DDP job; on CUDA ``train_config.amp=bf16`` runs the forward pass in bf16.
    """
    if train_config.frame_subsampling != 1:
        raise ConfigError(f"train.frame_subsampling={train_config.frame_subsampling} is for the frame-level (hybrid) DNNs; "
                          "a CTC model's output rate is its encoder's (ctc.subsampling): set train.frame_subsampling=1")
    if train_config.best_metric != BEST_METRIC or train_config.best_mode != "min":
        log.info("CTC models are selected by the lowest dev %s (not train.best_metric=%s)", BEST_METRIC, train_config.best_metric)
        train_config = dataclasses.replace(train_config, best_metric=BEST_METRIC, best_mode="min")
    info = info or init_distributed(train_config.device)  # the group stays for the next model
    exp_dir = Path(exp_dir)
    if info.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / "ctc.yaml")
    dataset = CtcDataset(train_cmvn, units.encode, pseudo, soft_targets=soft_targets)

    def train_sampler(epoch: int) -> Any:
        sampler = make_sampler(train_cuts, train_config.max_duration, train_config.shuffle, train_config.seed, train_config.bucketing,
                               train_config.num_buckets, world_size=info.world_size, rank=info.rank)
        sampler.set_epoch(epoch)
        return sampler

    def make_train_loader(epoch: int, skip: int) -> Any:
        return make_loader(dataset, SkipBatches(train_sampler(epoch), skip), train_config.num_workers, seed=train_config.seed * 100003 + epoch)

    # A cosine schedule over the whole run (cosine_steps 0): count the first epoch's batches, as the hybrid DNNs do.
    train_config = resolve_schedule(train_config, lambda: sum(1 for _ in train_sampler(0)))

    evaluate = None
    if dev_cuts is not None:
        dev_dataset = CtcDataset(dev_cmvn, units.encode)

        def evaluate(model: nn.Module) -> dict[str, float]:
            sampler = make_sampler(dev_cuts, train_config.max_duration, shuffle=False, seed=0, bucketing=False)
            return evaluate_ctc(model, make_loader(dev_dataset, sampler, train_config.num_workers), info.device)  # type: ignore[arg-type]

    seed_everything(train_config.seed)
    feature_dim = _feature_dim(train_cuts)
    model = CtcEncoder(feature_dim, units.num_tokens, cfg.model_size, cfg.subsampling, cfg.dropout)
    if init_checkpoint is not None and encoder_only:
        load_encoder(model, load_checkpoint(init_checkpoint)["model"], init_checkpoint)
        log.info("encoder initialised from %s (output layer new)", init_checkpoint)
    elif init_checkpoint is not None:
        model.load_state_dict(load_checkpoint(init_checkpoint)["model"])
        log.info("initialised from %s", init_checkpoint)
    log.info("CTC %s encoder: %d parameters, %d tokens", cfg.model_size, sum(p.numel() for p in model.parameters()), units.num_tokens)
    return train(model, make_train_loader, compute_loss, evaluate, train_config, exp_dir, info=info, resume=resume,
                 extra={**model.describe(), "units": units.kind})


def load_encoder(model: CtcEncoder, state: Mapping[str, Tensor], source: Path | str) -> None:
    """Copy every weight of ``state`` but the output layer's (``output.*``) into ``model``, so that
    a model over other units (BPE) starts from another model's encoder (phones). Every other
    weight must exist with the same shape (the same model size, subsampling and feature
    dimension); otherwise :class:`ConfigError` names the first that differs and ``source``."""
    own = model.state_dict()
    encoder = {k: v for k, v in own.items() if not k.startswith("output.")}
    for key, value in encoder.items():
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            found = "missing" if key not in state else f"of shape {tuple(state[key].shape)}"
            raise ConfigError(f"cannot start from the encoder in {source}: its {key} is {found}, this model's is {tuple(value.shape)} "
                              "(give both the same ctc.model_size, ctc.subsampling and features)")
        encoder[key] = state[key]
    model.load_state_dict({**own, **encoder})


def _feature_dim(cuts: CutSet) -> int:
    for cut in cuts:
        if not cut.has_features:
            raise DataError(f"cut {cut.id} has no features; run stage 1 (features) first")
        return int(cut.num_features)
    raise DataError("the training cuts are empty; check stage 1's output")


def load_ctc_model(exp_dir_or_checkpoint: Path | str, device: str | torch.device = "cpu") -> CtcEncoder:
    """Return the CTC model of a run folder (``best.pt``, else ``final.pt``) or checkpoint, in eval mode."""
    path = Path(exp_dir_or_checkpoint)
    if path.is_dir():
        found = [path / n for n in ("best.pt", "final.pt") if (path / n).is_file()]
        if not found:
            raise DataError(f"{path} holds no best.pt or final.pt; train that CTC model first")
        path = found[0]
    ckpt = load_checkpoint(path)
    if "ctc_model" not in ckpt.get("extra", {}):
        raise DataError(f"checkpoint {path} holds no CTC model description; pass a checkpoint written by the CTC training")
    model = CtcEncoder.from_description(ckpt["extra"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def ctc_log_probs(
    models: Sequence[CtcEncoder], cuts: CutSet | Iterable[Cut], cmvn: CmvnStats | None, temperature: float = 1.0,
    fusion: str = "arithmetic", max_duration: float = 200.0, device: str | torch.device | None = None,
) -> Iterator[tuple[Cut, np.ndarray]]:
    """Yield ``(cut, log_probs)`` in manifest order, ``log_probs`` float32 ``(T', V)`` on the CPU:
    one model's ``log_softmax(z / T)``, or the fusion of several models' (padding masked out),
    scored on ``device`` (default: :func:`asr_kd.kd.ensemble.inference_device`, which run.sh's
    ``--device`` sets); :func:`asr_kd.kd.ensemble.score_cuts` with the first model's subsampling."""
    dataset = CtcDataset(cmvn, encode=None)
    for cut, log_probs in score_cuts(models, cuts, dataset.__getitem__, temperature, fusion, max_duration, device, models[0].output_lengths):
        yield cut, log_probs.numpy()


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """Greedy and prefix-beam token error rates of a part (and their WERs with BPE units), and the
    greedy token errors and reference tokens of each utterance (what a paired bootstrap resamples)."""

    rates: dict[str, float]
    token_errors: dict[str, int]
    ref_tokens: dict[str, int]


def greedy_token_errors(log_probs: Mapping[str, np.ndarray], refs: Mapping[str, str], units: CtcUnits) -> WerResult:
    """Return the token errors of greedy search (no LM) on ``{cut_id: (T', V) log-probs}`` against
    the transcripts ``refs`` in ``units`` (per utterance in ``.utterances``)."""
    return token_errors({k: units.encode(refs[k]) for k in log_probs}, {k: greedy_ctc(v) for k, v in log_probs.items()})


def token_scores(log_probs: Mapping[str, np.ndarray], refs: Mapping[str, str], units: CtcUnits, beam_size: int) -> TokenScores:
    """Return the :class:`TokenScores` of ``{cut_id: (T', V) log-probs}`` against the transcripts
    ``refs`` (no LM: greedy and prefix-beam search over the units)."""
    ref_tokens = {k: units.encode(refs[k]) for k in log_probs}
    beam = {k: list(prefix_beam_search(v, beam_size=beam_size)[0].tokens) for k, v in log_probs.items()}
    greedy_result = greedy_token_errors(log_probs, refs, units)
    rates = {"greedy_ter": greedy_result.wer, "beam_ter": token_error_rate(ref_tokens, beam)}
    if units.kind == "bpe":
        greedy = {k: greedy_ctc(v) for k, v in log_probs.items()}  # argmax again: cheap beside the beam search
        rates["greedy_wer"] = compute_wer(refs, {k: units.to_text(v) or "" for k, v in greedy.items()}).wer
        rates["beam_wer"] = compute_wer(refs, {k: units.to_text(v) or "" for k, v in beam.items()}).wer
    return TokenScores(rates, {u.utt_id: u.errors for u in greedy_result.utterances},
                       {u.utt_id: len(u.ref) for u in greedy_result.utterances})


def hlg_hypotheses(
    log_probs: Mapping[str, np.ndarray], units: CtcUnits, hlg: Any, decode_config: DecodeConfig, scale: float | None = None,
    blank_penalty: float | None = None,
) -> dict[str, str]:
    """Return ``{cut_id: words}`` of HLG decoding (kaldi-decoder) of ``{cut_id: (T', V) log-probs}``
    with the log-probs minus ``blank_penalty`` on the blank, times ``scale`` (defaults:
    ``decode_config.ctc_blank_penalty`` and ``ctc_acoustic_scale``); an utterance whose decoding
    failed (counted and logged) is left out."""
    if scale is not None:
        decode_config = dataclasses.replace(decode_config, ctc_acoustic_scale=scale)
    if blank_penalty is not None:  # the one applied (a grid, if any, is the search's, not this decoding's)
        decode_config = dataclasses.replace(decode_config, ctc_blank_penalty=blank_penalty, ctc_blank_penalties=())
    decoded = decode_ctc_batch(hlg, dict(log_probs), decode_config)
    words = units.lang.words
    return {k: " ".join(words.name(w) for w in d.word_ids) for k, d in decoded.decoded.items()}


def hlg_wer(
    log_probs: Mapping[str, np.ndarray], refs: Mapping[str, str], units: CtcUnits, hlg: Any, decode_config: DecodeConfig,
    scale: float | None = None, blank_penalty: float | None = None,
) -> WerResult:
    """Return the WER of :func:`hlg_hypotheses` against ``refs``."""
    return compute_wer({k: refs[k] for k in log_probs}, hlg_hypotheses(log_probs, units, hlg, decode_config, scale, blank_penalty))

