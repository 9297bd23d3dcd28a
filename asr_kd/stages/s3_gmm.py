"""Recipe stage 3: GMM-HMM training, senone alignments of every cut, HCLG, GMM decoding, WER.

:func:`run_gmm_stage` chains the building blocks of :mod:`asr_kd.gmm` and :mod:`asr_kd.decode`
and writes the stage-3 output contract under ``<exp>/gmm`` (see :data:`OUTPUT_LAYOUT`), which
the teacher, soft-target and student stages read. The stage is skipped when its provenance record
(:class:`~asr_kd.stages.provenance.StageGuard`) matches the settings and stages 1-2; otherwise the
guard empties ``<exp>/gmm`` when those changed, and inside the guarded run a sub-step is skipped
when its outputs exist (their times are never compared), so an interrupted stage resumes after its
last finished sub-step.

Features: 13-dim MFCC of stage 1, per-speaker cepstral *mean* normalisation from stage 1's
statistics, then deltas and delta-deltas (39 dims). Mean only, as Kaldi's GMM recipes do
(``apply-cmvn --norm-vars=false``): the diagonal Gaussians model each dimension's variance
themselves, and a per-speaker variance estimated from a few minutes of speech is noisy, which
the mean is much less.

Memory: the monophone and the triphones train on subsets of the training part when
``gmm.mono_subset`` / ``gmm.tri_subset`` are set (Kaldi's LibriSpeech recipe), and only the
features of the subset being trained are in memory; every part is then aligned and decoded
``align_chunk`` cuts at a time, each chunk's alignments written before the next chunk is loaded.
Of a part's manifests, only ids, transcripts, frame counts and speakers stay in memory (the
cuts are read lazily, a chunk at a time), and alignments are int32 arrays, never lists.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Collection, Iterator, Mapping, Sequence

import numpy as np
from lhotse import CutSet, load_manifest_lazy
from lhotse.cut import Cut
from tqdm import tqdm

from asr_kd.config import DEFAULT_TEST_PART, GMM_ALIGN_CHUNK, SENONES_FIELD, DecodeConfig, GmmConfig, save_config
from asr_kd.data.alignments import write_alignment_chunks
from asr_kd.data.features import CmvnStats, cmvn_key, cmvn_path, cuts_path
from asr_kd.errors import ConfigError, DataError
from asr_kd.gmm.features import gmm_features
from asr_kd.gmm.subsets import shortest_utterances, spread_over_speakers
from asr_kd.gmm.train import GmmSystem, GraphInputs, TrainingResult, Utterance, align_utterances, train_monophone, train_triphone
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.wer import WerResult, compute_wer, write_transcripts, write_wer_report
from asr_kd.report.tables import ood_relative_head, relative_change
from asr_kd.stages.layout import GMM_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

RESULTS_HEADING = "## GMM-HMM (stage 3)"
OUTPUT_LAYOUT = """\
<exp>/gmm/
  mono/final.mdl, tri/final.mdl        GMM systems, arrays + JSON in an .npz (monophone; tied triphones on our tree)
  mono/ali_train.txt                   monophone alignments of the triphones' training utterances (for the tree)
  <mono|tri>/graph/HCLG.fst            decoding graphs (+ words.txt, hclg.json)
  ali/cuts_<part>.jsonl.gz             fbank cuts with custom field "senones" (tri alignment)
  ali/storage_<part>/                  the senone arrays (store_alignments)
  ali/tids_<part>.txt                  transition-id alignments, "utt tid tid ..."
  ali/log_priors.txt                   log senone priors of the training alignments (save_priors)
  ali/senones.json                     senone count, model, graph, per-part cuts/frames/skipped
  decode_<mono|tri>_<part>/            hyp.txt, wer_details, wer_details.json
  stage3.json                          timings, WERs, senone counts, log-likelihood histories
  provenance.json                      config, input fingerprints, output hashes (written last)
"""


# --------------------------------------------------------------------------------------------
# Inputs: cuts, features, transcripts
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PartData:
    """One part's GMM inputs: utterances (features, word ids), reference texts and fbank cuts."""

    name: str
    utterances: list[Utterance]
    refs: dict[str, str]
    fbank_cuts: CutSet
    skipped: int  # cuts without usable MFCC features or with an fbank/MFCC frame mismatch

    @property
    def num_frames(self) -> int:
        """Return the total number of feature frames."""
        return sum(u.feats.shape[0] for u in self.utterances)


def _check_cuts(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; run stage 1 (features) for this part first")
    return path


def _lazy_cuts(path: Path) -> Iterator[Cut]:
    """Yield the cuts of a manifest one at a time, read from the file as they are asked for."""
    return iter(load_manifest_lazy(path))


def _cut_text(cut: Cut) -> str:
    return " ".join(s.text.strip() for s in cut.supervisions if s.text).strip()


def _cmvn_key(cut: Cut, stats: CmvnStats) -> str:
    """Return the statistics key of ``cut``: its speaker, or ``"global"`` when stage 1 kept
    only global statistics."""
    key = cmvn_key(cut, "speaker")
    if key in stats.keys or "global" not in stats.keys:
        return key
    return "global"


class _CutFinder:
    """Finds cuts by id in a manifest read once, lazily, from start to end: cuts read past on the
    way to a wanted one are kept (only those of ``wanted_ids``) until they are asked for. When the
    manifest's order is the order they are asked for in (stage 1 writes the MFCC and fbank
    manifests in one order), almost nothing is kept."""

    def __init__(self, path: Path, wanted_ids: Collection[str]) -> None:
        self.path = path
        self._cuts = _lazy_cuts(path)
        self._wanted = wanted_ids
        self._kept: dict[str, Cut] = {}

    def take(self, ids: Sequence[str]) -> list[Cut]:
        """Return the cuts ``ids``, in that order (each id once per finder); DataError if the
        manifest does not hold one of them."""
        for cut_id in ids:
            while cut_id not in self._kept:
                cut = next(self._cuts, None)
                if cut is None:
                    raise DataError(f"{self.path} has no cut {cut_id} (or it was asked for twice); "
                                    "the manifest changed while stage 3 ran: rerun stage 3")
                if cut.id in self._wanted:
                    self._kept[cut.id] = cut
        return [self._kept.pop(cut_id) for cut_id in ids]


class PartSource:
    """Where one part's GMM inputs come from (stage 1's MFCC and fbank cuts, CMVN statistics),
    with features loaded only when asked: all of them (:meth:`load`), some (``cut_ids``), or a
    chunk of cuts at a time (:meth:`chunks`), so that stage 3 need not hold a whole part.

    The cut manifests are read lazily (``lhotse.load_manifest_lazy``) every time cuts are needed:
    held in memory are the usable cuts' ids, transcripts (``refs``), frame counts and speakers
    (201 bytes a cut on tiny's cuts against the Cut objects' 4,826: bench/gmm_memory.py), never
    the Cuts of a part.

    A cut whose MFCC frame count differs from its fbank cut's, or without a transcript, is
    skipped (counted and logged when the source is opened): its alignment could not be attached
    to the fbank cut. ``refs`` holds the transcripts of the other (usable) cuts.
    """

    def __init__(self, data_dir: Path | str, part: str) -> None:
        data_dir = Path(data_dir)
        self.name = part
        self.mfcc_path = _check_cuts(cuts_path(data_dir / "mfcc", part), "MFCC cuts")
        self.fbank_path = _check_cuts(cuts_path(data_dir / "fbank", part), "fbank cuts")
        self.stats = CmvnStats.load(cmvn_path(data_dir / "mfcc", part))
        fbank_frames = {c.id: c.num_frames for c in _lazy_cuts(self.fbank_path)}  # let go once the MFCC cuts are read
        self.num_cuts = len(fbank_frames)  # fbank cuts: what the part's alignments are attached to
        self.refs: dict[str, str] = {}  # usable cuts, in the MFCC cuts' order
        frames: list[int] = []
        speakers: list[str] = []
        self.skipped: list[str] = []
        num_mfcc = 0
        for cut in _lazy_cuts(self.mfcc_path):
            num_mfcc += 1
            text = _cut_text(cut)
            if cut.id not in fbank_frames or fbank_frames[cut.id] != cut.num_frames or not text:
                logger.warning("%s: cut %s skipped (%s)", part, cut.id, "no transcript" if not text else "no fbank cut with the same frame count")
                self.skipped.append(cut.id)
                continue
            self.refs[cut.id] = text
            frames.append(cut.num_frames)
            speakers.append(cut.supervisions[0].speaker or "")
        del fbank_frames
        if self.skipped:
            logger.warning("%s: %d of %d cuts skipped before alignment (first: %s)", part, len(self.skipped), num_mfcc, self.skipped[0])
        if not self.refs:
            raise DataError(f"part {part}: no cut has MFCC features, a transcript and a matching fbank cut; rerun stage 1 for it")
        self.num_frames = np.asarray(frames, dtype=np.int32)  # per usable cut, in refs' order
        # Speakers as indices into one list: a part has thousands of cuts per speaker name.
        names, index = np.unique(np.asarray(speakers, dtype=object), return_inverse=True)
        self._speaker_names, self._speaker_index = [str(n) for n in names], index.astype(np.int32)

    @property
    def speakers(self) -> list[str]:
        """The speaker of every usable cut, in ``refs``' order ("" where the cut names none)."""
        return [self._speaker_names[i] for i in self._speaker_index]

    def _features(self, cuts: Sequence[Cut], lang: Lang, config: GmmConfig) -> list[Utterance]:
        """Return the GMM utterances of MFCC ``cuts``: MFCC + per-speaker CMN + deltas, word ids
        (OOV words map to the lang's OOV word)."""
        out: list[Utterance] = []
        for cut in tqdm(cuts, desc=f"GMM features {self.name}", leave=False, disable=None):
            x = self.stats.normalize(cut.load_features(), _cmvn_key(cut, self.stats), variance=False)
            feats = gmm_features(x, config.delta_order, config.delta_window, config.utterance_cmvn)
            out.append(Utterance(cut.id, feats, tuple(lang.word_ids(self.refs[cut.id].split()))))
        return out

    def utterances(self, cut_ids: Sequence[str], lang: Lang, config: GmmConfig) -> list[Utterance]:
        """Return the GMM utterances of the usable ``cut_ids``, in that order (the MFCC manifest
        read once)."""
        ids = [c for c in cut_ids if c in self.refs]
        wanted = set(ids)
        cuts = {c.id: c for c in _lazy_cuts(self.mfcc_path) if c.id in wanted}
        return self._features([cuts[c] for c in ids], lang, config)

    def load(self, lang: Lang, config: GmmConfig, cut_ids: Collection[str] | None = None, with_fbank: bool = True) -> PartData:
        """Return the part's inputs with the features of every usable cut (of ``cut_ids`` only,
        when given), in the MFCC cuts' order, and the fbank cuts (those of ``cut_ids`` when given;
        none with ``with_fbank=False``: GMM training never reads them, and the fbank manifest
        is not read)."""
        ids = [c for c in self.refs if cut_ids is None or c in cut_ids]
        fbank = CutSet.from_cuts([c for c in _lazy_cuts(self.fbank_path) if cut_ids is None or c.id in cut_ids] if with_fbank else [])
        return PartData(self.name, self.utterances(ids, lang, config), {c: self.refs[c] for c in ids}, fbank, len(self.skipped))

    def num_chunks(self, chunk_size: int) -> int:
        """Return how many chunks :meth:`chunks` yields for ``chunk_size``."""
        return -(-self.num_cuts // chunk_size)

    def chunks(self, lang: Lang, config: GmmConfig, chunk_size: int) -> Iterator[PartData]:
        """Yield the part in chunks of ``chunk_size`` fbank cuts (in their order), each with the
        features of its usable cuts only, loaded when the chunk is asked for. Both manifests are
        read once, lazily, alongside the chunks: only one chunk's Cuts are in memory."""
        fbank = _lazy_cuts(self.fbank_path)
        mfcc = _CutFinder(self.mfcc_path, self.refs)
        while cuts := list(itertools.islice(fbank, chunk_size)):
            ids = [c.id for c in cuts if c.id in self.refs]
            yield PartData(self.name, self._features(mfcc.take(ids), lang, config), {c: self.refs[c] for c in ids}, CutSet.from_cuts(cuts), 0)


def load_part(data_dir: Path | str, part: str, lang: Lang, config: GmmConfig, cut_ids: Collection[str] | None = None) -> PartData:
    """Return the GMM inputs of ``part`` (of its cuts ``cut_ids`` only, when given): MFCC +
    per-speaker CMN + deltas, word ids (OOV words map to the lang's OOV word), and the fbank cuts
    of stage 1. Cuts that cannot be aligned are skipped (see :class:`PartSource`)."""
    return PartSource(data_dir, part).load(lang, config, cut_ids)


# --------------------------------------------------------------------------------------------
# Alignment files and parallel alignment
# --------------------------------------------------------------------------------------------


def _ints(tids: Sequence[int] | np.ndarray) -> Sequence[int]:
    return tids.tolist() if isinstance(tids, np.ndarray) else tids


def write_tids(path: Path | str, alignments: Mapping[str, Sequence[int] | np.ndarray]) -> None:
    """Write transition-id alignments (integer arrays or lists) in Kaldi's text format
    (``utt tid tid ...``), sorted."""
    write_text_atomic(path, "".join(f"{u} {' '.join(map(str, _ints(alignments[u])))}\n" for u in sorted(alignments)))


def read_tids(path: Path | str) -> dict[str, np.ndarray]:
    """Read alignments written by :func:`write_tids` (int32 transition-ids per utterance id);
    DataError naming the file if it is bad."""
    return dict(iter_tids(path))


def iter_tids(path: Path | str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(utterance id, int32 transition-ids)`` from a file written by :func:`write_tids`, a
    line at a time (a part's alignments need not fit in memory); DataError naming the file and
    line if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"alignment file {path} does not exist; rerun stage 3 (delete its model to retrain)")
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                yield fields[0], np.array([int(t) for t in fields[1:]], dtype=np.int32)
            except ValueError:
                raise DataError(f"{path}:{lineno}: transition-ids must be integers; delete the file to realign") from None


def merge_tids(path: Path | str, pieces: Sequence[Path]) -> None:
    """Write to ``path`` (atomically) the lines of the :func:`write_tids` files ``pieces``, merged
    in utterance-id order: the file :func:`write_tids` writes for all their alignments together,
    without holding them in memory."""
    files = [p.open() for p in pieces]
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as out:
            out.writelines(heapq.merge(*files, key=lambda line: line.split(" ", 1)[0]))
    finally:
        for f in files:
            f.close()


def align_parallel(system: GmmSystem, inputs: GraphInputs, utterances: Sequence[Utterance], config: GmmConfig, num_jobs: int, desc: str = "align") -> dict[str, np.ndarray]:
    """Return the Viterbi alignments (int32 transition-ids) of ``utterances`` with the final model,
    computed in ``num_jobs`` forked processes; utterances that fail are absent (logged)."""
    alignments, _ = align_utterances(system, inputs, utterances, config, num_jobs, desc)
    return alignments


# --------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage3Summary:
    """What stage 3 produced: sizes, per-part alignment counts, WERs and timings (seconds).

    ``wers[system][part]`` holds ``{"wer", "substitutions", "deletions", "insertions",
    "ref_words", "failed"}``; ``parts[part]`` holds ``{"cuts", "frames", "skipped"}``.
    """

    exp_dir: str
    num_senones: int
    systems: dict[str, dict[str, int]]  # system -> {"pdfs", "gaussians"}
    parts: dict[str, dict[str, int]]
    wers: dict[str, dict[str, dict[str, float]]]
    timings: dict[str, float]
    log_likelihood_history: dict[str, list[float]]
    train_part: str = ""
    corpus: str = ""
    decode: dict = dataclasses.field(default_factory=dict)  # the DecodeConfig of the decodes
    dev_part: str = ""  # where each system's acoustic scale was tuned ("" without tuning)
    # With gmm.mono_subset or gmm.tri_subset set: what each system trained on, {system:
    # {"utterances", "frames", "em_frames": frames counted by each EM iteration}}; absent otherwise.
    training_subsets: dict[str, dict] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """Return the summary as indented JSON (without ``training_subsets`` when there are none,
        so that a run without subsets writes what it wrote before they existed)."""
        data = dataclasses.asdict(self)
        if not self.training_subsets:
            del data["training_subsets"]
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, path: Path | str) -> "Stage3Summary":
        """Read a summary written by :meth:`to_json`."""
        return cls(**json.loads(Path(path).read_text()))

    def format(self) -> str:
        """Return a short human-readable summary (for the CLI)."""
        lines = [f"stage 3 (GMM-HMM) in {self.exp_dir}: {self.num_senones} senones"]
        for name, info in self.systems.items():
            wer = ", ".join(f"{p} {_fmt_wer(w)}" for p, w in self.wers.get(name, {}).items())
            lines.append(f"  {name}: {info['pdfs']} pdfs, {info['gaussians']} Gaussians; WER {wer or '-'}")
        for part, info in self.parts.items():
            lines.append(f"  ali {part}: {info['cuts']} cuts, {info['frames']} frames, {info['skipped']} skipped")
        lines.append("  times: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def _fmt_wer(w: Mapping[str, float]) -> str:
    return f"{100 * w['wer']:.2f}% (S {int(w['substitutions'])}, D {int(w['deletions'])}, I {int(w['insertions'])})"


def _wer_entry(result: WerResult, failed: int) -> dict[str, float]:
    return {
        "wer": float(result.wer),
        "substitutions": result.substitutions,
        "deletions": result.deletions,
        "insertions": result.insertions,
        "ref_words": result.ref_words,
        "failed": failed,
    }


def results_section(summary: Stage3Summary, command: str, test_part: str = DEFAULT_TEST_PART, ood_part: str = "") -> str:
    """Return the RESULTS.md section of stage 3 (starting with :data:`RESULTS_HEADING`). With an
    ``ood_part`` decoded beside ``test_part``, the table has a column of each system's relative WER
    increase from the test part to the out-of-domain one."""
    eval_parts = [p for p in summary.parts if p != summary.train_part]
    relative = bool(ood_part) and ood_part in eval_parts and test_part in eval_parts
    # No wall-clock times here (they are in stage3.json): the same command on the same machine must
    # give the same RESULTS.md.
    head = (["system", "senones", "Gaussians"] + [f"WER {p}" for p in eval_parts]
            + ([ood_relative_head("WER increase", ood_part)] if relative else []) + ["acoustic scale"])
    rows = []
    for name in GMM_SYSTEMS:
        info = summary.systems.get(name)
        if info is None:
            continue
        wers = [_fmt_wer(summary.wers[name][p]) if p in summary.wers.get(name, {}) else "-" for p in eval_parts]
        scale = next((f"{w['acoustic_scale']:g}" + (f", word insertion penalty {w['insertion_penalty']:g}" if w.get("insertion_penalty") else "")
                      + (" (tuned on " + w["sweep"]["part"] + ")" if w.get("sweep") else "")
                      for w in sorted(summary.wers.get(name, {}).values(), key=lambda w: not w.get("sweep"))
                      if w.get("acoustic_scale") is not None), "-")
        by_part = summary.wers.get(name, {})
        change = [relative_change(by_part.get(ood_part, {}).get("wer"), by_part.get(test_part, {}).get("wer"))] if relative else []
        rows.append([name, str(info["pdfs"]), str(info["gaussians"]), *wers, *change, scale])
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    frames = ", ".join(f"{p} {v['cuts']} cuts / {v['frames']} frames ({v['skipped']} not aligned)" for p, v in summary.parts.items())
    trained_on = ", ".join(f"{name} on {info['utterances']} utterances ({info['frames']} frames)" for name, info in summary.training_subsets.items())
    subsets = [f"Training subsets (gmm.mono_subset: the shortest utterances; gmm.tri_subset: spread over speakers): {trained_on}."] if trained_on else []
    decoding: list[str] = []
    if summary.decode:
        from asr_kd.config import config_from_dict
        from asr_kd.decode.tuning import ScaleSweep, describe_decoding

        decode_config = config_from_dict(DecodeConfig, summary.decode)
        decoding = ["", describe_decoding(decode_config, summary.dev_part or "dev", networks=False)]
        decoding += [f"- {name}: {ScaleSweep.from_dict(w['sweep']).describe()}" for name in GMM_SYSTEMS
                     for w in summary.wers.get(name, {}).values() if w.get("sweep")]
    return "\n".join(
        [
            RESULTS_HEADING,
            "",
            f"Produced by `{command}` on {summary.corpus or 'the corpus in ' + summary.exp_dir}.",
            "Monophone flat start, then tied triphones on our own decision tree; features MFCC + per-speaker",
            "CMN + deltas; HCLG with the stage-2 n-gram LM; WER with (S)ubstitutions, (D)eletions, (I)nsertions.",
            "",
            *table,
            "",
            f"Senone alignments: {frames}.",
            *subsets,
            *decoding,
        ]
    )


def _corpus_name(data_dir: Path) -> str:
    """Return a description of the corpus: the synthetic preset, or the data directory."""
    info = data_dir / "corpus" / "SYNTHETIC.json"
    try:
        cfg = json.loads(info.read_text())["config"]
        return f"the synthetic '{cfg['preset']}' corpus (seed {cfg['seed']}, difficulty {cfg['difficulty']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"the corpus in {data_dir}"


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _timed(timings: dict[str, float], key: str, start: float) -> None:
    timings[key] = round(time.perf_counter() - start, 2)


def _done(*outputs: Path) -> bool:
    """Return whether every output of a sub-step exists. Only called inside a stage run guarded by
    :class:`StageGuard`, which empties the folder whenever the settings or inputs change: files
    present then were written (atomically) by a run of the same settings, so an interrupted stage
    resumes after its last finished sub-step."""
    return all(p.exists() for p in outputs)


def training_subsets(source: PartSource, config: GmmConfig) -> tuple[set[str] | None, set[str] | None]:
    """Return the ids of the usable training cuts that the monophone and the triphones train on
    (``gmm.mono_subset``: the shortest; ``gmm.tri_subset``: spread over speakers), None for all."""
    ids = list(source.refs)
    # A subset as large as the part is the whole part: trained exactly as with 0.
    mono = shortest_utterances(ids, source.num_frames.tolist(), config.mono_subset) if 0 < config.mono_subset < len(ids) else None
    tri = spread_over_speakers(ids, source.speakers, config.tri_subset, config.seed) if 0 < config.tri_subset < len(ids) else None
    return mono, tri


def _subset_record(data: PartData, result: TrainingResult) -> dict:
    return {"utterances": len(data.utterances), "frames": data.num_frames, "em_frames": result.frames_history}


def _train_systems(layout: RecipeLayout, inputs: GraphInputs, lang: Lang, train: PartSource, config: GmmConfig, timings: dict[str, float],
                   history: dict[str, list[float]], subsets: dict[str, dict], num_jobs: int) -> GmmSystem:
    """Train (or load, when an interrupted run finished them) the monophone and triphone systems in
    ``num_jobs`` processes (training graphs in a temporary folder under ``<exp>/gmm``) on their
    training subsets, holding only those subsets' features; return the triphone system. With
    subsets, ``subsets`` receives what each system trained on (:class:`Stage3Summary`)."""
    mono_ids, tri_ids = training_subsets(train, config)
    with_subsets = mono_ids is not None or tri_ids is not None
    loaded: dict[str, PartData] = {}

    def training_data(ids: set[str] | None) -> PartData:
        # Loaded when first needed, once: the monophone's subset is let go before the
        # triphones' is loaded, so only one subset's features are in memory at a time.
        key = "all" if ids is None else ("mono" if ids is mono_ids else "tri")
        if key not in loaded:
            start = time.perf_counter()
            loaded.clear()
            loaded[key] = train.load(lang, config, ids, with_fbank=False)
            timings["load_features"] = round(timings.get("load_features", 0.0) + time.perf_counter() - start, 2)
            if ids is not None:
                logger.info("%s training subset: %d utterances, %d frames", key, len(loaded[key].utterances), loaded[key].num_frames)
        return loaded[key]

    timings.pop("load_features", None)
    if _done(layout.gmm_model("mono"), layout.mono_alignments):
        logger.info("monophone system of this run exists (%s), skipping its training", layout.gmm_model("mono"))
        mono = GmmSystem.load(layout.gmm_model("mono"))
        mono_ali = read_tids(layout.mono_alignments)
    else:
        start = time.perf_counter()
        mono_data = training_data(mono_ids)
        result = train_monophone(inputs, mono_data.utterances, config, num_jobs, layout.gmm)
        mono, mono_ali = result.system, result.alignments
        if with_subsets:
            subsets["mono"] = _subset_record(mono_data, result)
        del mono_data
        _timed(timings, "train_mono", start)
        history["mono"] = [float(x) for x in result.log_likelihood_history]
        if mono_ids is not None:
            # The triphones' utterances were not all in the monophone's training: align them with
            # the final monophone system first (Kaldi's align_si.sh between subsets).
            start = time.perf_counter()
            tri_utterances = training_data(tri_ids).utterances
            mono_ali = align_parallel(mono, inputs, tri_utterances, config, num_jobs, desc="align the triphone subset with mono")
            _timed(timings, "align_tri_subset", start)
        elif tri_ids is not None:
            mono_ali = {u: mono_ali[u] for u in sorted(tri_ids) if u in mono_ali}
        write_tids(layout.mono_alignments, mono_ali)
        mono.save(layout.gmm_model("mono"))  # last: its presence means the step finished
    if _done(layout.gmm_model("tri")):
        logger.info("triphone system of this run exists (%s), skipping its training", layout.gmm_model("tri"))
        return GmmSystem.load(layout.gmm_model("tri"))
    tri_data = training_data(tri_ids)
    start = time.perf_counter()
    result = train_triphone(inputs, tri_data.utterances, mono, mono_ali, config, num_jobs=num_jobs, tmp_dir=layout.gmm)
    if with_subsets:
        subsets["tri"] = _subset_record(tri_data, result)
    result.system.save(layout.gmm_model("tri"))
    _timed(timings, "train_tri", start)
    history["tri"] = [float(x) for x in result.log_likelihood_history]
    return result.system


def _align_part(layout: RecipeLayout, system: GmmSystem, inputs: GraphInputs, lang: Lang, source: PartSource, config: GmmConfig,
                num_jobs: int, align_chunk: int, counts: np.ndarray | None = None) -> dict[str, int]:
    """Align one part, ``align_chunk`` cuts at a time, writing each chunk's alignments before the
    next chunk's features are loaded (or read the alignments this run already wrote); write tids,
    storage and cuts. Adds each senone's frames to ``counts`` when given. Returns the part's
    ``{"cuts", "frames", "skipped"}``."""
    name = source.name
    totals = {"cuts": 0, "frames": 0}
    tid_to_pdf = np.asarray(system.tm.transition_id_to_pdf_array(), dtype=np.int32)  # senone_alignment's table, made once

    def count(senones: Mapping[str, np.ndarray]) -> None:
        for ali in senones.values():
            totals["cuts"] += 1
            totals["frames"] += len(ali)
            if counts is not None:
                np.add(counts, np.bincount(ali, minlength=len(counts)), out=counts)

    if _done(layout.ali_cuts(name), layout.tids(name)):
        logger.info("alignments of %s exist (%s), skipping", name, layout.ali_cuts(name))
        for utt, tids in iter_tids(layout.tids(name)):
            count({utt: tid_to_pdf[tids]})
    else:
        layout.ali.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".tids_{name}.", dir=layout.ali) as tmp:
            pieces: list[Path] = []

            def aligned_chunks() -> Iterator[tuple[CutSet, dict[str, np.ndarray]]]:
                for k, chunk in enumerate(source.chunks(lang, config, align_chunk)):
                    desc = f"align {name}" + (f" ({k + 1}/{source.num_chunks(align_chunk)})" if k or align_chunk < source.num_cuts else "")
                    tids = align_parallel(system, inputs, chunk.utterances, config, num_jobs, desc) if chunk.utterances else {}
                    pieces.append(Path(tmp) / f"tids.{k}.txt")
                    write_tids(pieces[-1], tids)
                    senones = {utt: tid_to_pdf[ali] for utt, ali in tids.items()}
                    count(senones)
                    yield chunk.fbank_cuts, senones

            # The cuts go to their manifest as they are stored: never a part's Cuts in memory.
            write_alignment_chunks(aligned_chunks(), layout.ali / f"storage_{name}", layout.ali_cuts(name), name=SENONES_FIELD)
            if not totals["cuts"]:
                layout.ali_cuts(name).unlink()
                raise DataError(f"part {name}: no utterance could be aligned with {layout.gmm_model('tri')}; check its transcripts or raise gmm.retry_beam")
            merge_tids(layout.tids(name), pieces)  # last: with the cuts, marks the part aligned
    info = {**totals, "skipped": source.num_cuts - totals["cuts"]}
    logger.info("%s: %d cuts aligned (%d frames), %d skipped", name, info["cuts"], info["frames"], info["skipped"])
    return info


def _decode_part(layout: RecipeLayout, system_name: str, lang: Lang, source: PartSource, config: GmmConfig, decode_config: DecodeConfig,
                 scales: Sequence[float], align_chunk: int, penalties: Sequence[float] = (0.0,)) -> tuple[dict, bool]:
    """Decode one part with one GMM system at the one acoustic scale of ``scales``, or at each of
    several keeping the best (a sweep on dev), or read the scoring this run already wrote; return
    its WER entry (with ``acoustic_scale``, for a sweep ``sweep``, and ``insertion_penalty`` when one
    was used: one of ``penalties``, searched with the scales when several) and whether it was decoded
    now (False: read back). A part of more than ``align_chunk`` cuts is decoded a chunk at a time
    (its features loaded again for each scale of a sweep)."""
    # Why a multi-chunk sweep reloads features rather than decoding every scale on each chunk: the
    # search is adaptive (which scales it decodes depends on the part's totals at the scales before),
    # so decoding all of them per chunk would decode scales it never needs; and loading costs little
    # next to decoding (timed once on the tests' tiny run: 0.02 CPU s to load dev-clean's features
    # against 0.08 to decode them with tiny's toy graph, about 4 us a frame to load; mini's graph
    # decodes at RTF 0.03, about 300 us a frame: bench/RESULTS.md, gmm_speed). LibriSpeech's
    # dev-clean (2,703 cuts) is one chunk at the default 5,000 anyway: its features load once.
    from asr_kd.decode.gmm_decode import decode_gmm_batch
    from asr_kd.decode.hclg import load_hclg
    from asr_kd.decode.penalty import PenalisedGraphs
    from asr_kd.decode.tuning import tune_decoding

    out_dir = layout.gmm_decode(system_name, source.name)
    scoring = out_dir / "scoring.json"
    if _done(scoring, out_dir / "hyp.txt"):
        logger.info("decoding %s with %s exists (%s), skipping", source.name, system_name, out_dir)
        return json.loads(scoring.read_text()), False
    system = GmmSystem.load(layout.gmm_model(system_name))
    graphs = PenalisedGraphs(load_hclg(layout.gmm_graph(system_name)), lang.words.ids())
    one_chunk = list(source.chunks(lang, config, align_chunk)) if source.num_chunks(align_chunk) == 1 else None
    decoded: dict[tuple[float, float], tuple[dict[str, str], int]] = {}

    def decode_at(scale: float, penalty: float) -> WerResult:
        hyps: dict[str, str] = {}
        failed = 0
        for chunk in one_chunk or source.chunks(lang, config, align_chunk):
            feats = {u.id: u.feats for u in chunk.utterances}
            batch = decode_gmm_batch(graphs.at(penalty), system.am, system.tm, feats, dataclasses.replace(decode_config, acoustic_scale=scale))
            hyps.update(batch.texts(lang.words))
            failed += len(batch.failed)
        decoded[scale, penalty] = (hyps, failed)
        return compute_wer(source.refs, hyps)

    sweep, scale, penalty, results = tune_decoding(source.name, scales, penalties, decode_at, decode_config.acoustic_scale)
    result = results[scale, penalty]
    hyps, failed = decoded[scale, penalty]
    entry = {**_wer_entry(result, failed), "acoustic_scale": scale, "sweep": sweep.to_dict() if sweep else None}
    if penalty:
        entry["insertion_penalty"] = penalty
    write_transcripts(out_dir / "ref.txt", source.refs)
    write_wer_report(result, out_dir / "wer_details")
    write_text_atomic(scoring, json.dumps(entry, indent=1) + "\n")
    write_transcripts(out_dir / "hyp.txt", hyps)  # last: with scoring.json, marks the decode done
    logger.info("%s %s: %s at acoustic scale %g%s", system_name, source.name, result.summary(), scale,
                f", word insertion penalty {penalty:g}" if penalty else "")
    return entry, True


def run_gmm_stage(
    data_dir: Path | str,
    lang_dir: Path | str,
    exp_dir: Path | str,
    config: GmmConfig,
    train_part: str,
    parts: Sequence[str],
    num_jobs: int = 2,
    results_md: Path | str | None = None,
    decode_config: DecodeConfig | None = None,
    command: str = "asr-kd train-gmm",
    dev_part: str | None = None,
    align_chunk: int = GMM_ALIGN_CHUNK,
    test_part: str = DEFAULT_TEST_PART,
    ood_part: str = "",
) -> Stage3Summary:
    """Run stage 3 and return its :class:`Stage3Summary` (also written to ``stage3.json``).

    Trains monophone then triphone GMM-HMMs on ``train_part``, aligns every part of ``parts``
    (the training part is added if missing) with the triphone system and attaches the senone
    alignments to stage 1's fbank cuts, counts the senone priors on the training alignments,
    builds HCLG for both systems, decodes every other part with both and scores the WER (with
    ``decode_config.acoustic_scales``: each system's scale tuned on ``dev_part``, default the
    first part after the training part, and the other parts decoded with it). The systems train
    on ``gmm.mono_subset`` / ``gmm.tri_subset`` of the training part when set; parts are aligned
    and decoded ``align_chunk`` cuts at a time (the results do not depend on it). With
    ``results_md``, writes the stage's section of that RESULTS.md (``command`` is quoted there;
    ``test_part`` and ``ood_part``, which only that section uses, give its column of the relative
    WER increase from the test part to the out-of-domain one).
    The stage is skipped when ``<exp>/gmm/provenance.json`` matches its settings and the records
    of stages 1 and 2; otherwise redone (see :mod:`asr_kd.stages.provenance`).
    """
    data_dir, exp_dir = Path(data_dir), Path(exp_dir)
    parts = list(dict.fromkeys([train_part, *parts]))
    if num_jobs < 1:
        raise ConfigError(f"num_jobs must be >= 1, got {num_jobs}")
    if align_chunk < 1:
        raise ConfigError(f"align_chunk must be >= 1 cuts, got {align_chunk}")
    decode_config = decode_config or DecodeConfig(acoustic_scale=config.acoustic_scale, num_jobs=num_jobs)
    layout = RecipeLayout(data_dir, exp_dir, train_part)
    features = require_record(layout.features("fbank"), "stage 1 (features)")
    lang_rec = require_record(lang_dir, "stage 2 (lang)")
    eval_parts = [p for p in parts if p != train_part]
    dev_part = dev_part or (eval_parts[0] if eval_parts else None)
    if (decode_config.acoustic_scales or decode_config.insertion_penalties) and dev_part not in eval_parts:
        raise ConfigError(f"decode.acoustic_scales / decode.insertion_penalties tune each system on the dev part, but {dev_part!r} is not among "
                          f"--parts {' '.join(parts)}; add it, or set both to [] for a fixed scale and no penalty")
    config_record = {"gmm": config, "decode": decode_config, "train_part": train_part, "parts": parts}
    if decode_config.acoustic_scales or decode_config.insertion_penalties:
        config_record["dev_part"] = dev_part
    guard = StageGuard("stage 3 (GMM-HMM)", layout.gmm, config_record, {"features": features.fingerprint, "lang": lang_rec.fingerprint}, command)
    if guard.needs_work():
        summary = _run_gmm_work(layout, Path(lang_dir), config, train_part, parts, num_jobs, decode_config, dev_part, align_chunk)
        outputs = [layout.gmm_summary, layout.senones_json, layout.log_priors, *(layout.gmm_model(s) for s in GMM_SYSTEMS),
                   *(layout.gmm_graph(s) / "HCLG.fst" for s in GMM_SYSTEMS), *(layout.ali_cuts(p) for p in parts)]
        guard.finish(outputs)
    else:
        summary = Stage3Summary.from_json(layout.gmm_summary)
    if results_md is not None:
        from asr_kd.report.results_md import write_section

        from asr_kd.stages.provenance import describe_environment, read_record

        env = describe_environment(read_record(layout.gmm))
        write_section(results_md, RESULTS_HEADING, results_section(summary, command, test_part, ood_part) + (f"\n\n{env}\n" if env else ""))
    return summary


def _run_gmm_work(layout: RecipeLayout, lang_dir: Path, config: GmmConfig, train_part: str, parts: list[str], num_jobs: int,
                  decode_config: DecodeConfig, dev_part: str | None, align_chunk: int) -> Stage3Summary:
    from asr_kd.decode.hclg import make_hclg
    from asr_kd.decode.priors import log_priors_from_counts, save_priors

    save_config(config, layout.gmm / "gmm.yaml")
    old = Stage3Summary.from_json(layout.gmm_summary) if layout.gmm_summary.is_file() else None
    timings: dict[str, float] = dict(old.timings) if old else {}
    history: dict[str, list[float]] = dict(old.log_likelihood_history) if old else {}
    subsets: dict[str, dict] = dict(old.training_subsets) if old else {}
    total_start = time.perf_counter()

    lang = Lang.load(lang_dir)
    inputs = GraphInputs.from_lang(lang)
    sources = {p: PartSource(layout.data_dir, p) for p in parts}  # manifests only; features are loaded when used

    tri = _train_systems(layout, inputs, lang, sources[train_part], config, timings, history, subsets, num_jobs)

    for name in GMM_SYSTEMS:
        if _done(layout.gmm_graph(name) / "HCLG.fst"):
            logger.info("%s graph of this run exists (%s), skipping", name, layout.gmm_graph(name))
            continue
        start = time.perf_counter()
        system = GmmSystem.load(layout.gmm_model(name))  # its tree and transition model also serve the hybrid networks
        make_hclg(lang, system.ctx_dep, system.tm, layout.gmm_graph(name), decode_config.graph_scales)
        _timed(timings, f"hclg_{name}", start)

    start = time.perf_counter()
    part_info: dict[str, dict[str, int]] = {}
    train_counts = np.zeros(tri.num_pdfs, dtype=np.float64)
    need_align = not all(_done(layout.ali_cuts(p), layout.tids(p)) for p in parts)
    for p in parts:
        part_info[p] = _align_part(layout, tri, inputs, lang, sources[p], config, num_jobs, align_chunk, train_counts if p == train_part else None)
    if need_align:
        _timed(timings, "align", start)
    save_priors(layout.log_priors, log_priors_from_counts(train_counts, decode_config.prior_smoothing, decode_config.prior_floor))
    # Paths relative to the gmm folder, so that a copied or moved experiment folder stays valid.
    meta = {
        "num_senones": tri.num_pdfs,
        "model": str(layout.gmm_model("tri").relative_to(layout.gmm)),
        "graph": str(layout.gmm_graph("tri").relative_to(layout.gmm)),
        "train_part": train_part,
        "priors": str(layout.log_priors.relative_to(layout.gmm)),
        "parts": part_info,
    }
    write_text_atomic(layout.senones_json, json.dumps(meta, indent=1) + "\n")

    wers: dict[str, dict[str, dict]] = {}
    tune = bool(decode_config.acoustic_scales or decode_config.insertion_penalties)
    # With tuning, the dev part first: its best scale is the one the other parts are decoded with.
    eval_parts = sorted((p for p in parts if p != train_part), key=lambda p: not (tune and p == dev_part))
    for name in GMM_SYSTEMS:
        chosen, chosen_penalty = decode_config.acoustic_scale, 0.0
        for p in eval_parts:
            start = time.perf_counter()
            if tune and p == dev_part:
                scales = decode_config.acoustic_scales or (decode_config.acoustic_scale,)
                penalties = decode_config.insertion_penalties or (0.0,)
            else:
                scales, penalties = (chosen,), (chosen_penalty,)
            entry, decoded = _decode_part(layout, name, lang, sources[p], config, decode_config, scales, align_chunk, penalties)
            wers.setdefault(name, {})[p] = entry
            if tune and p == dev_part:
                chosen, chosen_penalty = entry["acoustic_scale"], entry.get("insertion_penalty", 0.0)
            if decoded:
                _timed(timings, f"decode_{name}_{p}", start)

    mono = GmmSystem.load(layout.gmm_model("mono"))
    systems = {n: {"pdfs": s.num_pdfs, "gaussians": s.am.num_gauss} for n, s in (("mono", mono), ("tri", tri))}
    timings["last_run_total"] = round(time.perf_counter() - total_start, 2)
    summary = Stage3Summary(str(layout.exp_dir), tri.num_pdfs, systems, part_info, wers, timings, history, train_part, _corpus_name(layout.data_dir),
                            dataclasses.asdict(decode_config), dev_part if tune and dev_part else "", subsets)
    write_text_atomic(layout.gmm_summary, summary.to_json())
    logger.info("stage 3 done: %d senones, summary in %s", summary.num_senones, layout.gmm_summary)
    return summary
