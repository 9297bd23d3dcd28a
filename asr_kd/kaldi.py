"""The one place that imports the k2-fsa Kaldi packages, in the only order that works.

Importing ``kaldilm`` (or, with mismatched versions, ``kaldifst``/``kaldi_decoder``) before
``kaldi_hmm_gmm`` deadlocks in a static initialiser, so every module of the project imports
these packages from here and never directly::

    from asr_kd.kaldi import kaldifst, khg, kaldi_decoder
    kaldilm = load_kaldilm()

It also tames their logging: the C++ code writes to the process's stderr lines such as
``/project/kaldilm/csrc/arpa_file_parser.cc:void kaldilm::ArpaFileParser::Read(...):79`` followed
by ``[I] Reading \\data\\ section.``, and the Python LM tools draw tqdm bars with terminal escape
codes, which made stage-2 log files hard to read. :func:`plain_native_logs` captures that output
around a call and logs it as plain lines through Python's logging.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

import kaldi_hmm_gmm as khg  # noqa: I001  (must come first)
import kaldifst
import kaldi_decoder

__all__ = ["khg", "kaldifst", "kaldi_decoder", "load_kaldilm", "plain_native_logs", "plain_log_lines"]

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SOURCE_LOCATION = re.compile(r"^\S+\.(?:cc|cpp|cxx|h|hpp):.*:\d+$")  # file.cc:function:line on its own line
_KALDI_PREFIX = re.compile(r"^(LOG|VLOG\[\d+\]|WARNING|ERROR|ASSERTION_FAILED) \(.*?\.(?:cc|cpp|h):\d+\) ")  # Kaldi's own format
_PROGRESS_BAR = re.compile(r"\d+%\||\|\s*\d+(?:\.\d+)?[kMG]?/\d+(?:\.\d+)?[kMG]?\s*\[")
_LEVELS = {"[I]": logging.INFO, "[W]": logging.WARNING, "[E]": logging.ERROR, "[F]": logging.ERROR,
           "LOG": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR, "ASSERTION_FAILED": logging.ERROR}
MAX_NATIVE_LINES = 20  # per call; the rest is counted, so a flood of warnings stays readable


def plain_log_lines(text: str) -> list[tuple[int, str]]:
    """Return ``(logging level, message)`` for each meaningful line of native/progress output:
    terminal escape codes and carriage-return redraws removed, progress bars and C++ source
    locations dropped, Kaldi's ``[I]``/``[W]``/``[E]`` and ``LOG (...)`` prefixes turned into levels."""
    out: list[tuple[int, str]] = []
    for raw in text.splitlines():
        line = _ANSI_ESCAPE.sub("", raw.split("\r")[-1] if raw.rstrip("\r") else raw).strip()
        if not line or _SOURCE_LOCATION.match(line) or _PROGRESS_BAR.search(line):
            continue
        level = logging.INFO
        match = _KALDI_PREFIX.match(line)
        if match:
            level, line = _LEVELS.get(match.group(1).split("[")[0], logging.INFO), line[match.end():]
        elif line[:3] in _LEVELS:
            level, line = _LEVELS[line[:3]], line[3:].strip()
        if line:
            out.append((level, line))
    return out


@contextlib.contextmanager
def plain_native_logs(logger: logging.Logger, what: str) -> Iterator[None]:
    """Capture what the block writes to the process's stderr (file descriptor 2: C++ logs and
    progress bars) and log it through ``logger`` as plain lines prefixed with ``what``."""
    sys.stderr.flush()
    python_side = io.StringIO()  # sys.stderr need not be file descriptor 2 (e.g. under pytest)
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            with contextlib.redirect_stderr(python_side):
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = plain_log_lines(capture.read().decode("utf-8", errors="replace") + "\n" + python_side.getvalue())
            for level, line in lines[:MAX_NATIVE_LINES]:
                logger.log(level, "%s: %s", what, line)
            if len(lines) > MAX_NATIVE_LINES:
                logger.warning("%s: %d more lines of its log not shown", what, len(lines) - MAX_NATIVE_LINES)


def load_kaldilm():
    """Return the ``kaldilm`` module, imported after the OpenFst-based packages above."""
    import kaldilm

    return kaldilm
