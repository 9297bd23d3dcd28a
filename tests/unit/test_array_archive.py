"""The single-file array archive (asr_kd.data.array_archive): exact round trips, lhotse
registration, reads in forked processes and threads, and one-line errors on broken archives."""

from __future__ import annotations

import multiprocessing
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lhotse.array import Array, TemporalArray
from lhotse.features.io import get_reader, get_writer

from asr_kd.data.array_archive import (
    ARCHIVE_NAME,
    MAGIC,
    STORAGE_TYPE,
    ArchiveError,
    NpyArchiveReader,
    NpyArchiveWriter,
    atomic_archive_dir,
    close_archives,
    read_archived_array,
)
from asr_kd.errors import DataError

DTYPES = ("int32", "int64", "int8", "uint16", "float16", "float32", "float64", "bool", "complex64")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (so NaNs, -0.0 and float16 payloads count too)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _arrays(n: int, seed: int) -> list[np.ndarray]:
    """``n`` arrays of mixed dtypes and shapes, like alignments and top-k soft targets."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = int(rng.integers(0, 300))
        kind = i % 3
        if kind == 0:
            out.append(rng.integers(-(2**31), 2**31 - 1, size=frames, dtype=np.int64).astype(np.int32))  # labels
        elif kind == 1:
            out.append(rng.integers(0, 14000, size=(frames, 10)).astype(np.int32))  # top-k ids
        else:
            out.append(rng.dirichlet(np.ones(10), size=frames).astype(np.float16))  # top-k probabilities
    return out


def _write(path: Path, arrays: list[np.ndarray]) -> list[str]:
    with NpyArchiveWriter(path) as writer:
        return [writer.write(f"a{i}", a) for i, a in enumerate(arrays)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[np.ndarray]]:
    path = tmp_path_factory.mktemp("archive") / ARCHIVE_NAME
    arrays = _arrays(300, seed=0)
    return path, _write(path, arrays), arrays


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays=st.lists(
        st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))),
        min_size=1,
        max_size=12,
    ),
    fortran=st.booleans(),
)
def test_any_arrays_round_trip_bit_for_bit(tmp_path: Path, arrays: list[np.ndarray], fortran: bool) -> None:
    if fortran:
        arrays = [np.asfortranarray(a) for a in arrays]
    path = tmp_path / "h.npa"
    keys = _write(path, arrays)
    assert len(set(keys)) == len(keys)
    for key, a in reversed(list(zip(keys, arrays))):  # any order: records are independent
        back = read_archived_array(path, key)
        assert _same(back, a) and np.array_equal(back, a, equal_nan=a.dtype.kind in "fc")
        assert back.flags.writeable


def test_archive_layout_is_magic_then_npy_records(archive) -> None:
    path, keys, arrays = archive
    data = path.read_bytes()
    assert data[: len(MAGIC)] == MAGIC
    offsets = [tuple(map(int, k.split(",")[:2])) for k in keys]
    # Records follow one another with no gap, each an .npy file on its own, to the end of the file.
    assert offsets[0][0] == len(MAGIC)
    assert all(o + n == o_next for (o, n), (o_next, _) in zip(offsets, offsets[1:]))
    assert offsets[-1][0] + offsets[-1][1] == len(data)
    offset, nbytes = offsets[5]
    assert data[offset : offset + 6] == b"\x93NUMPY"


def test_registered_with_lhotse_and_loaded_through_manifests(archive, tmp_path: Path) -> None:
    assert get_writer(STORAGE_TYPE) is NpyArchiveWriter and get_reader(STORAGE_TYPE) is NpyArchiveReader
    labels = np.arange(40, dtype=np.int32) * 7
    scalar = np.float64(np.pi)
    with NpyArchiveWriter(tmp_path / "x.npa") as writer:
        temporal = writer.store_array("u1", labels, frame_shift=0.01, temporal_dim=0, start=1.0)
        plain = writer.store_array("u2", np.asarray(scalar))
    assert isinstance(temporal, TemporalArray) and isinstance(plain, Array)
    # Manifests survive serialisation and load through lhotse's own dispatch on storage_type.
    temporal = TemporalArray.from_dict(temporal.to_dict())
    assert temporal.array.storage_type == STORAGE_TYPE and temporal.array.storage_path == str(tmp_path / "x.npa")
    assert _same(temporal.load(), labels)
    assert _same(temporal.load(start=1.1, duration=0.2), labels[10:30])  # a partial read
    assert Array.from_dict(plain.to_dict()).load() == scalar  # 0-d arrays are not sliced


def test_manifests_can_name_the_final_path_while_writing_elsewhere(tmp_path: Path) -> None:
    with atomic_archive_dir(tmp_path / "store") as writer:
        arr = writer.store_array("u", np.arange(5, dtype=np.int32), frame_shift=0.01, temporal_dim=0)
        assert not (tmp_path / "store").exists()
        assert [p.name for p in tmp_path.iterdir()] == [f".store.tmp{os.getpid()}"]
    assert arr.array.storage_path == str(tmp_path / "store" / ARCHIVE_NAME)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [ARCHIVE_NAME]
    assert _same(arr.load(), np.arange(5, dtype=np.int32))
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_archive_dir(tmp_path / "store") as writer:
            writer.write("v", np.zeros(3))
            raise RuntimeError("boom")
    # A failed rewrite leaves the old directory as it was and no temporary directory behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert _same(arr.load(), np.arange(5, dtype=np.int32))


# --------------------------------------------------------------------------------------------
# Concurrent reads
# --------------------------------------------------------------------------------------------


def _read_in_child(job: tuple[str, list[tuple[int, str]]]) -> list[tuple[int, int, bytes]]:
    path, picks = job
    return [(i, os.getpid(), read_archived_array(path, key).tobytes()) for i, key in picks]


def test_forked_workers_read_the_right_arrays_concurrently(archive) -> None:
    path, keys, arrays = archive
    # The parent reads first, so its open descriptor is inherited by the fork: children must
    # neither share its file position nor trust its cache.
    assert _same(read_archived_array(path, keys[0]), arrays[0])
    rng = random.Random(1)
    jobs = [(str(path), [(i, keys[i]) for i in rng.choices(range(len(keys)), k=40)]) for _ in range(16)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = [r for chunk in pool.map(_read_in_child, jobs, chunksize=1) for r in chunk]
    assert len(results) == 16 * 40
    assert len({pid for _, pid, _ in results}) == 2 and os.getpid() not in {pid for _, pid, _ in results}
    for i, _, data in results:
        assert data == arrays[i].tobytes()
    assert _same(read_archived_array(path, keys[1]), arrays[1])  # the parent's descriptor still works


def test_threads_read_the_right_arrays_concurrently(archive, tmp_path: Path) -> None:
    path, keys, arrays = archive
    other = tmp_path / "other.npa"
    other_arrays = _arrays(30, seed=9)
    other_keys = _write(other, other_arrays)
    picks = [(path, keys, arrays, i) for i in range(len(keys))] + [(other, other_keys, other_arrays, i) for i in range(30)]
    random.Random(2).shuffle(picks)

    def read(pick) -> bool:
        p, ks, arrs, i = pick
        if i % 17 == 0:
            close_archives()  # descriptors dropped while other threads read
        return _same(read_archived_array(p, ks[i]), arrs[i])

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, picks))


def test_an_archive_replaced_on_disk_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "a.npa"
    first = [np.full(10, 1, np.int32), np.full(10, 2, np.int32)]
    keys = _write(path, first)
    assert _same(read_archived_array(path, keys[1]), first[1])  # now open and cached
    new = tmp_path / "new.npa"
    second = [np.full(10, 3, np.int32), np.full(10, 4, np.int32)]
    new_keys = _write(new, second)
    # The same offsets and sizes: only the file's identity tells the two apart (a stale
    # descriptor would read the old bytes and fail their checksum).
    assert [k.rsplit(",", 1)[0] for k in new_keys] == [k.rsplit(",", 1)[0] for k in keys]
    os.replace(new, path)
    assert _same(read_archived_array(path, new_keys[1]), second[1])


# --------------------------------------------------------------------------------------------
# Broken archives
# --------------------------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "rerun the stage" in text
    return text


def test_truncated_archive_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.npa"
    arrays = _arrays(6, seed=3)
    keys = _write(path, arrays)
    size = path.stat().st_size
    os.truncate(path, size - 5)
    for key, a in zip(keys[:-1], arrays):  # records before the cut are whole
        assert _same(read_archived_array(path, key), a)
    with pytest.raises(ArchiveError) as err:
        read_archived_array(path, keys[-1])
    assert "is truncated" in _one_line(err, path)
    assert isinstance(err.value, DataError)


def test_corrupt_bytes_fail_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "c.npa"
    arrays = [np.arange(100, dtype=np.float32), np.arange(100, dtype=np.float32)]
    keys = _write(path, arrays)
    offset, nbytes = map(int, keys[0].split(",")[:2])
    with open(path, "r+b") as f:  # one flipped bit in the data, header intact
        f.seek(offset + nbytes - 1)
        byte = f.read(1)[0]
        f.seek(offset + nbytes - 1)
        f.write(bytes([byte ^ 1]))
    with pytest.raises(ArchiveError) as err:
        read_archived_array(path, keys[0])
    assert "is corrupt" in _one_line(err, path)
    assert _same(read_archived_array(path, keys[1]), arrays[1])


def test_not_an_archive_bad_keys_and_missing_files(tmp_path: Path) -> None:
    npy = tmp_path / "plain.npy"
    np.save(npy, np.arange(3))
    with pytest.raises(ArchiveError) as err:
        read_archived_array(npy, f"{len(MAGIC)},10,0")
    assert f"is not an {STORAGE_TYPE} file" in _one_line(err, npy)
    path = tmp_path / "k.npa"
    _write(path, [np.arange(3)])
    for key in ("a0.npy", "8,10", "0,10,00000000", "8,-1,0"):
        with pytest.raises(ArchiveError) as err:
            read_archived_array(path, key)
        _one_line(err, path)
    with pytest.raises(FileNotFoundError, match="missing.npa"):
        read_archived_array(tmp_path / "missing.npa", "8,10,0")
