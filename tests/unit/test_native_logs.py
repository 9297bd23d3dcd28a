"""Stage-2 logs are plain lines: no terminal escape codes, no C++ source locations."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from asr_kd.config import LangConfig
from asr_kd.kaldi import plain_log_lines
from asr_kd.lang.lm import compile_grammar_fst, train_ngram_lm
from asr_kd.lang.prepare import prepare_lang


def test_native_output_becomes_plain_levelled_lines() -> None:
    text = (
        "/project/kaldilm/csrc/arpa_file_parser.cc:void kaldilm::ArpaFileParser::Read(std::istream&):79\n"
        "[I] Reading \\data\\ section.\n"
        "\r  2-gram:   0%|          | 0/8 [00:00<?, ?hist/s]\x1b[A\n"
        "\rloading:   0%|          | 0.00/865 [00:00<?, ?B/s]\rloading: 100%|##########| 865/865 [00:00<00:00, 3.46MB/s]\n"
        "\x1b[33m[W] word FOO is not in the symbol table\x1b[0m\n"
        "LOG (arpa2fst[5.5]:Read():arpa-file-parser.cc:94) Reading \\2-grams: section.\n"
    )
    assert plain_log_lines(text) == [
        (logging.INFO, "Reading \\data\\ section."),
        (logging.WARNING, "word FOO is not in the symbol table"),
        (logging.INFO, "Reading \\2-grams: section."),
    ]


def test_lm_tools_log_plain_lines(tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    prepare_lang({"train": ["THE CAT SAT", "A DOG RAN"]}, tmp_path / "lang", LangConfig(), train_split="train", dev_split=None)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="asr_kd.lang.lm"):
        train_ngram_lm(["THE CAT SAT", "A DOG RAN", "THE DOG SAT"], 3, tmp_path / "lm.arpa")
        compile_grammar_fst(tmp_path / "lm.arpa", tmp_path / "lang" / "words.txt")
    err = capfd.readouterr().err
    assert "\x1b[" not in err and ".cc:" not in err and "%|" not in err, err  # nothing raw reaches the terminal
    messages = [r.getMessage() for r in caplog.records]
    assert "arpa2fst: Reading \\data\\ section." in messages
    assert not any("\x1b[" in m or ".cc:" in m or "\r" in m for m in messages)
