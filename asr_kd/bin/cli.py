"""``asr-kd <command>``: thin command-line entry points over typed library functions.

Each group of commands lives in its own module under ``asr_kd.bin`` with a
``register(subparsers)`` function; the list below is explicit (no registration by import side
effect). A command's handler receives the parsed ``argparse.Namespace`` and calls one library
function. User errors (:class:`asr_kd.errors.AsrKdError`) print one line and exit with status 1;
so do storage errors (no space left, quota, read-only file system, permission denied), naming the
path, instead of a traceback whose last line may not mention the disk at all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from asr_kd.bin.common import note_command_args
from asr_kd.errors import AsrKdError
from asr_kd.utils import STORAGE_ERRNOS, describe_storage_error, setup_logging

# Modules that define ``register(subparsers)``; add a line here for a new command group.
COMMAND_MODULES = (
    "asr_kd.bin.cmd_data",
    "asr_kd.bin.cmd_lang",
    "asr_kd.bin.cmd_train",
    "asr_kd.bin.cmd_synth",
    "asr_kd.bin.cmd_mnist",
    "asr_kd.bin.cmd_decode",
    "asr_kd.bin.cmd_kd",
    "asr_kd.bin.cmd_gmm",
    "asr_kd.bin.cmd_ctc",
    "asr_kd.bin.cmd_deploy",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="asr-kd",
        description="Knowledge distillation for speech recognition: recipe stages as commands.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    note_command_args(sys.argv[1:] if argv is None else argv)
    absolute_folders(args)
    setup_logging()
    try:
        rc = args.func(args)
    except AsrKdError as err:
        print(f"asr-kd {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        print(f"asr-kd {args.command}: error: {describe_storage_error(err)}", file=sys.stderr)
        return 1
    return int(rc or 0)


def absolute_folders(args: argparse.Namespace) -> None:
    """Make every folder option (``--*-dir``, ``--*-dirs``) absolute, so ``--exp-dir exp`` means
    the same folder to every path a stage derives from it (its outputs, its record's file list)."""
    for name, value in vars(args).items():
        if not name.endswith(("_dir", "_dirs")):
            continue
        if isinstance(value, Path):
            setattr(args, name, value.absolute())
        elif isinstance(value, list) and all(isinstance(v, Path) for v in value):
            setattr(args, name, [v.absolute() for v in value])


if __name__ == "__main__":
    sys.exit(main())
