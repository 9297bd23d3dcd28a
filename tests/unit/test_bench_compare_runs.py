"""bench/compare_runs.py on hand-made stage-7 per-utterance counts (seeds averaged utterance by
utterance, B − A equal to the counts' rates, its interval, runs on different corpora refused), and
bench/decode_sharpness.py's skip without a finished run, and stage 7's own seed averaging
(per_utterance_counts) on the same counts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_compare_runs", ROOT / "bench" / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare_runs"] = mod
    spec.loader.exec_module(mod)
    return mod


def _write(exp: Path, name: str, part: str, table: dict[str, list[int]]) -> None:
    folder = exp / "decode" / f"{name}_{part}"
    folder.mkdir(parents=True)
    (folder / "per_utt.json").write_text(json.dumps(table))


def _table(errors: list[int], correct: list[int]) -> dict[str, list[int]]:
    # 40 utterances of 10 words and 100 aligned frames each.
    return {f"u{i:02d}": [e, 10, c, 100] for i, (e, c) in enumerate(zip(errors, correct))}


def test_b_minus_a_averages_seeds_and_matches_the_counts(tmp_path: Path) -> None:
    bench = _bench()
    rng = np.random.default_rng(0)
    a_err = rng.integers(3, 8, 40).tolist()
    a_cor = rng.integers(30, 40, 40).tolist()
    _write(tmp_path / "a", "distilled", "test-clean", _table(a_err, a_cor))
    # B: two seeds, each 2 errors fewer on every utterance than A (one seed 1 fewer, the other 3).
    _write(tmp_path / "b", "distilled", "test-clean", _table([e - 1 for e in a_err], [c + 5 for c in a_cor]))
    _write(tmp_path / "b", "distilled_seed1", "test-clean", _table([e - 3 for e in a_err], [c + 5 for c in a_cor]))
    # Stage 7's record groups B's two seeds; a leftover third seed's folder is not averaged in.
    (tmp_path / "b" / "decode" / "comparisons.json").write_text(json.dumps({"groups": {"distilled": ["distilled", "distilled_seed1"]}}))
    _write(tmp_path / "b", "distilled_seed2", "test-clean", _table([0] * 40, [100] * 40))
    a = bench.system_counts(tmp_path / "a" / "decode", "distilled", "test-clean")
    b = bench.system_counts(tmp_path / "b" / "decode", "distilled", "test-clean")
    assert a[2] == 1 and b[2] == 2
    r = bench.compare_system(a, b, "distilled on test-clean")
    assert r["wer_a"] == pytest.approx(100 * sum(a_err) / 400)
    assert r["wer_b"] == pytest.approx(100 * (sum(a_err) - 80) / 400)
    assert r["wer_diff"]["value"] == pytest.approx(-20.0)  # 2 errors per 10 words
    # Every utterance improves by exactly 2 of 10 words: every resample's difference is -20 points.
    assert r["wer_diff"]["low"] == pytest.approx(-20.0) and r["wer_diff"]["high"] == pytest.approx(-20.0)
    assert r["fa_diff"]["value"] == pytest.approx(5.0) and r["fa_diff"]["excludes_zero"]
    text = bench.section([("test-clean", "distilled", r)], "A run", "B run", "python bench/compare_runs.py ...", "T")
    assert "| test-clean | distilled | 1 / 2 | " in text and "-20.00 [-20.00, -20.00] | B better |" in text
    assert "+5.00 [+5.00, +5.00] | B better |" in text
    # A seed stage 7 grouped but whose counts are gone: refused with stage 7's own message, naming the file.
    (tmp_path / "b" / "decode" / "distilled_seed1_test-clean" / "per_utt.json").unlink()
    with pytest.raises(SystemExit, match=r"distilled_seed1_test-clean/per_utt.json: missing, so distilled_seed1 cannot be compared.* "
                                         r"\(in the run whose decodes are under .*/b/decode\)"):
        bench.system_counts(tmp_path / "b" / "decode", "distilled", "test-clean")


def test_sweep_folders_pair_their_seeds(tmp_path: Path) -> None:
    """Two stage-10 sweep folders: a T's seeds come from sweep.json's num_seeds (a leftover seed is
    not averaged in), seed k is compared with seed k, and a difference whose seed pairs disagree in
    sign is not called better even when its interval excludes 0."""
    bench = _bench()
    for d in ("temperature_sweep", "temperature_sweep_online"):
        (tmp_path / "exp" / d).mkdir(parents=True)
        (tmp_path / "exp" / d / "sweep.json").write_text(json.dumps({"num_seeds": 2, "rows": {}}))

    def write(d: str, name: str, errors: list[int]) -> None:
        folder = tmp_path / "exp" / d / f"{name}_test-clean"
        folder.mkdir()
        (folder / "per_utt.json").write_text(json.dumps(_table(errors, [30] * 40)))

    write("temperature_sweep", "distilled_T2", [5] * 40)
    write("temperature_sweep", "distilled_T2_seed1", [5] * 40)
    write("temperature_sweep", "distilled_T2_seed2", [0] * 40)  # not in sweep.json's 2 seeds
    # B: seed 0 four errors fewer per utterance, seed 1 one error more: the mean is 1.5 fewer.
    write("temperature_sweep_online", "distilled_T2", [1] * 40)
    write("temperature_sweep_online", "distilled_T2_seed1", [6] * 40)
    a = bench.system_counts(tmp_path / "exp" / "temperature_sweep", "distilled_T2", "test-clean")
    b = bench.system_counts(tmp_path / "exp" / "temperature_sweep_online", "distilled_T2", "test-clean")
    assert a[2] == b[2] == 2 and a[3] == [(50.0, 30.0), (50.0, 30.0)]
    r = bench.compare_system(a, b, "distilled_T2")
    assert r["wer_diff"]["value"] == pytest.approx(-15.0) and r["wer_diff"]["excludes_zero"]
    assert r["wer_seed_differences"] == pytest.approx([-40.0, 10.0]) and r["fa_seed_differences"] == [0.0, 0.0]
    assert bench._verdict(r["wer_diff"], True, r["wer_seed_differences"]) == "within seed noise (the seed pairs disagree in sign)"
    results = tmp_path / "RESULTS.md"
    assert bench.main(["--exp-a", str(tmp_path / "exp"), "--dir-a", "temperature_sweep", "--exp-b", str(tmp_path / "exp"),
                       "--dir-b", "temperature_sweep_online", "--systems", "distilled_T2", "distilled_T4", "--parts", "test-clean",
                       "--label-a", "stored", "--label-b", "online", "--title", "S", "--results", str(results)]) == 0
    assert ("| test-clean | distilled_T2 | 2 / 2 | 50.00% | 35.00% | -15.00 [-15.00, -15.00]<br>seed pairs -40.00, +10.00 | "
            "within seed noise (the seed pairs disagree in sign) |") in results.read_text()
    assert "| test-clean | distilled_T4 |" not in results.read_text()  # not decoded: skipped, said in the log


def test_agreeing_seed_pairs_decide_and_a_part_without_wer_keeps_its_frame_accuracy(tmp_path: Path) -> None:
    bench = _bench()
    for run, errs in (("a", (5, 5)), ("b", (1, 4))):  # B: seed 0 four errors fewer, seed 1 one fewer: every pair agrees
        for k, e in enumerate(errs):
            _write(tmp_path / run, "distilled" + (f"_seed{k}" if k else ""), "test-clean", _table([e] * 40, [30] * 40))
            # test-ood scored for frame accuracy only (stage 7's --decode-parts without it): no reference words
            _write(tmp_path / run, "distilled" + (f"_seed{k}" if k else ""), "test-ood",
                   {f"u{i:02d}": [0, 0, 30 + (5 if run == "b" else 0), 100] for i in range(40)})
        (tmp_path / run / "decode" / "comparisons.json").write_text(json.dumps({"groups": {"distilled": ["distilled", "distilled_seed1"]}}))
    a = bench.system_counts(tmp_path / "a" / "decode", "distilled", "test-clean")
    b = bench.system_counts(tmp_path / "b" / "decode", "distilled", "test-clean")
    r = bench.compare_system(a, b, "distilled")
    assert r["wer_seed_differences"] == pytest.approx([-40.0, -10.0])
    assert bench._verdict(r["wer_diff"], True, r["wer_seed_differences"]) == "B better"
    ood = bench.compare_system(bench.system_counts(tmp_path / "a" / "decode", "distilled", "test-ood"),
                               bench.system_counts(tmp_path / "b" / "decode", "distilled", "test-ood"), "distilled on test-ood")
    assert ood["wer_diff"] is None and ood["wer_a"] is None and ood["wer_seed_differences"] == []
    assert ood["fa_diff"]["value"] == pytest.approx(5.0) and ood["fa_seed_differences"] == pytest.approx([5.0, 5.0])
    text = bench.section([("test-ood", "distilled", ood)], "A", "B", "cmd", "T")
    assert "| test-ood | distilled | 2 / 2 | not decoded | not decoded | not decoded | not decoded | 30.0% | 35.0% | +5.00 [+5.00, +5.00]" in text


def test_dev_with_only_the_first_seed_decoded_has_no_wer_and_keeps_its_frame_accuracy(tmp_path: Path) -> None:
    """Stage 7 decodes dev for a student's first seed and scores the others for frame accuracy only:
    compared with a one-seed run, the WER is "not decoded" (the other seeds' zero errors never
    enter it) and the frame accuracy is compared."""
    bench = _bench()
    _write(tmp_path / "a", "distilled", "dev-clean", _table([5] * 40, [30] * 40))  # run A: one seed, decoded
    _write(tmp_path / "b", "distilled", "dev-clean", _table([5] * 40, [30] * 40))
    _write(tmp_path / "b", "distilled_seed1", "dev-clean", {f"u{i:02d}": [0, 0, 40, 100] for i in range(40)})
    (tmp_path / "b" / "decode" / "comparisons.json").write_text(json.dumps({"groups": {"distilled": ["distilled", "distilled_seed1"]}}))
    r = bench.compare_system(bench.system_counts(tmp_path / "a" / "decode", "distilled", "dev-clean"),
                             bench.system_counts(tmp_path / "b" / "decode", "distilled", "dev-clean"), "distilled on dev-clean")
    assert r["wer_diff"] is None and r["wer_a"] is None and r["wer_b"] is None
    assert r["fa_diff"]["value"] == pytest.approx(5.0) and r["seeds_b"] == 2


def test_noise_is_called_noise(tmp_path: Path) -> None:
    bench = _bench()
    errs = [5] * 40
    _write(tmp_path / "a", "baseline", "test-clean", _table(errs, [30] * 40))
    # B: one more error on half the utterances, one fewer on the other half: no difference overall.
    _write(tmp_path / "b", "baseline", "test-clean", _table([6, 4] * 20, [30] * 40))
    r = bench.compare_system(bench.system_counts(tmp_path / "a" / "decode", "baseline", "test-clean"),
                             bench.system_counts(tmp_path / "b" / "decode", "baseline", "test-clean"), "baseline")
    assert r["wer_diff"]["value"] == pytest.approx(0.0) and not r["wer_diff"]["excludes_zero"]
    assert bench._verdict(r["wer_diff"], True) == "within noise"


def test_runs_on_different_corpora_are_refused(tmp_path: Path) -> None:
    bench = _bench()
    _write(tmp_path / "a", "ensemble", "test-clean", _table([5] * 40, [30] * 40))
    other = _table([5] * 40, [30] * 40)
    other["u07"] = [5, 11, 30, 100]  # another reference
    _write(tmp_path / "b", "ensemble", "test-clean", other)
    a = bench.system_counts(tmp_path / "a" / "decode", "ensemble", "test-clean")
    b = bench.system_counts(tmp_path / "b" / "decode", "ensemble", "test-clean")
    with pytest.raises(SystemExit, match="reference words differ at utterance u07"):
        bench.compare_system(a, b, "ensemble on test-clean")
    assert bench.system_counts(tmp_path / "a" / "decode", "compressed", "test-clean") is None


def test_main_skips_without_runs_and_writes_its_section(tmp_path: Path, capsys) -> None:
    bench = _bench()
    results = tmp_path / "RESULTS.md"
    assert bench.main(["--exp-a", str(tmp_path / "x"), "--exp-b", str(tmp_path / "y"), "--label-a", "a", "--label-b", "b",
                       "--results", str(results)]) == 0
    assert "nothing to compare" in capsys.readouterr().out and not results.exists()
    _write(tmp_path / "a", "ensemble", "test-clean", _table([5] * 40, [30] * 40))
    _write(tmp_path / "b", "ensemble", "test-clean", _table([4] * 40, [30] * 40))
    assert bench.main(["--exp-a", str(tmp_path / "a"), "--exp-b", str(tmp_path / "b"), "--label-a", "10 epochs",
                       "--label-b", "30 epochs", "--parts", "test-clean", "--title", "AB", "--results", str(results)]) == 0
    text = results.read_text()
    assert "## AB" in text and "| test-clean | ensemble | 1 / 1 | 50.00% | 40.00% | -10.00 [-10.00, -10.00] | B better |" in text
    assert "--label-a '10 epochs'" in text  # a command that pastes into a shell


def test_decode_sharpness_skips_without_a_run_and_leaves_results_alone(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_decode_sharpness", ROOT / "bench" / "decode_sharpness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_decode_sharpness"] = mod
    spec.loader.exec_module(mod)
    results = tmp_path / "RESULTS.md"
    assert mod.main(["--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--results", str(results)]) == 0
    out = capsys.readouterr()
    assert "decode_sharpness" in out.out + out.err and not results.exists()
    with pytest.raises(SystemExit):
        mod.main(["--repeats", "0", "--exp", str(tmp_path / "exp")])


def test_stage7_per_utterance_counts_average_seeds_by_utterance_and_refuse_other_utterances(tmp_path: Path) -> None:
    from asr_kd.errors import DataError
    from asr_kd.stages.layout import RecipeLayout
    from asr_kd.stages.s7_decode import per_utterance_counts

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    first, second = _table([2] * 40, [50] * 40), _table([4] * 40, [70] * 40)
    second = dict(reversed(list(second.items())))  # the same utterances, written in another order
    second["u00"] = [8, 10, 90, 100]
    _write(layout.exp_dir, "distilled", "test-clean", first)
    _write(layout.exp_dir, "distilled_seed1", "test-clean", second)
    counts = per_utterance_counts(layout, ["distilled", "distilled_seed1"], "test-clean")
    assert counts["ids"][0] == "u00" and counts["errors"][0] == 5.0 and counts["correct"][0] == 70.0
    assert counts["errors"][1:].tolist() == [3.0] * 39 and counts["ref_words"].sum() == 400
    del second["u39"]
    (layout.exp_dir / "decode" / "distilled_seed1_test-clean" / "per_utt.json").write_text(json.dumps(second))
    with pytest.raises(DataError, match=r"distilled_seed1_test-clean/per_utt.json: its utterances differ"):
        per_utterance_counts(layout, ["distilled", "distilled_seed1"], "test-clean")
    # A seed scored for frame accuracy only (no reference words, as stage 7 scores dev for seeds > 0):
    # the frame accuracy is averaged, and the group has no WER (its zeros are never averaged into one).
    fa_only = {u: [0, 0, c, f] for u, (_, _, c, f) in _table([4] * 40, [70] * 40).items()}
    (layout.exp_dir / "decode" / "distilled_seed1_test-clean" / "per_utt.json").write_text(json.dumps(fa_only))
    counts = per_utterance_counts(layout, ["distilled", "distilled_seed1"], "test-clean")
    assert counts["ref_words"].sum() == 0 and counts["correct"].tolist() == [60.0] * 40 and counts["frames"].sum() == 4000
    # Aligned frames, or reference words of two decoded seeds, that differ: refused in one line.
    for bad, what in (({**first, "u05": [2, 10, 50, 90]}, "aligned-frame"), ({**first, "u05": [2, 12, 50, 100]}, "reference-word")):
        (layout.exp_dir / "decode" / "distilled_seed1_test-clean" / "per_utt.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=rf"distilled_seed1_test-clean/per_utt.json: its {what} counts differ from .*distilled_test-clean"):
            per_utterance_counts(layout, ["distilled", "distilled_seed1"], "test-clean")
    # A member that was never decoded: one line naming its file and the stage to rerun.
    with pytest.raises(DataError, match=r"distilled_seed2_test-clean/per_utt.json: missing, so distilled_seed2 cannot be compared.*rerun"):
        per_utterance_counts(layout, ["distilled", "distilled_seed2"], "test-clean")
