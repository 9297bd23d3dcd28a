"""Recipe stages 4-6 as library functions: the teacher ensemble, its soft targets, the students.

Input: the stage-3 contract (``<exp>/gmm/ali``: fbank cuts of every part with a ``senones``
alignment, ``log_priors.npy``, ``senones.json``; ``<data>/fbank/cmvn_<part>.npz``). Outputs:

```
<exp>/teachers/teacher<i>/       one DNN per seed (train_frame_classifier's layout: final.pt, ...)
<exp>/soft_targets/cuts_<train>.jsonl.gz, storage_<train>/, stats.json
<exp>/students/hard/, distilled/ the hard-target baseline and the distilled student
```

Every stage skips finished work (a finished run is not retrained, an interrupted one resumes
from its latest checkpoint) and writes its own section of RESULTS.md when given a path.
Stages 7 and 8 live in :mod:`asr_kd.kd.evaluation` and :mod:`asr_kd.kd.three_percent`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from lhotse import CutSet, load_manifest_lazy
from lhotse.cut import Cut
from tqdm import tqdm

from asr_kd.config import DnnConfig, KdConfig, TrainConfig, save_config
from asr_kd.data.features import CmvnStats, cmvn_path
from asr_kd.gmm.stage import Stage3Paths
from asr_kd.data.frames import FrameDataset, make_sampler
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.soft_targets import SoftTargetStats, store_soft_targets, topk_compress
from asr_kd.kd.student import OnlineDistillationLoss, StoredDistillationLoss
from asr_kd.models.dnn import SplicedDnn
from asr_kd.report.results_md import write_section
from asr_kd.train.frame_classifier import load_frame_classifier, train_frame_classifier
from asr_kd.train.loop import TrainResult
from asr_kd.utils import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

STUDENT_KINDS = ("hard", "distilled")
# Students start from other seeds than the teachers: a baseline with teacher 0's seed would be
# teacher 0 itself (training is deterministic on CPU).
STUDENT_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class KdLayout:
    """Where stages 3-8 read and write, given the recipe's data and experiment folders."""

    data_dir: Path
    exp_dir: Path
    train_part: str = "train-clean-100"
    dev_part: str = "dev-clean"
    test_part: str = "test-clean"

    def ali_cuts(self, part: str) -> Path:
        """Stage 3's fbank cuts of ``part`` with senone alignments."""
        return Stage3Paths.of(self.exp_dir).ali_cuts(part)

    def cmvn(self, part: str) -> Path:
        """Stage 1's fbank CMVN statistics of ``part``."""
        return cmvn_path(self.data_dir / "fbank", part)

    @property
    def senones_json(self) -> Path:
        return Stage3Paths.of(self.exp_dir).senones_json

    @property
    def log_priors(self) -> Path:
        return Stage3Paths.of(self.exp_dir).log_priors

    def teacher_dir(self, i: int) -> Path:
        return self.exp_dir / "teachers" / f"teacher{i}"

    @property
    def soft_dir(self) -> Path:
        return self.exp_dir / "soft_targets"

    @property
    def soft_cuts(self) -> Path:
        """The training cuts carrying the ensemble's top-k soft targets (stage 5)."""
        return self.soft_dir / f"cuts_{self.train_part}.jsonl.gz"

    def student_dir(self, kind: str) -> Path:
        return self.exp_dir / "students" / kind

    def open_cuts(self, path: Path) -> CutSet:
        """Return the lazily opened cut manifest ``path``; DataError naming the stage to run."""
        if not path.is_file():
            raise DataError(f"cut manifest {path} does not exist; run the stage that writes it first (stage 3 alignments, stage 5 soft targets)")
        return load_manifest_lazy(path)

    def open_cmvn(self, part: str) -> CmvnStats:
        """Return the CMVN statistics of ``part``; DataError if stage 1 did not write them."""
        path = self.cmvn(part)
        if not path.is_file():
            raise DataError(f"CMVN statistics {path} do not exist; run stage 1 (features) for {part}")
        return CmvnStats.load(path)


@dataclasses.dataclass(frozen=True)
class SenoneInfo:
    """What stage 3 says about its senones: their number, the GMM system and its HCLG."""

    num_senones: int
    model: Path
    graph: Path


def read_senones(layout: KdLayout) -> SenoneInfo:
    """Return the :class:`SenoneInfo` of ``<exp>/gmm/ali/senones.json``; DataError if stage 3
    has not run or the file lacks a field."""
    path = layout.senones_json
    if not path.is_file():
        raise DataError(f"{path} does not exist; run stage 3 (asr-kd train-gmm) first")
    try:
        info = json.loads(path.read_text())
        return SenoneInfo(int(info["num_senones"]), Path(info["model"]), Path(info["graph"]))
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path} lacks a valid {err} field; rerun stage 3 (asr-kd train-gmm)") from None


def model_checkpoint(exp_dir: Path) -> Path:
    """Return ``exp_dir/best.pt`` (best dev frame accuracy) if it exists, else ``final.pt``;
    DataError if the run never finished."""
    for name in ("best.pt", "final.pt"):
        if (exp_dir / name).is_file():
            return exp_dir / name
    raise DataError(f"{exp_dir} holds no best.pt or final.pt; train that model first (stages 4 and 6)")


def _write_results(results_md: Path | None, heading: str, body: str, command: str) -> None:
    if results_md is not None:
        text = f"{heading}\n\n" + (f"Produced by `{command}`.\n\n" if command else "") + body
        write_section(results_md, heading, text)


# --------------------------------------------------------------------------------------------
# Stage 4: teachers
# --------------------------------------------------------------------------------------------


def train_teachers(
    layout: KdLayout, num_teachers: int, model_config: DnnConfig, train_config: TrainConfig,
    results_md: Path | None = None, command: str = "",
) -> list[TrainResult]:
    """Train ``num_teachers`` DNNs on the stage-3 senone alignments, differing only in their seed
    (``train_config.seed + i``), in ``<exp>/teachers/teacher<i>``; a finished teacher is skipped,
    an interrupted one resumed. Returns their :class:`TrainResult` in order."""
    if num_teachers < 1:
        raise ConfigError(f"--num-teachers must be >= 1, got {num_teachers}")
    senones = read_senones(layout)
    results = []
    for i in range(num_teachers):
        cfg = dataclasses.replace(train_config, seed=train_config.seed + i)
        start = time.time()
        log.info("teacher %d of %d: seed %d -> %s", i + 1, num_teachers, cfg.seed, layout.teacher_dir(i))
        result = train_frame_classifier(
            layout.ali_cuts(layout.train_part), layout.ali_cuts(layout.dev_part), layout.cmvn(layout.train_part),
            layout.cmvn(layout.dev_part), senones.num_senones, model_config, cfg, layout.teacher_dir(i), resume=True,
        )
        log.info("teacher %d: %s, best dev frame accuracy %s (%.0f s)", i, result.state.stop_reason, result.state.best_metric, time.time() - start)
        results.append(result)
    rows = [f"| teacher{i} | {train_config.seed + i} | {r.state.step} | {_fmt_pct(r.state.best_metric)} |" for i, r in enumerate(results)]
    body = (f"{num_teachers} DNNs ({_describe(model_config)}), {senones.num_senones} senones, differing only in the seed.\n\n"
            "| Teacher | Seed | Steps | Best dev frame accuracy |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    _write_results(results_md, "## Teacher ensemble (stage 4)", body, command)
    return results


def _describe(cfg: DnnConfig) -> str:
    return (f"{cfg.num_hidden_layers} x {cfg.hidden_dim} ReLU, window {cfg.left_context} + 1 + {cfg.right_context} "
            f"frames of {cfg.feature_dim} fbank")


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def load_teachers(layout: KdLayout, num_teachers: int | None = None, device: str | torch.device = "cpu") -> list[SplicedDnn]:
    """Return the trained teachers of ``<exp>/teachers`` (all of them, or the first
    ``num_teachers``), in eval mode; DataError if stage 4 has not produced them."""
    dirs = sorted((p for p in (layout.exp_dir / "teachers").glob("teacher*") if p.is_dir()), key=lambda p: int(p.name[7:] or 0))
    if num_teachers is not None:
        dirs = [layout.teacher_dir(i) for i in range(num_teachers)]
    if not dirs:
        raise DataError(f"no teacher under {layout.exp_dir / 'teachers'}; run stage 4 (asr-kd train-teachers) first")
    return [load_frame_classifier(model_checkpoint(d), device) for d in dirs]


# --------------------------------------------------------------------------------------------
# Ensemble posteriors (stages 5 and 7)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ensemble_log_posteriors(
    models: Sequence[torch.nn.Module], cuts: Iterable[Cut] | CutSet, cmvn: CmvnStats | None, temperature: float = 1.0,
    fusion: str = "arithmetic", max_duration: float = 20.0, device: str | torch.device = "cpu",
) -> Iterator[tuple[Cut, torch.Tensor]]:
    """Yield ``(cut, log_probs)`` in manifest order, ``log_probs`` float32 ``[frames, C]``: the
    fused posteriors of ``models`` at ``temperature`` (one model: its own ``log_softmax(z/T)``).

    Batches of whole cuts are run through every model once, padding masked out of the fusion.
    """
    ensemble = TeacherEnsemble(list(models), fusion).to(device)
    dataset = FrameDataset(cmvn, labels_name=None, soft_targets=False)
    cutset = cuts if isinstance(cuts, CutSet) else CutSet.from_cuts(cuts)
    sampler = make_sampler(cutset, max_duration, shuffle=False, seed=0, bucketing=False)
    for cut_batch in sampler:
        batch = dataset[cut_batch]
        feats, lengths = batch["features"].to(device), batch["lengths"].to(device)
        mask = torch.arange(feats.shape[1], device=device)[None, :] < lengths[:, None]
        log_probs = ensemble(feats, lengths, temperature=temperature, mask=mask).float().cpu()
        for i, cut in enumerate(cut_batch):
            yield cut, log_probs[i, : int(lengths[i])]


# --------------------------------------------------------------------------------------------
# Stage 5: soft targets
# --------------------------------------------------------------------------------------------


def make_soft_targets(
    layout: KdLayout, kd: KdConfig, num_teachers: int | None = None, max_duration: float = 20.0,
    results_md: Path | None = None, command: str = "",
) -> dict[str, float]:
    """Store the teacher ensemble's posteriors at ``kd.temperature`` (``kd.fusion``) for every
    training frame as top-``kd.top_k`` soft targets on the training cuts (``<exp>/soft_targets``);
    write ``stats.json`` and return its contents: frames, bytes per frame stored vs dense float32,
    the mean KL(stored || full) and the mass kept, seconds. Skipped when the cuts exist."""
    stats_path = layout.soft_dir / "stats.json"
    if layout.soft_cuts.is_file() and stats_path.is_file():
        log.info("soft targets exist (%s); skipping", layout.soft_cuts)
        return json.loads(stats_path.read_text())
    teachers = load_teachers(layout, num_teachers)
    cuts = CutSet.from_cuts(layout.open_cuts(layout.ali_cuts(layout.train_part)))
    cmvn = layout.open_cmvn(layout.train_part)
    stats = SoftTargetStats()
    start = time.time()

    def targets() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        posteriors = ensemble_log_posteriors(teachers, cuts, cmvn, kd.temperature, kd.fusion, max_duration)
        for cut, log_probs in tqdm(posteriors, total=len(cuts), desc="ensemble soft targets", unit="cut", leave=False):
            full = log_probs.exp()
            ids, probs = topk_compress(full, kd.top_k)
            stats.update(full.numpy(), ids, probs)
            yield cut.id, ids, probs

    stored = store_soft_targets(cuts, targets(), layout.soft_dir / f"storage_{layout.train_part}", kd.top_k, kd.temperature)
    with atomic_path(layout.soft_cuts) as tmp:
        stored.to_file(tmp)
    summary = {**stats.summary(), "num_teachers": len(teachers), "temperature": kd.temperature, "top_k": kd.top_k,
               "fusion": kd.fusion, "cuts": len(stored), "seconds": round(time.time() - start, 1)}
    save_config(kd, layout.soft_dir / "kd.yaml")
    write_text_atomic(stats_path, json.dumps(summary, indent=1) + "\n")
    log.info("soft targets: %d frames, %d bytes/frame stored vs %d dense float32, mean KL(stored || full) %.4f nats, mass kept %.3f",
             summary["frames"], summary["bytes_per_frame"], summary["dense_float32_bytes_per_frame"],
             summary["mean_kl_stored_vs_full"], summary["mean_mass_kept"])
    body = (f"Ensemble of {len(teachers)} teachers ({kd.fusion} mean) at T = {kd.temperature:g}, top-{kd.top_k} per frame "
            f"(int32 ids + float16 probabilities, renormalised), {summary['frames']} training frames in {summary['cuts']} cuts.\n\n"
            "| Bytes per frame stored | Dense float32 | Ratio | Mean mass kept | Mean KL(stored ‖ full), nats |\n|---|---|---|---|---|\n"
            f"| {summary['bytes_per_frame']} | {summary['dense_float32_bytes_per_frame']} | "
            f"{summary['dense_float32_bytes_per_frame'] / max(summary['bytes_per_frame'], 1):.0f}x | {summary['mean_mass_kept']:.4f} | "
            f"{summary['mean_kl_stored_vs_full']:.4f} |\n")
    _write_results(results_md, "## Soft targets (stage 5)", body, command)
    return summary


# --------------------------------------------------------------------------------------------
# Stage 6: students
# --------------------------------------------------------------------------------------------


def train_student(
    layout: KdLayout, kind: str, model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    num_teachers: int | None = None, results_md: Path | None = None, command: str = "",
) -> TrainResult:
    """Train the hard-target baseline (``kind="hard"``) or the distilled student
    (``"distilled"``) in ``<exp>/students/<kind>``, both with seed ``train_config.seed + 1000``
    and the same architecture. The distilled student reads the stored soft targets of stage 5
    (``kd.mode=stored``) or runs the teachers in its loop (``kd.mode=online``, ``kd.loss``
    soft_ce or logit_l2). Resumes an interrupted run; returns its :class:`TrainResult`."""
    if kind not in STUDENT_KINDS:
        raise ConfigError(f"student kind must be one of {STUDENT_KINDS}, got {kind!r}")
    senones = read_senones(layout)
    cfg = dataclasses.replace(train_config, seed=train_config.seed + STUDENT_SEED_OFFSET)
    exp_dir = layout.student_dir(kind)
    train_cuts: Path = layout.ali_cuts(layout.train_part)
    loss = None
    if kind == "distilled":
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(kd, exp_dir / "kd.yaml")
        if kd.mode == "stored":
            if not layout.soft_cuts.is_file():
                raise DataError(f"{layout.soft_cuts} does not exist; run stage 5 (asr-kd make-soft-targets) first, or set kd.mode=online")
            train_cuts, loss = layout.soft_cuts, StoredDistillationLoss(kd)
        else:
            loss = OnlineDistillationLoss(TeacherEnsemble(load_teachers(layout, num_teachers), kd.fusion), kd)
    start = time.time()
    kwargs = {"compute_loss": loss} if loss is not None else {}
    result = train_frame_classifier(
        train_cuts, layout.ali_cuts(layout.dev_part), layout.cmvn(layout.train_part), layout.cmvn(layout.dev_part),
        senones.num_senones, model_config, cfg, exp_dir, resume=True, **kwargs,
    )
    log.info("student %s: %s, best dev frame accuracy %s (%.0f s)", kind, result.state.stop_reason, result.state.best_metric, time.time() - start)
    how = "hard targets (senone alignments)" if kind == "hard" else (
        f"distilled, kd.mode={kd.mode}, loss={kd.loss}, T={kd.temperature:g}, soft weight {kd.soft_weight:g}, hard weight {kd.hard_weight:g}")
    body = (f"{_describe(model_config)}; {how}; {result.state.step} steps ({result.state.stop_reason}); "
            f"best dev frame accuracy {_fmt_pct(result.state.best_metric)}.\n")
    _write_results(results_md, f"## Student: {kind} (stage 6)", body, command)
    return result
