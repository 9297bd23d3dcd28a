"""A small real fbank corpus with learnable frame labels, shared by the DNN and training tests.

The labels are the utterance number ``u`` of ``<spk>-100-<u>`` in ``write_tone_corpus``: each
number is a different harmonic tone (its pitch rises by 30 Hz per number), so a model that reads
the spectrum can tell them apart at every frame. Chance level is 1 / NUM_CLASSES.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from lhotse import CutSet

from asr_kd.config import FeatureConfig
from asr_kd.data.alignments import load_alignment, store_alignments
from asr_kd.data.features import cmvn_path, compute_features_for_parts, cuts_path
from asr_kd.data.librispeech import prepare_manifests
from tests.conftest import write_tone_corpus

NUM_CLASSES = 3
TRAIN_PART, DEV_PART = "train-clean-100", "dev-clean"


@dataclasses.dataclass(frozen=True)
class FrameCorpus:
    """Paths of a labelled fbank corpus: cut manifests (with ``senones`` labels) and CMVN stats."""

    train_cuts: Path
    dev_cuts: Path
    train_cmvn: Path
    dev_cmvn: Path


def utterance_labels(cut) -> np.ndarray:  # noqa: ANN001 - a lhotse cut
    """One label per frame: the utterance number of the cut id."""
    return np.full(cut.num_frames, int(cut.id.split("-")[-1]) % NUM_CLASSES, dtype=np.int64)


def make_frame_corpus(root: Path, train_speakers: tuple[int, ...] = (11, 12, 13, 14), dev_speakers: tuple[int, ...] = (15,),
                      utts_per_speaker: int = NUM_CLASSES) -> FrameCorpus:
    """Write the tone corpus under ``root``, compute fbank and CMVN, and attach labels."""
    corpus = write_tone_corpus(root / "corpus", {TRAIN_PART: list(train_speakers), DEV_PART: list(dev_speakers)},
                               utts_per_speaker=utts_per_speaker)
    prepare_manifests(corpus, root / "manifests", [TRAIN_PART, DEV_PART])
    feat_dir = root / "feats"
    compute_features_for_parts(root / "manifests", feat_dir, [TRAIN_PART, DEV_PART], FeatureConfig(num_jobs=1), kinds=["fbank"])
    paths = {}
    for part in (TRAIN_PART, DEV_PART):
        cuts = CutSet.from_file(cuts_path(feat_dir / "fbank", part))
        labelled = store_alignments(cuts, {c.id: utterance_labels(c) for c in cuts}, root / "ali" / part)
        out = root / f"cuts_{part}_labelled.jsonl.gz"
        labelled.to_file(out)
        paths[part] = out
    return FrameCorpus(paths[TRAIN_PART], paths[DEV_PART], cmvn_path(feat_dir / "fbank", TRAIN_PART), cmvn_path(feat_dir / "fbank", DEV_PART))


def test_frame_corpus_has_labels_for_every_frame(tmp_path: Path) -> None:
    corpus = make_frame_corpus(tmp_path, train_speakers=(11,), dev_speakers=(15,))
    cuts = CutSet.from_file(corpus.train_cuts)
    assert len(cuts) == NUM_CLASSES
    assert sorted(int(load_alignment(c)[0]) for c in cuts) == list(range(NUM_CLASSES))
