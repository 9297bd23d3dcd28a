"""Every ``asr-kd`` command answers ``--help`` (argparse formats each help string with ``%``, so a
bare "3%" in one breaks that command's help only when someone asks for it)."""

from __future__ import annotations

import argparse

from asr_kd.bin.cli import build_parser


def test_every_command_formats_its_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) > 20 and "three-percent" in commands
    for name, sub in commands.items():
        text = sub.format_help()
        assert text.startswith(f"usage: asr-kd {name}"), name
    assert "3% models trained at once" in commands["three-percent"].format_help()
