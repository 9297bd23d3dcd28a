"""Frame labels on cuts: lossless round trips, keyed by cut id, lazy, and checked lengths."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet, NumpyFilesWriter, load_manifest_lazy

from asr_kd.config import FeatureConfig
from asr_kd.data.array_archive import ARCHIVE_NAME, STORAGE_TYPE
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
    # One data file for the whole storage directory, named by every manifest.
    assert [p.name for p in (tmp_path / "senones").iterdir()] == [ARCHIVE_NAME]
    assert {c.custom["senones"].array.storage_path for c in back} == {str(tmp_path / "senones" / ARCHIVE_NAME)}
    assert {c.custom["senones"].array.storage_type for c in back} == {STORAGE_TYPE}


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
    # Nothing is read when the manifest is opened: garbling one cut's record breaks only that cut.
    victim = next(iter(lazy))
    offset, nbytes = map(int, victim.custom["senones"].array.storage_key.split(",")[:2])
    with open(tmp_path / "s" / ARCHIVE_NAME, "r+b") as f:
        f.seek(offset + nbytes - 8)
        f.write(b"\xff" * 8)
    for cut in lazy:
        if cut.id == victim.id:
            with pytest.raises(DataError, match=f"cut {victim.id}: cannot read its 'senones' labels: .* is corrupt") as err:
                load_alignment(cut)
            assert "\n" not in str(err.value) and str(tmp_path / "s" / ARCHIVE_NAME) in str(err.value)
        else:
            np.testing.assert_array_equal(load_alignment(cut), ali[cut.id])


def test_truncated_or_missing_archive_is_a_one_line_error_naming_the_file(fbank_cuts: CutSet, tmp_path: Path) -> None:
    ali = _random_alignments(fbank_cuts, seed=9)
    out = store_alignments(fbank_cuts, ali, tmp_path / "s")
    archive = tmp_path / "s" / ARCHIVE_NAME
    last = max(out, key=lambda c: int(c.custom["senones"].array.storage_key.split(",")[0]))
    os.truncate(archive, archive.stat().st_size - 100)  # e.g. an interrupted copy
    expected = f"cut {last.id}: cannot read its 'senones' labels: {re.escape(str(archive))} is truncated"
    with pytest.raises(DataError, match=expected) as err:
        load_alignment(last)
    assert "\n" not in str(err.value) and "rerun the stage" in str(err.value)
    first = next(c for c in out if c.id != last.id)
    np.testing.assert_array_equal(load_alignment(first), ali[first.id])  # whole records still load
    archive.unlink()
    with pytest.raises(DataError, match=f"cut {first.id}: cannot read its 'senones' labels .*{re.escape(str(archive))}") as err:
        load_alignment(first)
    assert "\n" not in str(err.value)


def test_manifests_of_per_cut_npy_files_still_load_and_are_replaced(fbank_cuts: CutSet, tmp_path: Path) -> None:
    # What store_alignments wrote before the archive: one .npy file per cut (lhotse numpy_files).
    ali = _random_alignments(fbank_cuts, seed=10)
    writer = NumpyFilesWriter(tmp_path / "s")
    old = CutSet.from_cuts(
        c.with_custom("senones", writer.store_array(c.id, ali[c.id].astype(np.int32), frame_shift=0.01, temporal_dim=0))
        for c in fbank_cuts
    )
    old.to_file(tmp_path / "old.jsonl.gz")
    for cut in CutSet.from_file(tmp_path / "old.jsonl.gz"):
        assert cut.custom["senones"].array.storage_type == "numpy_files"
        np.testing.assert_array_equal(load_alignment(cut), ali[cut.id])
    assert len(list((tmp_path / "s").rglob("*.npy"))) == len(fbank_cuts)
    new = _random_alignments(fbank_cuts, seed=11)
    out = store_alignments(fbank_cuts, new, tmp_path / "s")  # rewriting replaces the directory of files
    assert [p.name for p in (tmp_path / "s").iterdir()] == [ARCHIVE_NAME]
    for cut in out:
        np.testing.assert_array_equal(load_alignment(cut), new[cut.id])


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


def test_streamed_manifest_is_the_stored_cutsets_file(fbank_cuts: CutSet, tmp_path: Path) -> None:
    """write_alignment_chunks (stage 3: cuts written as they are stored, never a part in memory)
    writes the manifest and archive that store_alignment_chunks's CutSet and archive are."""
    from asr_kd.data.alignments import store_alignment_chunks, write_alignment_chunks

    cuts = list(fbank_cuts)
    ali = _random_alignments(fbank_cuts, seed=5)
    del ali[cuts[1].id]  # a cut the aligner left out is dropped from both
    chunks = [(cuts[:2], {c.id: ali[c.id] for c in cuts[:2] if c.id in ali}), (cuts[2:], {c.id: ali[c.id] for c in cuts[2:]})]
    stored = store_alignment_chunks(chunks, tmp_path / "a")
    stored.to_file(tmp_path / "a.jsonl.gz")
    assert write_alignment_chunks(chunks, tmp_path / "b", tmp_path / "b.jsonl.gz") == len(stored) == len(cuts) - 1
    assert (tmp_path / "a" / ARCHIVE_NAME).read_bytes() == (tmp_path / "b" / ARCHIVE_NAME).read_bytes()
    streamed = list(load_manifest_lazy(tmp_path / "b.jsonl.gz"))
    assert [c.id for c in streamed] == [c.id for c in stored]
    for a, b in zip(stored, streamed):
        np.testing.assert_array_equal(load_alignment(a), load_alignment(b))
        np.testing.assert_array_equal(load_alignment(b), ali[b.id])
    # A failed write leaves neither manifest nor archive behind.
    bad = [(cuts, {c.id: ali.get(c.id, np.zeros(3, np.int32)) for c in cuts})]
    with pytest.raises(DataError):
        write_alignment_chunks(bad, tmp_path / "c", tmp_path / "c.jsonl.gz")
    assert not (tmp_path / "c.jsonl.gz").exists() and not (tmp_path / "c").exists()
