"""Small shared helpers: atomic writes, logging set-up, stage markers."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


class LogFileHandler(logging.FileHandler):
    """A log file that a full disk (or a quota, a read-only folder) silences with one line on
    stderr naming the file, instead of Python's traceback for every later record; the console
    log goes on, and the stage's own writes report the condition when they fail."""

    def __init__(self, filename: Path | str) -> None:
        super().__init__(filename)
        self.stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.stopped:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            self.stopped = True
            sys.stderr.write(f"log file {self.baseFilename}: {err.strerror}; logging there stopped (the console log goes on)\n")
            return
        super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError as err:  # the records left in the buffer cannot be flushed either
            if err.errno not in STORAGE_ERRNOS:
                raise
            stream, self.stream = self.stream, None  # type: ignore[assignment]
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
            logging.Handler.close(self)


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, if given, to ``log_file`` (its directory is created; see
    :class:`LogFileHandler` for what a full disk does)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(LogFileHandler(log_file))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


# Errors that say "this disk or folder cannot take the write" rather than "the program is wrong":
# the command line reports them in one line naming the path (asr_kd.bin.cli).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_NEARLY_FULL_BYTES = 1 << 20


def storage_error(err: BaseException, path: Path | str) -> OSError | None:
    """Return an OSError naming ``path`` when ``err`` (raised while writing it) comes from the
    storage: an OSError with a storage errno, or a RuntimeError of a C++ writer (torch's zip
    writer says "unexpected pos", OpenFst "System error.", with no errno) while the disk is full."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        code = err.errno
    elif isinstance(err, RuntimeError):
        try:
            full = shutil.disk_usage(Path(path).parent).free < _NEARLY_FULL_BYTES
        except OSError:
            full = False
        if not full:
            return None
        code = errno.ENOSPC
    else:
        return None
    return OSError(code, os.strerror(code), str(path))


def not_rank_0() -> bool:
    """Return whether this process is another rank than 0 of a torchrun job (``WORLD_SIZE`` > 1,
    ``RANK`` not 0; a plain run with a stray ``RANK`` is rank 0):
    one that leaves work done once for all ranks to rank 0 and waits for its record."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


@contextlib.contextmanager
def folder_lock(folder: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs, so that
    processes working side by side (stage 6's parallel students) take turns at a read-modify-write
    there. Where the file system cannot lock a folder (some network file systems), the block runs
    without the lock, as before there was one."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            logging.getLogger(__name__).debug("no lock on %s (%s); going on without", folder, err)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffixes (``x.jsonl.gz`` -> ``.x.tmp123.jsonl.gz``) so that
    writers which pick a format from the file name (lhotse, numpy) still work. A write that fails
    for lack of space, quota or permission raises an OSError (errno ENOSPC, EDQUOT, EROFS, EACCES
    or EPERM) whose filename is ``path``, whatever the writer raised.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp", suffix=suffix, dir=path.parent)
    except OSError as err:
        storage = storage_error(err, path)
        if storage is not None:
            raise storage from err
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as err:
        storage = storage_error(err, path)  # before the clean-up below frees the space
        if storage is not None:
            raise storage from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def describe_storage_error(err: OSError) -> str:
    """Return one line saying which path could not be written and why, and what to do."""
    where = err.filename or "a file"
    elsewhere = "point the command at another folder (e.g. another --exp, --data-dir or --output-dir)"
    if err.errno == errno.ENOSPC:
        return f"no space left on device writing {where} (free space there or {elsewhere})"
    if err.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {where} (free space within your quota or {elsewhere})"
    if err.errno == errno.EROFS:
        return f"read-only file system: cannot write {where} ({elsewhere})"
    return f"permission denied on {where} (fix its permissions or {elsewhere})"


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """Return the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path | str, value: object) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(value, indent=1) + "\n")


def read_json(path: Path | str) -> object:
    """Return the JSON value stored in ``path``."""
    return json.loads(Path(path).read_text())


def open_text(path: Path | str, mode: str = "r") -> TextIO:
    """Open a UTF-8 text file (``mode`` "r" or "w"), gzip-compressed if its name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")
