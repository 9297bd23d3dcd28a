"""Command-line defaults come from asr_kd.config (issue 10: one home per constant), and run.sh's
copies of them, which the shell cannot import, agree with it."""

from __future__ import annotations

import argparse
import re

from asr_kd.bin.cli import build_parser
from asr_kd.config import DEFAULT_DNN_PRESET, INT8_MAX_RELATIVE, THREE_PERCENT_FRACTION, RescoreConfig
from asr_kd.models.dnn import DNN_PRESETS
from tests.conftest import REPO_ROOT


def _defaults(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices[command]._actions}


def test_cli_defaults_are_the_configs() -> None:
    decode = _defaults("decode-part")
    assert (decode["rescore_method"], decode["rescore_nbest"]) == (RescoreConfig("x").method, RescoreConfig("x").nbest)
    assert _defaults("three-percent")["fraction"] == THREE_PERCENT_FRACTION == 0.03
    assert _defaults("deploy-report")["max_relative"] == INT8_MAX_RELATIVE == _defaults("deploy")["int8_max_relative"]
    # Every command that trains a DNN defaults to the same network (train-dnn once said tiny, the stages mini).
    trainers = ("train-dnn", "realign", "train-teachers", "train-student", "three-percent", "temperature-sweep", "deploy")
    assert {_defaults(c)["model_config"] for c in trainers} == {DEFAULT_DNN_PRESET} and DEFAULT_DNN_PRESET in DNN_PRESETS


def test_run_sh_copies_agree_with_the_config() -> None:
    run_sh = (REPO_ROOT / "recipes" / "librispeech" / "run.sh").read_text()
    assert float(re.search(r"^int8_max_relative=([0-9.]+)", run_sh, re.M).group(1)) == INT8_MAX_RELATIVE
