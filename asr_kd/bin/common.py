"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TEST_PART, DEFAULT_TRAIN_PART


# The arguments asr_kd.bin.cli.main parsed (a list given to main(), or sys.argv's); None before.
_parsed_args: list[str] | None = None


def note_command_args(argv: list[str]) -> None:
    """Remember the arguments main() parses, for :func:`command_line`."""
    global _parsed_args
    _parsed_args = list(argv)


def command_line() -> str:
    """Return this command's ``asr-kd ...`` line, shell-quoted (recorded by stages): the arguments
    main() parsed, which are sys.argv's unless main() was called with a list."""
    return shlex.join(["asr-kd", *(_parsed_args if _parsed_args is not None else sys.argv[1:])])


def add_part_args(p: argparse.ArgumentParser, dev: bool = True, test: bool = True) -> None:
    """Add ``--train-set`` (and ``--dev-set``, ``--test-set``) with the recipe's defaults."""
    p.add_argument("--train-set", default=DEFAULT_TRAIN_PART, help=f"training part (default {DEFAULT_TRAIN_PART})")
    if dev:
        p.add_argument("--dev-set", default=DEFAULT_DEV_PART, help=f"dev part (default {DEFAULT_DEV_PART})")
    if test:
        p.add_argument("--test-set", default=DEFAULT_TEST_PART, help=f"test part (default {DEFAULT_TEST_PART})")
        p.add_argument("--ood-set", default="", help="an out-of-domain test part scored beside the test part in every table "
                       "(the synthetic corpus's test-ood; e.g. test-other on LibriSpeech); default: none")


def add_jobs_args(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--jobs``, ``--cmd`` and ``--cmd-config`` (the launcher of :mod:`asr_kd.launch`) for ``what``."""
    from asr_kd.launch import BACKENDS

    p.add_argument("--jobs", type=int, default=1,
                   help=f"{what} trained at once, one process each with --num-threads torch threads (default 1); the results do not depend on it")
    p.add_argument("--cmd", choices=BACKENDS, default="local",
                   help="where each training runs: local processes (default), a Slurm job array through submitit (slurm), or "
                   "submitit's local executor (submitit-local: the Slurm path on this machine); the results do not depend on it")
    p.add_argument("--cmd-config", type=Path, default=None,
                   help="YAML of ClusterConfig fields for --cmd slurm (partition, time_min, mem_gb, cpus_per_task, gpus_per_node, "
                   "array_parallelism, account, qos, setup): recipes/librispeech/conf/slurm.yaml")


def launcher_from_args(args: argparse.Namespace) -> Any:
    """Return the launcher that :func:`add_jobs_args`'s options choose."""
    from asr_kd.launch import load_launcher

    return load_launcher(args.cmd, args.cmd_config)
