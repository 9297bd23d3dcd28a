"""Word insertion penalty: added to the graph's word arcs, searched on dev beside the acoustic scale."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from decode_toy import make_lang, monophone_model, oracle_alignment, oracle_log_posteriors, uniform_log_priors

from asr_kd.config import DecodeConfig
from asr_kd.decode.fst_utils import num_arcs
from asr_kd.decode.hclg import compile_hclg
from asr_kd.decode.hybrid import decode_posteriors
from asr_kd.decode.penalty import PenalisedGraphs, add_word_penalty
from asr_kd.decode.tuning import BLANK_PENALTY, ScaleSweep, describe_decoding, sweep_scales_and_penalties, tune_decoding
from asr_kd.errors import ConfigError, DataError
from asr_kd.kaldi import kaldifst
from asr_kd.metrics.wer import WerResult, compute_wer


def _linear(labels: list[tuple[int, int, float]]) -> kaldifst.StdVectorFst:
    fst = kaldifst.StdVectorFst()
    states = [fst.add_state() for _ in range(len(labels) + 1)]
    fst.start = states[0]
    for i, (ilabel, olabel, w) in enumerate(labels):
        fst.add_arc(states[i], kaldifst.StdArc(ilabel, olabel, w, states[i + 1]))
    fst.set_final(states[-1], 0.25)
    return fst


def _arcs(fst: kaldifst.StdVectorFst) -> list[tuple[int, int, float]]:
    return [(a.ilabel, a.olabel, round(a.weight.value, 4)) for s in kaldifst.StateIterator(fst) for a in kaldifst.ArcIterator(fst, s)]


def test_the_penalty_lands_on_every_word_arc_and_nowhere_else() -> None:
    graph = _linear([(1, 0, 0.5), (2, 7, 1.0), (3, 0, 0.0), (4, 9, 2.0)])
    out = add_word_penalty(graph, -0.75, [0, 7, 9, 11])
    assert _arcs(out) == [(1, 0, 0.5), (2, 7, 0.25), (3, 0, 0.0), (4, 9, 1.25)]
    assert out.num_states == graph.num_states and num_arcs(out) == num_arcs(graph)
    assert add_word_penalty(graph, 0.0, [7, 9]) is graph  # no penalty: the graph itself, no copy
    with pytest.raises(DataError, match="output labels are not all in the word list"):
        add_word_penalty(graph, 1.0, [7])  # word 9 missing: its path would be lost
    with pytest.raises(ConfigError, match="finite"):
        add_word_penalty(graph, float("inf"), [7, 9])
    graphs = PenalisedGraphs(graph, [7, 9])
    assert graphs.at(0) is graph and graphs.at(2.0) is graphs.at(2.0)
    assert _arcs(graphs.at(2.0))[1] == (2, 7, 3.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    lang = make_lang(tmp_path_factory.mktemp("penalty"))
    ctx_dep, tm = monophone_model(lang)
    hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
    return lang, tm, hclg


def test_a_penalty_moves_the_best_paths_cost_by_itself_per_word(toy) -> None:
    lang, tm, hclg = toy
    ali = oracle_alignment(lang, *monophone_model(lang), "THE CAT SAT".split(), num_frames=72)
    posts = oracle_log_posteriors(tm, ali)
    priors = uniform_log_priors(tm)
    graphs = PenalisedGraphs(hclg, lang.words.ids())
    base = decode_posteriors(hclg, tm, posts, priors, DecodeConfig())
    assert base.word_ids == lang.word_ids("THE CAT SAT".split())
    for penalty in (-1.5, 0.5, 3.0):
        moved = decode_posteriors(graphs.at(penalty), tm, posts, priors, DecodeConfig())
        # Clear posteriors: the same path, its score lower by the penalty on each of its 3 words.
        assert moved.word_ids == base.word_ids and moved.alignment == base.alignment
        assert moved.score == pytest.approx(base.score - 3 * penalty, abs=1e-3)


def test_a_large_bonus_inserts_words_and_a_large_penalty_deletes_them(toy) -> None:
    lang, tm, hclg = toy
    ali = oracle_alignment(lang, *monophone_model(lang), "THE CAT SAT".split(), num_frames=72)
    rng = np.random.default_rng(0)
    # Flat, noisy posteriors: the graph decides, so the penalty does too.
    noisy = oracle_log_posteriors(tm, ali, low=-0.3) + rng.normal(0, 0.2, size=(len(ali), tm.num_pdfs))
    graphs = PenalisedGraphs(hclg, lang.words.ids())
    counts = {p: len(decode_posteriors(graphs.at(p), tm, noisy, uniform_log_priors(tm), DecodeConfig(acoustic_scale=1.0)).word_ids)
              for p in (-20.0, 0.0, 20.0)}
    assert counts[-20.0] > counts[0.0] >= counts[20.0] and counts[20.0] <= 1


def _result(errors: int, words: int = 100) -> WerResult:
    refs = {"u": " ".join(["a"] * words)}
    return compute_wer(refs, {"u": " ".join(["a"] * (words - errors))})


# Dev word errors on a grid of scales (columns) and penalties (rows): the best pair is (0.1, -1).
SCALES = (0.05, 0.1, 0.2)
TABLE = {-2.0: (30, 26, 29), -1.0: (28, 21, 27), 0.0: (27, 24, 30), 1.0: (35, 33, 34), 2.0: (40, 39, 41)}


def test_penalties_are_searched_from_zero_and_the_best_pair_wins() -> None:
    calls: list[tuple[float, float]] = []

    def decode(scale: float, penalty: float) -> WerResult:
        calls.append((scale, penalty))
        return _result(TABLE[penalty][SCALES.index(scale)])

    sweep, results = sweep_scales_and_penalties("dev", SCALES, sorted(TABLE), decode, default=0.1)
    assert (sweep.best, sweep.penalty) == (0.1, -1.0) and min(sweep.errors) == 21
    # From 0: -1 and 1, then on to -2 (the best, -1, was at the edge); 2 is never decoded.
    assert [p for p, _ in sweep.penalty_errors] == [-2.0, -1.0, 0.0, 1.0]
    assert dict(sweep.penalty_errors) == {p: min(TABLE[p]) for p in (-2.0, -1.0, 0.0, 1.0)}
    assert all(p != 2.0 for _, p in calls) and len(calls) == len(set(calls)) == len(results)
    assert "word insertion penalty" in sweep.describe() and "best -1" in sweep.describe()
    again = ScaleSweep.from_dict(sweep.to_dict())
    assert again == sweep
    assert sweep.edges == () and "edge" not in sweep.describe()  # -1 lies inside what was tried, 0.1 inside the scales
    # Without -2 the best penalty, -1, is the grid's end: said so, and read back so.
    edge, _ = sweep_scales_and_penalties("dev", SCALES, (-1.0, 0.0, 1.0, 2.0), decode, default=0.1)
    assert edge.penalty == -1.0 and edge.edges == ("word insertion penalty",)
    assert "at the edge of decode.insertion_penalties" in edge.describe() and ScaleSweep.from_dict(edge.to_dict()).edges == edge.edges
    # Both grids' ends: a scale grid of 0.1 and 0.2 only, whose best (0.1) is its first point.
    both, _ = sweep_scales_and_penalties("dev", (0.1, 0.2), (-1.0, 0.0), decode, default=0.1)
    assert (both.best, both.penalty, both.edges) == (0.1, -1.0, ("acoustic scale", "word insertion penalty"))
    # Equal errors: the penalty nearest 0 is kept.
    tied, _ = sweep_scales_and_penalties("dev", (0.1,), (-1.0, 0.0, 1.0), lambda s, p: _result(20), default=0.1)
    assert tied.penalty == 0.0


def test_a_blank_penalty_sweep_names_itself_and_its_grid() -> None:
    """The same search over a blank penalty (CTC stage 7, decode.ctc_blank_penalties): the sweep
    says which penalty it searched, names that grid at its edge, and reads back so."""
    from asr_kd.report.tables import describe_grid_edges

    sweep, scale, penalty, _ = tune_decoding("dev", SCALES, (-1.0, 0.0, 1.0, 2.0), lambda s, p: _result(TABLE[p][SCALES.index(s)]),
                                             0.1, BLANK_PENALTY)
    assert (scale, penalty, sweep.edges) == (0.1, -1.0, ("blank penalty",))
    assert "blank penalty (each at its best scale" in sweep.describe() and "edge of decode.ctc_blank_penalties" in sweep.describe()
    assert "word insertion penalty" not in sweep.describe()
    assert sweep.to_dict()["penalty_name"] == "blank penalty" and ScaleSweep.from_dict(sweep.to_dict()) == sweep
    assert "widen decode.ctc_acoustic_scales or decode.ctc_blank_penalties): student (blank penalty)" in describe_grid_edges(
        [("student", sweep.edges)], "ctc_acoustic_scales", "ctc_blank_penalties")


def test_sweeps_without_a_penalty_read_and_write_as_before() -> None:
    old = {"part": "dev", "scales": [0.1, 0.2], "errors": [5, 4], "ref_words": 10, "best": 0.2}
    sweep = ScaleSweep.from_dict(old)
    assert sweep.penalty == 0.0 and sweep.penalty_errors == () and sweep.to_dict() == old
    # One value of each: one decoding, no sweep.
    seen = []
    assert tune_decoding("dev", (0.1,), (0.5,), lambda s, p: seen.append((s, p)) or _result(3))[:3] == (None, 0.1, 0.5) and seen == [(0.1, 0.5)]
    # Scales searched at one fixed penalty: the sweep records that penalty.
    sweep, scale, penalty, _ = tune_decoding("dev", SCALES, (-1.0,), lambda s, p: _result(TABLE[p][SCALES.index(s)]))
    assert (scale, penalty, sweep.penalty, sweep.penalty_errors) == (0.1, -1.0, -1.0, ())


def test_the_config_and_the_tables_say_so() -> None:
    with pytest.raises(ConfigError, match="insertion_penalties must be finite"):
        DecodeConfig(insertion_penalties=(float("nan"),))
    with pytest.raises(ConfigError, match="ctc_blank_penalties must be finite"):
        DecodeConfig(ctc_blank_penalties=(0.0, float("inf")))
    with pytest.raises(ConfigError, match="searches one of them beside the scale"):
        DecodeConfig(insertion_penalties=(0.0, 1.0), ctc_blank_penalties=(0.0, 2.0))
    DecodeConfig(insertion_penalties=(0.5,), ctc_blank_penalties=(0.0, 2.0))  # one fixed, one searched: fine
    with pytest.raises(ConfigError, match="ctc_blank_penalty \\(1\\) is set beside the grid"):
        DecodeConfig(ctc_blank_penalty=1.0, ctc_blank_penalties=(0.0, 2.0))
    text = describe_decoding(DecodeConfig(acoustic_scales=(0.1, 0.2), insertion_penalties=(1.0, -1.0, 0.0)), "dev-clean")
    assert "word insertion penalty" in text and "{-1, 0, 1}" in text
    assert "penalty" not in describe_decoding(DecodeConfig(acoustic_scales=(0.1, 0.2)), "dev-clean")


def test_a_system_tuned_with_a_penalty_is_refused_where_none_is_applied(tmp_path) -> None:
    """decode-part and the model directories (stage 9) reuse a system's dev-tuned acoustic scale
    but decode without a penalty: a system whose tuning chose one is refused, one that chose 0 is not."""
    import json

    from asr_kd.stages.decode_part import tuned_scale
    from asr_kd.stages.layout import RecipeLayout

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    layout.decode.mkdir(parents=True)
    sweep = {"part": "dev-clean", "scales": [0.08, 0.1], "errors": [5, 6], "ref_words": 10, "best": 0.08}
    (layout.decode / "table1.json").write_text(json.dumps({
        "baseline": {"dev-clean": {"acoustic_scale": 0.08, "sweep": sweep, "insertion_penalty": -0.5}},
        "distilled": {"dev-clean": {"acoustic_scale": 0.08, "sweep": sweep, "insertion_penalty": 0.0}},
    }))
    assert tuned_scale(layout, "distilled") == 0.08
    with pytest.raises(ConfigError, match=r"baseline was decoded with a word insertion penalty \(-0.5"):
        tuned_scale(layout, "baseline")


def test_a_fixed_penalty_without_a_sweep_is_refused_too_and_a_grid_by_decode_part(tmp_path) -> None:
    """A penalty given as one value (no dev search) still changed the recipe's numbers: decode-part
    and stage 9 refuse that system as well; decode-part refuses a penalty grid."""
    import json

    from asr_kd.stages.decode_part import decode_part, tuned_scale
    from asr_kd.stages.layout import RecipeLayout

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    layout.decode.mkdir(parents=True)
    (layout.decode / "table1.json").write_text(json.dumps({
        "baseline": {"dev-clean": {"acoustic_scale": 0.1, "sweep": None, "insertion_penalty": 1.0},
                     "test-clean": {"acoustic_scale": 0.1, "sweep": None, "insertion_penalty": 1.0}},
        "ensemble": {"test-clean": {"acoustic_scale": 0.1, "sweep": None, "insertion_penalty": 0.0}},
    }))
    assert tuned_scale(layout, "ensemble") is None
    with pytest.raises(ConfigError, match=r"baseline was decoded with a word insertion penalty \(1,"):
        tuned_scale(layout, "baseline")
    grid = DecodeConfig(insertion_penalties=(0.0, 1.0))
    with pytest.raises(ConfigError, match=r"decode-part does not apply a word insertion penalty \(decode.insertion_penalties \[0.0, 1.0\]\)"):
        decode_part(layout, tmp_path / "corpus", "dev-clean", ["tri"], grid)


def test_table1_names_a_chosen_penalty_in_its_dev_column() -> None:
    from asr_kd.report.tables import SystemScore, format_table1

    def row(name: str, penalty: float) -> SystemScore:
        return SystemScore(name, 0.4, 0.5, 10, 5, 2, 100, 0.41, dev_wer=0.48, acoustic_scales=(0.0833,), insertion_penalty=penalty)

    plain = format_table1(row("b", 0.0), row("e", 0.0), row("d", 0.0), num_teachers=4)
    assert "| Dev WER (acoustic scale) |" in plain and "48.00% (0.0833) |" in plain and "penalty" not in plain
    text = format_table1(row("b", 0.0), row("e", -0.5), row("d", 0.0), num_teachers=4)
    assert "| Dev WER (acoustic scale, word insertion penalty where not 0) |" in text
    assert "48.00% (0.0833, word insertion penalty -0.5) |" in text and text.count("word insertion penalty -0.5") == 1
    assert "grid edge" not in text and "edge of its searched grid" not in text


def test_table1_marks_a_dev_choice_at_the_edge_of_its_grid() -> None:
    from asr_kd.report.tables import SystemScore, format_table1

    def row(name: str, edges: tuple[str, ...] = ()) -> SystemScore:
        return SystemScore(name, 0.4, 0.5, 10, 5, 2, 100, 0.41, dev_wer=0.48, acoustic_scales=(0.0625,), grid_edges=edges)

    text = format_table1(row("b", ("acoustic scale",)), row("e"), row("d", ("acoustic scale", "word insertion penalty")),
                         num_teachers=4, extra_rows=[row("Compressed", ("word insertion penalty",)), row("Other")])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "48.00%" in line]
    assert [", grid edge)" in line for line in rows] == [True, False, True, True, False]
    sentence = next(line for line in text.splitlines() if line.startswith("Dev choice at the edge"))
    assert sentence.endswith(": Baseline (hard targets) (acoustic scale); Distilled single model (acoustic scale and word insertion "
                             "penalty); Compressed (word insertion penalty).")


def test_the_edge_sentence_names_only_the_rows_at_an_edge() -> None:
    from asr_kd.report.tables import describe_grid_edges

    inside = ScaleSweep("dev", (0.5, 0.7, 1.0), (9, 8, 9), 20, 0.7, 0.0, ((-1.0, 9), (0.0, 8), (1.0, 9)))
    scale_end = ScaleSweep("dev", (0.5, 0.7), (7, 8), 20, 0.5)
    penalty_end = dataclasses.replace(inside, penalty=1.0, penalty_errors=((0.0, 9), (1.0, 8)))
    rows = [("a", inside.edges), ("b", scale_end.edges), ("c", penalty_end.edges)]
    assert describe_grid_edges(rows, "ctc_acoustic_scales") == (
        "Dev choice at the edge of its searched grid (the best may lie beyond it; widen decode.ctc_acoustic_scales or "
        "decode.insertion_penalties): b (acoustic scale); c (word insertion penalty).")
    assert describe_grid_edges([("a", inside.edges)]) == "" and describe_grid_edges([]) == ""
