"""Frame labels on cuts: lossless round trips, keyed by cut id, lazy, and checked lengths."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet, load_manifest_lazy

from asr_kd.config import FeatureConfig
from asr_kd.data.alignments import has_alignment, load_alignment, store_alignments
from asr_kd.data.features import compute_features_for_parts, cuts_path
from asr_kd.data.librispeech import prepare_manifests
from asr_kd.errors import DataError


@pytest.fixture(scope="module")
def fbank_cuts(tmp_path_factory: pytest.TempPathFactory) -> CutSet:
    from tests.conftest import write_tone_corpus

    root = tmp_path_factory.mktemp("ali")
    corpus = write_tone_corpus(root / "corpus", {"dev-clean": [21, 22]}, utts_per_speaker=3)
    prepare_manifests(corpus, root / "manifests", ["dev-clean"])
    compute_features_for_parts(root / "manifests", root / "feats", ["dev-clean"], FeatureConfig(num_jobs=1), kinds=["fbank"])
    return CutSet.from_file(cuts_path(root / "feats" / "fbank", "dev-clean")).to_eager()


def _random_alignments(cuts: CutSet, seed: int, high: int = 14000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c.id: rng.integers(0, high, size=c.num_frames) for c in cuts}


def test_round_trip_is_exact_through_a_manifest_file(fbank_cuts: CutSet, tmp_path: Path) -> None:
    # Labels up to 2**30: a lossy codec (lilcom) would already fail on the paper's 14,000 senones.
    ali = _random_alignments(fbank_cuts, seed=1, high=2**30)
    out = store_alignments(fbank_cuts, ali, tmp_path / "senones")
    out.to_file(tmp_path / "cuts.jsonl.gz")
    back = CutSet.from_file(tmp_path / "cuts.jsonl.gz")
    assert len(back) == len(fbank_cuts)
    for cut in back:
        labels = load_alignment(cut)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, ali[cut.id])
    assert not list(tmp_path.glob(".senones.tmp*"))  # the temporary directory is gone


def test_labels_follow_cut_ids_not_order(fbank_cuts: CutSet, tmp_path: Path) -> None:
    ali = _random_alignments(fbank_cuts, seed=2)
    out = store_alignments(fbank_cuts, ali, tmp_path / "a", name="pdf")
    shuffled = out.shuffle(rng=random.Random(3))
    assert [c.id for c in shuffled] != [c.id for c in out]
    for cut in shuffled:
        np.testing.assert_array_equal(load_alignment(cut, "pdf"), ali[cut.id])
    # A second name on the same cuts coexists with the first.
    ali2 = _random_alignments(out, seed=3, high=5)
    both = store_alignments(out, ali2, tmp_path / "b", name="phones")
    for cut in both:
        np.testing.assert_array_equal(load_alignment(cut, "pdf"), ali[cut.id])
        np.testing.assert_array_equal(load_alignment(cut, "phones"), ali2[cut.id])


def test_loading_is_lazy(fbank_cuts: CutSet, tmp_path: Path) -> None:
    ali = _random_alignments(fbank_cuts, seed=4)
    store_alignments(fbank_cuts, ali, tmp_path / "s").to_file(tmp_path / "cuts.jsonl.gz")
    lazy = load_manifest_lazy(tmp_path / "cuts.jsonl.gz")
    assert lazy.is_lazy
    # Nothing is read when the manifest is opened: deleting one cut's file only breaks that cut.
    victim = next(iter(lazy))
    (tmp_path / "s" / victim.custom["senones"].array.storage_key).unlink()
    for cut in lazy:
        if cut.id == victim.id:
            with pytest.raises(DataError, match=f"cut {victim.id}: cannot read its 'senones' labels"):
                load_alignment(cut)
        else:
            np.testing.assert_array_equal(load_alignment(cut), ali[cut.id])


def test_length_mismatch_is_one_line_error(fbank_cuts: CutSet, tmp_path: Path) -> None:
    ali = _random_alignments(fbank_cuts, seed=5)
    bad_id = next(iter(fbank_cuts)).id
    ali[bad_id] = ali[bad_id][:-1]
    with pytest.raises(DataError, match=rf"cut {bad_id}: senones has 149 labels but the cut has 150 feature frames; realign") as err:
        store_alignments(fbank_cuts, ali, tmp_path / "s")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_non_integer_labels_and_missing_cuts(fbank_cuts: CutSet, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ali = {c.id: np.zeros(c.num_frames, dtype=np.float32) for c in fbank_cuts}
    with pytest.raises(DataError, match="must be integers, got dtype float32"):
        store_alignments(fbank_cuts, ali, tmp_path / "s")
    ali = _random_alignments(fbank_cuts, seed=6)
    dropped = sorted(ali)[0]
    del ali[dropped]
    out = store_alignments(fbank_cuts, ali, tmp_path / "s")
    assert len(out) == len(fbank_cuts) - 1 and dropped not in set(out.ids)
    assert "1 of 6 cuts have no alignment and were dropped" in caplog.text
    unlabelled = fbank_cuts[dropped]
    assert not has_alignment(unlabelled)
    with pytest.raises(DataError, match=f"cut {dropped} has no 'senones' labels; attach them with store_alignments"):
        load_alignment(unlabelled)


def test_rewriting_replaces_the_old_storage(fbank_cuts: CutSet, tmp_path: Path) -> None:
    first = _random_alignments(fbank_cuts, seed=7)
    second = _random_alignments(fbank_cuts, seed=8)
    store_alignments(fbank_cuts, first, tmp_path / "s")
    out = store_alignments(fbank_cuts, second, tmp_path / "s")
    for cut in out:
        np.testing.assert_array_equal(load_alignment(cut), second[cut.id])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
