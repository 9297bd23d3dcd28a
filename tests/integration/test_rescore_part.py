"""`asr-kd decode-part --rescore-arpa` on the 'tiny' recipe's stage 3: lattices of the triphone
GMM rescored with the first pass's own LM change nothing, and a 4-gram that has seen the part's
transcripts (``asr-kd train-lm --text``) lowers its WER."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _decode(data: Path, exp: Path, corpus: Path, *rescore: str) -> dict:
    from asr_kd.bin.cli import main as cli_main

    rc = cli_main(["decode-part", "--data-dir", str(data), "--exp-dir", str(exp), "--corpus-dir", str(corpus), "--part", "my-test",
                   "--systems", "tri", "--decode-config", str(REPO_ROOT / "recipes" / "librispeech" / "conf" / "decode_tiny.yaml"),
                   "--num-threads", "1", "--num-jobs", "1", *rescore])
    assert rc == 0
    return json.loads((exp / "decode_parts" / "my-test" / "scores.json").read_text())["tri"]


@pytest.mark.timeout(1800)
def test_decode_part_rescores_the_triphone_lattices(tiny_stage3, tmp_path: Path) -> None:
    from asr_kd.bin.cli import main as cli_main

    data, lang_dir, exp3 = tiny_stage3
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "gmm").symlink_to(Path(exp3) / "gmm")  # read only: decode-part writes exp/decode_parts
    corpus = tmp_path / "corpus"
    shutil.copytree(Path(data) / "corpus" / "test-clean", corpus / "my-test")

    same = _decode(data, exp, corpus, "--rescore-arpa", str(Path(lang_dir) / "lm" / "lm.arpa"), "--rescore-method", "fst")
    out = exp / "decode_parts" / "my-test" / "tri"
    assert same["wer"] == same["first_pass"]["wer"] and same["rescored_minus_first_pass"]["value"] == 0.0
    assert (out / "hyp.txt").read_text() == (out / "hyp_first_pass.txt").read_text()
    assert same["first_pass"]["wer"] > 0.05  # something for a better LM to fix

    text = tmp_path / "test_transcripts.txt"
    lines = [line.split(maxsplit=1)[1] for f in sorted((corpus / "my-test").rglob("*.trans.txt")) for line in f.read_text().splitlines()]
    text.write_text("\n".join(lines * 3) + "\n")
    arpa = tmp_path / "4gram.arpa"
    assert cli_main(["train-lm", "--lang-dir", str(lang_dir), "--order", "4", "--out", str(arpa), "--text", str(text)]) == 0
    better = _decode(data, exp, corpus, "--rescore-arpa", str(arpa))
    assert better["first_pass"]["wer"] == same["first_pass"]["wer"]  # the same lattices
    assert better["wer"] < better["first_pass"]["wer"]
    assert better["rescored_minus_first_pass"]["value"] < 0  # (20 utterances: too few for the interval to exclude 0)

    # The same LM as a memory-mapped const LM (built once for the part) gives the same answers.
    exact_hyps = (out / "hyp.txt").read_text()
    const = _decode(data, exp, corpus, "--rescore-arpa", str(arpa), "--rescore-method", "const")
    assert const["wer"] == better["wer"] and (out / "hyp.txt").read_text() == exact_hyps
    assert (exp / "decode_parts" / "my-test" / "const_lm" / "const_lm.json").is_file() and not (out / "const_lm").exists()
    folder = tmp_path / "4gram_const"
    assert cli_main(["arpa-to-const", str(arpa), "--lang-dir", str(lang_dir), "--out", str(folder)]) == 0
    assert _decode(data, exp, corpus, "--rescore-arpa", str(folder), "--rescore-method", "const")["wer"] == better["wer"]
