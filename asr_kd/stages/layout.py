"""One home for every folder and file name that recipe stages share, and for the field names that
stages store on cuts.

:class:`RecipeLayout` is built from a recipe's data and experiment folders and its part names; each
stage module asks it where to read and write, so a folder name appears here and nowhere else.

```
<data>/manifests/                      stage 0: lhotse recordings + supervisions per part
<data>/corpus/                         stage 0: the synthetic corpus (offline default)
<data>/fbank/, <data>/mfcc/            stage 1: cuts_<part>.jsonl.gz, feats, cmvn_<part>.npz
<data>/lang/                           stage 2: lexicon, L/G FSTs, words.txt, lang.json
<exp>/gmm/                             stage 3: mono/, tri/ (final.mdl, graph/), ali/, decode_*
<exp>/realign/                         stage 3 with --alignments dnn: aligner/ (first-pass DNN), ali/ (as gmm/ali)
<exp>/teachers/teacher<i>/             stage 4: the hybrid teacher DNNs
<exp>/soft_targets/<settings>/         stage 5: top-k soft targets, the folder named by their settings
<exp>/students/<hard|distilled>[_seed<k>]/ stage 6 (no suffix: the first seed)
<exp>/decode/                          stage 7: per-system decodes, table1.json
<exp>/three_percent/                   stage 8
<exp>/ctc/<units>/                     the CTC path (units/, teachers*/, soft_targets/, students/, graph/, decode/)
```
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from lhotse import CutSet, load_manifest_lazy

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TEST_PART, DEFAULT_TRAIN_PART
from asr_kd.data.features import CmvnStats, cmvn_path, cuts_path
from asr_kd.errors import ConfigError, DataError

# Custom fields that stages store on cuts: stage 3's senone alignment is asr_kd.config.SENONES_FIELD
# (there, so that the command-line modules read it without importing lhotse); the soft-target
# fields are asr_kd.data.stored_targets.SOFT_IDS, SOFT_PROBS, SOFT_TEMPERATURE and their kin.
GMM_SYSTEMS = ("mono", "tri")
# Stage 6's students: their names in the tables (and decode-part, deploy) -> their kinds (the
# folder students/<kind>, train-student --kind). "compressed" is a distilled student of a smaller
# network.
STUDENT_SYSTEMS = {"baseline": "hard", "distilled": "distilled", "compressed": "compressed"}
STUDENT_KINDS = tuple(STUDENT_SYSTEMS.values())
GMM_MODEL_NAME = "final.mdl"
PRIORS_FILE = "log_priors.txt"  # <ali>/: senone log priors, text (asr_kd.decode.priors.save_priors)
FEATURES_YAML = "features.yaml"  # <data>/features.yaml: the fbank features' config (stage 1)
ALIGNMENT_SOURCES = ("gmm", "dnn")


@dataclasses.dataclass(frozen=True)
class RecipeLayout:
    """Where every stage of the main recipe reads and writes."""

    data_dir: Path
    exp_dir: Path
    train_part: str = DEFAULT_TRAIN_PART
    dev_part: str = DEFAULT_DEV_PART
    test_part: str = DEFAULT_TEST_PART
    ctc_units: str = "phone"
    # An out-of-domain test part scored beside test_part in every table ("" = none): the synthetic
    # corpus's test-ood (a synthesiser family no training part uses), or e.g. test-other.
    ood_part: str = ""
    # Whose senone alignments (and priors) stages 4-10 train and score on: "gmm" (stage 3's
    # triphone GMM, <exp>/gmm/ali) or "dnn" (stage 3's first-pass DNN realignment, <exp>/realign/ali).
    alignments: str = "gmm"

    def __post_init__(self) -> None:
        # Absolute, so every path derived here names the same file from any working directory.
        object.__setattr__(self, "data_dir", Path(self.data_dir).absolute())
        object.__setattr__(self, "exp_dir", Path(self.exp_dir).absolute())
        if self.alignments not in ALIGNMENT_SOURCES:
            raise ConfigError(f"alignments must be one of {', '.join(ALIGNMENT_SOURCES)}, got {self.alignments!r}")

    @property
    def test_parts(self) -> list[str]:
        """The parts every table scores: the test part, then the out-of-domain one if any."""
        return [self.test_part, *([self.ood_part] if self.ood_part else [])]

    # ---- stages 0-2 ----------------------------------------------------------------------
    @property
    def manifests(self) -> Path:
        return self.data_dir / "manifests"

    @property
    def synthetic_corpus(self) -> Path:
        return self.data_dir / "corpus"

    def features(self, kind: str) -> Path:
        """Stage 1's folder of ``kind`` ("fbank" or "mfcc")."""
        return self.data_dir / kind

    @property
    def feature_config(self) -> Path:
        """Stage 1's FeatureConfig of the fbank features (what the networks' front end reads)."""
        return self.data_dir / FEATURES_YAML

    def fbank_cuts(self, part: str) -> Path:
        return cuts_path(self.features("fbank"), part)

    def cmvn(self, part: str) -> Path:
        """Stage 1's fbank CMVN statistics of ``part``."""
        return cmvn_path(self.features("fbank"), part)

    @property
    def lang(self) -> Path:
        return self.data_dir / "lang"

    # ---- stage 3 -------------------------------------------------------------------------
    @property
    def gmm(self) -> Path:
        return self.exp_dir / "gmm"

    def gmm_model(self, system: str) -> Path:
        return self.gmm / system / GMM_MODEL_NAME

    def gmm_graph(self, system: str) -> Path:
        return self.gmm / system / "graph"

    @property
    def mono_alignments(self) -> Path:
        """The monophone training alignments (what the triphone tree is built from)."""
        return self.gmm / "mono" / "ali_train.txt"

    @property
    def realign(self) -> Path:
        """Stage 3's DNN realignment (asr_kd/stages/s3_realign.py)."""
        return self.exp_dir / "realign"

    @property
    def ali(self) -> Path:
        """The senone alignments, priors and ``senones.json`` of :attr:`alignments`."""
        return self.realign / "ali" if self.alignments == "dnn" else self.gmm / "ali"

    @property
    def senones_json(self) -> Path:
        """Number of senones, model and graph (relative to the gmm folder), per-part counts."""
        return self.ali / "senones.json"

    @property
    def log_priors(self) -> Path:
        """The senone log priors of the training alignments, a text file (save_priors). Runs made
        before 2026-12-08 named it ``log_priors.npy`` though it was text; their file is still used."""
        path = self.ali / PRIORS_FILE
        old = self.ali / "log_priors.npy"
        return old if not path.exists() and old.is_file() else path

    def ali_cuts(self, part: str) -> Path:
        """Stage 3's fbank cuts of ``part`` with senone alignments (the GMM's or the realigned ones)."""
        return self.ali / f"cuts_{part}.jsonl.gz"

    def tids(self, part: str) -> Path:
        return self.ali / f"tids_{part}.txt"

    def gmm_decode(self, system: str, part: str) -> Path:
        return self.gmm / f"decode_{system}_{part}"

    @property
    def gmm_summary(self) -> Path:
        return self.gmm / "stage3.json"

    # ---- stages 4-8 (hybrid) --------------------------------------------------------------
    @property
    def teachers(self) -> Path:
        return self.exp_dir / "teachers"

    def teacher_dir(self, i: int) -> Path:
        return self.teachers / f"teacher{i}"

    @property
    def soft_root(self) -> Path:
        """Stage 5's folder of every set of stored soft targets (one folder per settings)."""
        return self.exp_dir / "soft_targets"

    def soft_dir(self, num_teachers: int, fusion: str, temperature: float, top_k: int, storage: str = "int32-fp16",
                 codebooks: int = 8, tail: str = "renormalise") -> Path:
        """Stage 5's folder of the soft targets made with these settings."""
        return self.soft_root / soft_targets_name(num_teachers, fusion, temperature, top_k, storage, codebooks, tail)

    def soft_cuts(self, soft_dir: Path) -> Path:
        """The training cuts carrying top-k soft targets in ``soft_dir``."""
        return soft_dir / f"cuts_{self.train_part}.jsonl.gz"

    def student_dir(self, kind: str, seed_index: int = 0, per_utterance_cmvn: bool = False) -> Path:
        """Stage 6's student ``kind`` (hard, distilled) of its first seed, or of seed ``seed_index``;
        with ``per_utterance_cmvn``, stage 9's deployable one trained on per-utterance normalised
        features (``<kind>_uttcmvn``)."""
        name = f"{kind}_uttcmvn" if per_utterance_cmvn else kind
        return self.exp_dir / "students" / (name if seed_index == 0 else f"{name}_seed{seed_index}")

    def sweep_student_dir(self, temperature: float, online: bool = False, seed_index: int = 0) -> Path:
        """Stage 10's distilled student at ``temperature`` (stored or online soft targets) of its
        first seed, or of seed ``seed_index``: beside stage 6's students, outside the sweep's scoring
        folder, so a rescoring keeps it."""
        name = f"sweep{'_online' if online else ''}_T{temperature:g}"
        return self.exp_dir / "students" / (name if seed_index == 0 else f"{name}_seed{seed_index}")

    @property
    def decode(self) -> Path:
        return self.exp_dir / "decode"

    @property
    def deploy(self) -> Path:
        """Stage 9's model directories, exports and cost table (:mod:`asr_kd.stages.s9_deploy`)."""
        return self.exp_dir / "deploy"

    @property
    def three_percent(self) -> Path:
        return self.exp_dir / "three_percent"

    # ---- the CTC path ----------------------------------------------------------------------
    @property
    def ctc_root(self) -> Path:
        return self.exp_dir / "ctc" / self.ctc_units

    @property
    def ctc_units_dir(self) -> Path:
        return self.ctc_root / "units"

    @property
    def ctc_phone_init(self) -> Path:
        """The phone CTC model every BPE model starts from (``ctc.phone_init_steps`` > 0)."""
        return self.ctc_root / "phone_init"

    def ctc_teacher_set(self, shared_init_steps: int, guide_weight: float = 0.0) -> Path:
        """The folder of the CTC teachers trained with ``shared_init_steps`` and ``guide_weight``."""
        return self.ctc_root / ctc_teacher_set_name(shared_init_steps, guide_weight)

    def ctc_soft_dir(self, set_name: str, fusion: str, num_teachers: int, temperature: float, top_k: int) -> Path:
        """The CTC soft targets of ``num_teachers`` teachers of ``set_name``, named by their settings
        (targets of 2 and of 4 teachers of one set must not share a folder)."""
        return self.ctc_root / "soft_targets" / f"{set_name}_{fusion}_n{num_teachers}_T{temperature:g}_k{top_k}"

    def ctc_pseudo_dir(self, set_name: str, fusion: str, num_teachers: int, mode: str, nbest: int, beam_size: int) -> Path:
        how = mode if mode == "greedy" else f"{mode}{nbest}_beam{beam_size}"
        return self.ctc_root / "pseudo_labels" / f"{set_name}_{fusion}_n{num_teachers}_{how}"

    def ctc_student_dir(self, name: str) -> Path:
        return self.ctc_root / "students" / name

    @property
    def ctc_graph(self) -> Path:
        return self.ctc_root / "graph"

    @property
    def ctc_decode(self) -> Path:
        return self.ctc_root / "decode"

    # ---- readers with one-line errors --------------------------------------------------------
    def open_cuts(self, path: Path) -> CutSet:
        """Return the lazily opened cut manifest ``path``; DataError naming the stage to run."""
        if not Path(path).is_file():
            raise DataError(f"cut manifest {path} does not exist; run the stage that writes it first "
                            "(stage 1 features, stage 3 alignments, stage 5 soft targets)")
        return load_manifest_lazy(path)

    def open_cmvn(self, part: str) -> CmvnStats:
        """Return the fbank CMVN statistics of ``part``; DataError if stage 1 did not write them."""
        path = self.cmvn(part)
        if not path.is_file():
            raise DataError(f"CMVN statistics {path} do not exist; run stage 1 (features) for {part}")
        return CmvnStats.load(path)


def soft_targets_name(num_teachers: int, fusion: str, temperature: float, top_k: int, storage: str = "int32-fp16",
                      codebooks: int = 8, tail: str = "renormalise") -> str:
    """Return the folder name of hybrid soft targets: ``teachers<N>_<fusion>_T<T>_k<k>``, then
    ``_u16u8`` or ``_rvq<n>`` for the compact storage formats (kd.storage) and ``_bucket`` where
    the mass outside the top k is kept (kd.tail)."""
    suffix = {"int32-fp16": "", "uint16-uint8": "_u16u8", "rvq": f"_rvq{codebooks}"}[storage]
    return f"teachers{num_teachers}_{fusion}_T{temperature:g}_k{top_k}{suffix}{'_bucket' if tail == 'bucket' else ''}"


_SET_NAME = re.compile(r"teachers(?:_shared(\d+))?(?:_guided([0-9.e+-]+))?")


def ctc_teacher_set_name(shared_init_steps: int, guide_weight: float = 0.0) -> str:
    """Return the folder name of a CTC teacher set: ``teachers[_shared<N>][_guided<w>]``."""
    return ("teachers" + (f"_shared{shared_init_steps}" if shared_init_steps > 0 else "")
            + (f"_guided{guide_weight:g}" if guide_weight > 0 else ""))


def parse_ctc_teacher_set_name(name: str) -> tuple[int, float] | None:
    """Return ``(shared_init_steps, guide_weight)`` of a CTC teacher-set folder name, or None."""
    m = _SET_NAME.fullmatch(name)
    return None if m is None else (int(m.group(1) or 0), float(m.group(2) or 0.0))
