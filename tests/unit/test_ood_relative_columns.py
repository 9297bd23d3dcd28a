"""The out-of-domain column of the GMM table (stage 3) and of the CTC results table: each row's
relative WER increase from the test part to the out-of-domain part, in Table 1's format."""

from __future__ import annotations

from types import SimpleNamespace

from asr_kd.config import CtcConfig, DecodeConfig
from asr_kd.report.tables import ood_relative_head, relative_change
from asr_kd.stages.ctc_s7_decode import _render
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.s3_gmm import Stage3Summary, results_section


def test_relative_change_is_a_signed_whole_percentage() -> None:
    assert relative_change(0.75, 0.50) == "+50%"
    assert relative_change(0.20, 0.30) == "-33%"
    assert relative_change(0.30, 0.30) == "+0%"
    assert relative_change(None, 0.30) == "" and relative_change(0.30, None) == ""  # a part not decoded: an empty cell
    assert relative_change(0.10, 0.0) == "n/a"
    assert ood_relative_head("WER increase", "test-other") == "Relative WER increase, test-other vs test"


def _wer(wer: float) -> dict[str, float]:
    return {"wer": wer, "substitutions": 1, "deletions": 2, "insertions": 3, "ref_words": 100, "failed": 0}


def _summary() -> Stage3Summary:
    parts = {p: {"cuts": 2, "frames": 10, "skipped": 0} for p in ("train", "dev-clean", "test-clean", "test-ood")}
    wers = {"mono": {"dev-clean": _wer(0.4), "test-clean": _wer(0.5), "test-ood": _wer(0.75)},
            "tri": {"dev-clean": _wer(0.3), "test-clean": _wer(0.4)}}  # tri: test-ood not decoded
    systems = {"mono": {"pdfs": 10, "gaussians": 20}, "tri": {"pdfs": 30, "gaussians": 40}}
    return Stage3Summary("exp", 30, systems, parts, wers, {}, {}, train_part="train", corpus="c")


def test_gmm_table_has_the_relative_wer_increase_after_the_wer_columns() -> None:
    text = results_section(_summary(), "cmd", "test-clean", "test-ood")
    head = next(line for line in text.splitlines() if line.startswith("| system |"))
    assert head == ("| system | senones | Gaussians | WER dev-clean | WER test-clean | WER test-ood | "
                    "Relative WER increase, test-ood vs test | acoustic scale |")
    mono = next(line for line in text.splitlines() if line.startswith("| mono |"))
    assert mono.endswith("| 75.00% (S 1, D 2, I 3) | +50% | - |")
    tri = next(line for line in text.splitlines() if line.startswith("| tri |"))
    assert tri.endswith("| 40.00% (S 1, D 2, I 3) | - |  | - |")  # no test-ood WER: the cell stays empty
    assert all(line.count("|") == head.count("|") for line in (mono, tri, text.splitlines()[text.splitlines().index(head) + 1]))


def test_gmm_table_without_an_ood_part_keeps_its_columns() -> None:
    for text in (results_section(_summary(), "cmd"), results_section(_summary(), "cmd", "test-clean", "test-other")):
        assert "Relative" not in text
        assert "| system | senones | Gaussians | WER dev-clean | WER test-clean | WER test-ood | acoustic scale |" in text


def _ctc_scores() -> dict:
    def entry(hlg: float) -> dict:
        return {"greedy_ter": 0.2, "beam_ter": 0.19, "hlg_wer": hlg, "acoustic_scale": 0.7}

    return {"teacher0": {"dev-clean": entry(0.3), "test-clean": entry(0.5), "test-ood": entry(0.75)},
            # A student of two seeds: means 0.4 on test-clean, 0.5 on test-ood -> +25%.
            "student: baseline": {"dev-clean": entry(0.3), "test-clean": entry(0.3), "test-ood": entry(0.4)},
            "student: baseline_seed1": {"dev-clean": entry(0.3), "test-clean": entry(0.5), "test-ood": entry(0.6)}}


def _ctc_table(layout: RecipeLayout) -> list[str]:
    units = SimpleNamespace(kind="phone", num_tokens=42)
    rows = {"teacher0": ["teacher0"], "student: baseline": ["student: baseline", "student: baseline_seed1"]}
    text = _render(layout, CtcConfig(), DecodeConfig(), units, "", rows, _ctc_scores(), {})  # type: ignore[arg-type]
    return [line for line in text.splitlines() if line.startswith("|")]


def test_ctc_table_gives_the_relative_hlg_wer_increase_on_the_ood_line(tmp_path) -> None:
    table = _ctc_table(RecipeLayout(tmp_path / "d", tmp_path / "e", ood_part="test-ood"))
    assert table[0] == ("| System | Seeds | Part | Greedy TER | Beam-8 TER | HLG WER | Relative HLG WER increase, test-ood vs test | Scale |")
    assert table[1] == "|" + "---|" * 8
    assert "| teacher0 | 1 | test-ood | 20.0% | 19.0% | 75.0% | +50% | 0.7 |" in table
    assert "| teacher0 | 1 | test-clean | 20.0% | 19.0% | 50.0% |  | 0.7 |" in table  # only the ood line has the cell
    assert "| student: baseline | 2 | test-ood | 20.0% ± 0.0 | 19.0% ± 0.0 | 50.0% ± 14.1 | +25% | 0.7 |" in table
    assert all(line.count("|") == 9 for line in table)


def test_ctc_table_without_an_ood_part_keeps_its_columns(tmp_path) -> None:
    table = _ctc_table(RecipeLayout(tmp_path / "d", tmp_path / "e"))
    assert table[0] == "| System | Seeds | Part | Greedy TER | Beam-8 TER | HLG WER | Scale |"
    assert all(line.count("|") == 8 for line in table)
