"""A lossless single-file archive of numpy arrays, registered with lhotse as storage type
``npy_archive``.

Senone alignments and top-k soft targets are small arrays, one or two per cut. Written as one
``.npy`` file each (lhotse's ``NumpyFilesWriter``), train-clean-100 needs about 85,000 files and
the 960 h set ten times that: slow on network filesystems and heavy on inode quotas. lhotse's own
single-file format (``lilcom_chunky``) compresses floats lossily and is meant for features, and
its HDF5 storage needs h5py and a handle that must not cross ``fork``. This archive keeps the
exact ``.npy`` bytes of every array, one after the other, in one file:

``<8-byte magic> <npy record> <npy record> ...``

Each record is exactly what ``np.save`` writes (header with dtype, shape and order, then the
data), so dtypes, shapes and bit patterns (float16 NaN payloads included) survive. The manifest's
``storage_key`` locates a record: ``"<offset>,<nbytes>,<crc32 hex>"``; the checksum turns a
corrupt or truncated archive into a clear error instead of wrong training targets.

Reading is safe in forked DataLoader workers and DDP ranks: records are read with ``os.pread``,
which never moves a shared file position, and each process opens its own descriptors (the cache
of open archives is emptied in a forked child). An archive replaced on disk (a rerun stage renames
a new one over it) is noticed by its inode and reopened.

:class:`NpyArchiveWriter` / :class:`NpyArchiveReader` are the lhotse storage classes;
:func:`atomic_archive_dir` writes a storage directory holding one archive, atomically; importing
this module registers the storage type (``asr_kd.data.alignments`` and ``asr_kd.kd.soft_targets``
import it, so every reader of those fields has it).
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from lhotse.features.io import FeaturesReader, FeaturesWriter, register_reader, register_writer

from asr_kd.errors import DataError

STORAGE_TYPE = "npy_archive"
ARCHIVE_NAME = "arrays.npa"  # the archive's file name inside a storage directory
MAGIC = b"\x93NPARC1\n"  # 8 bytes; the non-ASCII first byte (as in .npy) marks the file as binary
FIX = "rewrite it (rerun the stage that stored these arrays)"  # the fix named by every read error
MAX_OPEN_ARCHIVES = 32  # per process; more distinct archives than this are reopened as needed


class ArchiveError(DataError):
    """An archive that cannot be read: truncated, corrupt, or not an archive (a missing one
    raises FileNotFoundError, which names the path)."""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@register_writer
class NpyArchiveWriter(FeaturesWriter):
    """Append arrays as exact ``.npy`` records to one archive file (created or truncated).

    ``manifest_path`` is the path the returned manifests name (default: ``storage_path``); pass
    the final path when the archive is written under a temporary name and renamed afterwards.
    Close the writer (or use it as a context manager) before reading: records are buffered and
    the file is flushed and fsynced on close.
    """

    name = STORAGE_TYPE

    def __init__(self, storage_path: Path | str, manifest_path: Path | str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._path = Path(storage_path)
        self._manifest_path = str(manifest_path if manifest_path is not None else storage_path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path, "wb")
        self._file.write(MAGIC)
        self._offset = len(MAGIC)
        self.num_arrays = 0

    @property
    def storage_path(self) -> str:
        """The archive path recorded in manifests."""
        return self._manifest_path

    def write(self, key: str, value: np.ndarray) -> str:
        """Append ``value`` and return its storage key ``"offset,nbytes,crc32"``; ``key`` (the
        array's id) is not stored: manifests index the archive."""
        buf = io.BytesIO()
        # allow_pickle=False: object arrays would not be plain bytes (and could run code on load).
        np.save(buf, np.asarray(value), allow_pickle=False)
        record = buf.getbuffer()
        self._file.write(record)
        storage_key = f"{self._offset},{record.nbytes},{zlib.crc32(record):08x}"
        self._offset += record.nbytes
        self.num_arrays += 1
        return storage_key

    def close(self) -> None:
        """Flush the archive to disk (fsync: a rename after close must not expose an empty file
        after a crash) and close it; closing twice is harmless."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "NpyArchiveWriter":
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


@contextlib.contextmanager
def atomic_archive_dir(storage_dir: Path | str) -> Iterator[NpyArchiveWriter]:
    """Yield a writer for ``storage_dir/arrays.npa`` that writes into a temporary directory
    beside ``storage_dir`` (``.<name>.tmp<pid>``) while its manifests already name the final
    path. On success the archive is closed and the directory renamed onto ``storage_dir``
    (an older directory there, e.g. one of ``.npy`` files, is removed); on failure the temporary
    directory is removed and ``storage_dir`` is left as it was."""
    storage_dir = Path(storage_dir)
    tmp_dir = storage_dir.with_name(f".{storage_dir.name}.tmp{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    try:
        with NpyArchiveWriter(tmp_dir / ARCHIVE_NAME, manifest_path=storage_dir / ARCHIVE_NAME) as writer:
            yield writer
        if storage_dir.exists():
            old = storage_dir.with_name(f".{storage_dir.name}.old{os.getpid()}")
            os.replace(storage_dir, old)
            shutil.rmtree(old)
        os.replace(tmp_dir, storage_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _OpenArchive:
    """An open descriptor of one archive and the identity of the file it was opened on.

    A reader holds a reference while it reads, so an archive evicted from the cache (or
    replaced on disk) by another thread is closed only when the last read on it has finished."""

    __slots__ = ("fd", "identity")

    def __init__(self, fd: int, identity: tuple[int, int, int, int]) -> None:
        self.fd = fd
        self.identity = identity

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter shutdown
            os.close(self.fd)


class _ArchiveCache:
    """This process's open archives, most recently used last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: collections.OrderedDict[str, _OpenArchive] = collections.OrderedDict()

    def get(self, path: str) -> _OpenArchive:
        """Return the open archive at ``path``, (re)opening it if it is new or changed on disk."""
        st = os.stat(path)  # FileNotFoundError names the path
        # Inode and device: a rerun stage renames a new archive over the old one; size and mtime:
        # a writer that truncated and rewrote the same file.
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self.lock:
            entry = self.files.get(path)
            if entry is not None and entry.identity == identity:
                self.files.move_to_end(path)
                return entry
        entry = _open_archive(path, identity)
        with self.lock:
            self.files[path] = entry
            self.files.move_to_end(path)
            while len(self.files) > MAX_OPEN_ARCHIVES:
                self.files.popitem(last=False)
        return entry


def _open_archive(path: str, identity: tuple[int, int, int, int]) -> _OpenArchive:
    """Open ``path`` and check its magic bytes; ArchiveError if it is not an archive."""
    entry = _OpenArchive(os.open(path, os.O_RDONLY), identity)  # not inherited by exec'd children (PEP 446)
    if os.pread(entry.fd, len(MAGIC), 0) != MAGIC:
        raise ArchiveError(f"{path} is not an {STORAGE_TYPE} file (its first bytes are wrong); {FIX}")
    return entry


_cache = _ArchiveCache()


def _reset_after_fork() -> None:
    # The child starts with no open archives and a fresh lock (the parent's lock may have been
    # held by another thread at the fork). Dropping the inherited entries closes only the
    # child's copies of the descriptors.
    global _cache
    _cache = _ArchiveCache()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def close_archives() -> None:
    """Forget this process's open archives (each descriptor closes once no read uses it)."""
    with _cache.lock:
        _cache.files.clear()


def parse_key(path: str, storage_key: str) -> tuple[int, int, int]:
    """Return ``(offset, nbytes, crc32)`` of ``storage_key``; ArchiveError naming ``path`` if
    the key is not ``"offset,nbytes,crc32hex"``."""
    try:
        offset, nbytes, crc = storage_key.split(",")
        parsed = int(offset), int(nbytes), int(crc, 16)
    except ValueError:
        raise ArchiveError(
            f"storage key {storage_key!r} for {path} is not 'offset,nbytes,crc32'; the manifest does not belong to an "
            f"{STORAGE_TYPE} archive, {FIX}"
        ) from None
    if parsed[0] < len(MAGIC) or parsed[1] <= 0:
        raise ArchiveError(f"storage key {storage_key!r} for {path} points outside the archive's records; {FIX}")
    return parsed


def read_archived_array(path: Path | str, storage_key: str) -> np.ndarray:
    """Return the array stored at ``storage_key`` (from :meth:`NpyArchiveWriter.write`) in the
    archive ``path``: a new, writable array with the stored dtype, shape and bytes.

    Raises ArchiveError (a DataError, one line naming the file) when the archive is truncated,
    corrupt or not an archive, and FileNotFoundError when it is missing."""
    path = str(path)
    offset, nbytes, crc = parse_key(path, storage_key)
    entry = _cache.get(path)
    record = os.pread(entry.fd, nbytes, offset)
    if len(record) != nbytes:
        raise ArchiveError(
            f"{path} is truncated: the array at byte {offset} needs {nbytes} bytes but the file has "
            f"{max(entry.identity[2] - offset, 0)} from there; {FIX}"
        )
    if zlib.crc32(record) != crc:
        raise ArchiveError(f"{path} is corrupt: the array at byte {offset} ({nbytes} bytes) fails its checksum; {FIX}")
    try:
        return np.load(io.BytesIO(record), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # only if the writer itself stored garbage
        raise ArchiveError(f"{path}: the record at byte {offset} is not an .npy array ({err}); {FIX}") from None


@register_reader
class NpyArchiveReader(FeaturesReader):
    """Read arrays from an archive written by :class:`NpyArchiveWriter`; ``storage_path`` is the
    archive file, ``storage_key`` locates one array in it."""

    name = STORAGE_TYPE

    def __init__(self, storage_path: Path | str, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.storage_path = str(storage_path)

    def read(self, key: str, left_offset_frames: int = 0, right_offset_frames: Optional[int] = None) -> np.ndarray:
        """Return the array at ``key``, cut to frames ``[left_offset_frames, right_offset_frames)``
        along its first axis (lhotse's partial reads of a truncated cut; the whole record is read:
        alignments and top-k targets are small)."""
        array = read_archived_array(self.storage_path, key)
        if left_offset_frames == 0 and right_offset_frames is None:
            return array  # also keeps 0-d arrays, which cannot be sliced
        return array[left_offset_frames:right_offset_frames]
