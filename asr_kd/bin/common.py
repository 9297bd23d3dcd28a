"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import shlex
import sys

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TEST_PART, DEFAULT_TRAIN_PART


def command_line() -> str:
    """Return this process's ``asr-kd ...`` command line, shell-quoted (recorded by stages)."""
    return shlex.join(["asr-kd", *sys.argv[1:]])


def add_part_args(p: argparse.ArgumentParser, dev: bool = True, test: bool = True) -> None:
    """Add ``--train-set`` (and ``--dev-set``, ``--test-set``) with the recipe's defaults."""
    p.add_argument("--train-set", default=DEFAULT_TRAIN_PART, help=f"training part (default {DEFAULT_TRAIN_PART})")
    if dev:
        p.add_argument("--dev-set", default=DEFAULT_DEV_PART, help=f"dev part (default {DEFAULT_DEV_PART})")
    if test:
        p.add_argument("--test-set", default=DEFAULT_TEST_PART, help=f"test part (default {DEFAULT_TEST_PART})")
        p.add_argument("--ood-set", default="", help="an out-of-domain test part scored beside the test part in every table "
                       "(the synthetic corpus's test-ood; e.g. test-other on LibriSpeech); default: none")
