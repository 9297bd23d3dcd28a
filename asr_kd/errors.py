"""User-facing errors: one line that names the bad file and the fix."""

from __future__ import annotations


class AsrKdError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The command-line front end prints ``str(err)`` as a single line and exits with status 1,
    without a traceback. Messages name the offending file and say how to fix it.
    """


class DataError(AsrKdError):
    """Bad or missing corpus data (audio, transcripts, manifests)."""


class ConfigError(AsrKdError):
    """An invalid configuration value or file."""


def not_utf8(path: object, err: UnicodeDecodeError) -> DataError:
    """The DataError for a text file at ``path`` that is not UTF-8."""
    return DataError(f"{path}: not UTF-8 text ({err.reason}); re-encode it as UTF-8")
