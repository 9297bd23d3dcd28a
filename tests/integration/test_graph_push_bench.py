"""bench/graph_push.py on tiny's stage 3: the unpushed graph at the stage's own search reproduces the
stage's dev decode of the triphone GMM, and the pushed graph's costs are compared on the same scale."""

from __future__ import annotations

import json
import runpy
import re

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_graph_push_bench_reproduces_stage3s_dev_decode(tiny_stage3, tmp_path) -> None:
    data, _, exp = tiny_stage3
    decode = json.loads((exp / "gmm" / "stage3.json").read_text())["decode"]
    beam, active = decode["beam"], decode["max_active"]
    results = tmp_path / "RESULTS.md"
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "graph_push.py"))
    assert bench["main"](["--data", str(data), "--exp", str(exp), "--beams", f"{beam:g}", "--max-active", str(active),
                          "--reference", f"{beam:g}:{active}", "--repeats", "1", "--results", str(results)]) == 0
    row = re.search(rf"^\| {beam:g} \| (.*) \|$", results.read_text(), re.M)
    assert row, results.read_text()
    cells = row.group(1).split(" | ")
    plain_search, pushed_search, plain_words, _pushed_words = (int(c) for c in cells[3:])
    scoring = json.loads((exp / "gmm" / "decode_tri_dev-clean" / "scoring.json").read_text())
    # The reference is this very search, so it has no search error; and it is stage 3's decode, word for word.
    assert plain_search == 0
    assert plain_words == scoring["substitutions"] + scoring["deletions"] + scoring["insertions"]
    utterances = int(re.search(r": (\d+) dev utterances", results.read_text()).group(1))
    assert 0 <= pushed_search <= utterances and utterances > 3
    # A search wide enough to find every best path on tiny's graph: the pushed graph finds the same costs, V(start)
    # put back (neither more, a search error, nor less, which a wrong offset would give every utterance), and the same word errors.
    assert bench["main"](["--data", str(data), "--exp", str(exp), "--beams", "30", "--max-active", "100000",
                          "--reference", "30:100000", "--repeats", "1", "--results", str(results)]) == 0
    cells = re.search(r"^\| 30 \| (.*) \|$", results.read_text(), re.M).group(1).split(" | ")
    assert [int(c) for c in cells[3:]] == [0, 0, plain_words_wide := int(cells[5]), plain_words_wide]
    assert "Utterances cheaper than the reference found (at most, over the beams; expected 0 or nearly): unpushed 0, pushed 0." in results.read_text()
