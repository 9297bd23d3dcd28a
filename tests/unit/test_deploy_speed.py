"""Deployment search pruning: the grid, the choice on dev, and the model directory's decoding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from asr_kd.bin.cmd_deploy import decode_config_for
from asr_kd.config import DecodeConfig, FeatureConfig
from asr_kd.deploy.model_dir import MODEL_JSON, ModelSpec
from asr_kd.deploy.speed import SearchPoint, SearchSetting, choose_setting, parse_search_grid, with_setting
from asr_kd.errors import ConfigError

REF = SearchSetting(11.0, 2000)


def _point(beam: float, active: int, errors: int, rtf: float = 0.01) -> SearchPoint:
    return SearchPoint(SearchSetting(beam, active), errors, 1000, rtf)


def test_grid_parses_and_names_a_bad_item() -> None:
    assert parse_search_grid(" 10:1000, 9:500 ,") == (SearchSetting(10.0, 1000), SearchSetting(9.0, 500))
    with pytest.raises(ConfigError, match=r"search grid item '10-1000': expected BEAM:MAX_ACTIVE"):
        parse_search_grid("10-1000")
    with pytest.raises(ConfigError, match=r"search grid item '0:500': the beam must be > 0"):
        parse_search_grid("0:500")
    with pytest.raises(ConfigError, match="holds no BEAM:MAX_ACTIVE"):
        parse_search_grid(" , ")


def test_the_narrowest_setting_within_tolerance_is_chosen() -> None:
    points = [_point(11, 2000, 500), _point(10, 1000, 505), _point(9, 1000, 510), _point(9, 500, 511), _point(8, 500, 540)]
    # 2% of 500 errors: at most 510. 9/500 has 511: out; the narrowest left is 9/1000.
    assert choose_setting(points, REF, 0.02).setting == SearchSetting(9, 1000)
    # Speed plays no part: a slower-measured narrow setting is still the choice.
    timed = [dataclasses.replace(p, search_rtf=1.0 / p.setting.max_active) for p in points]
    assert choose_setting(timed, REF, 0.03).setting == SearchSetting(9, 500)
    # Nothing narrower qualifies: the tables' own setting.
    assert choose_setting([_point(11, 2000, 500), _point(8, 300, 600)], REF, 0.02).setting == REF
    # A setting with fewer errors than the reference always qualifies.
    assert choose_setting([_point(11, 2000, 500), _point(8, 300, 499)], REF, 0.0).setting == SearchSetting(8, 300)


def _detailed(setting: SearchSetting, errors_per_utt: list[int], words: int = 10) -> SearchPoint:
    """A point over len(errors_per_utt) utterances of ``words`` words, the first ``e`` of each wrong."""
    from asr_kd.metrics.wer import compute_wer

    refs = {f"u{i:03d}": " ".join(f"w{j}" for j in range(words)) for i in range(len(errors_per_utt))}
    hyps = {u: " ".join(("x" if j < e else f"w{j}") for j in range(words)) for (u, e) in zip(sorted(refs), errors_per_utt)}
    wer = compute_wer(refs, hyps)
    return SearchPoint(setting, wer.errors, wer.ref_words, 0.01, details=wer)


def test_dev_must_show_a_narrow_setting_is_no_worse_not_just_look_it() -> None:
    from asr_kd.deploy.speed import compare_to_reference, speed_markdown, SpeedResult

    base = [5] * 100  # 500 errors of 1000 words; 2% allows 10 more errors, 1.0 WER point
    ref = _detailed(REF, base)
    # +9 errors, piled on 3 utterances: the point estimate is within 2%, but the paired interval's
    # upper end is not (dev cannot tell this from a real loss): refused.
    lucky = _detailed(SearchSetting(9, 1000), [8, 8, 8] + base[3:])
    # +4 errors spread over 4 utterances: shown to be within 2%, and narrower than the reference: chosen.
    steady = _detailed(SearchSetting(10, 1500), [6, 6, 6, 6] + base[4:])
    points = compare_to_reference([ref, lucky, steady], REF)
    assert lucky.errors - ref.errors == 9 and points[1].versus_reference.high > 0.01 >= points[2].versus_reference.high
    assert choose_setting([ref, lucky, steady], REF, 0.02).setting == SearchSetting(10, 1500)
    # Without per-utterance details the old point-estimate rule applies, and the lucky one wins.
    assert choose_setting([_point(11, 2000, 500), _point(9, 1000, 509), _point(10, 1500, 504)], REF, 0.02).setting == SearchSetting(9, 1000)
    # The section prints each setting's dev difference with its interval.
    chosen = choose_setting(points, REF, 0.02)
    result = SpeedResult(REF, points, chosen, 0.001, 0.001, ref.details, steady.details, 0.02, 0.01)
    text = speed_markdown(result, "s", "dev", "test")
    assert f"| 9 | 1000 | 50.90% (509/1000) | +0.90 [{100 * points[1].versus_reference.low:+.2f}, {100 * points[1].versus_reference.high:+.2f}] |" in text
    assert "within 1.00 points" in text


def test_a_tolerance_in_points_allows_that_many_points_at_any_wer() -> None:
    from asr_kd.deploy.speed import compare_to_reference, tolerance_for_points

    # 250 errors of 1000 words (25% WER): 1 point is 10 more errors, 4% of the reference's.
    ref = _point(11, 2000, 250)
    points = [_point(10, 1500, 260), ref, _point(9, 500, 261)]
    assert tolerance_for_points(1.0, points, REF) == pytest.approx(0.04)
    assert choose_setting(points, REF, tolerance_for_points(1.0, points, REF)).setting == SearchSetting(10, 1500)
    # At 60% WER the same 1 point is 10 errors too (1.67% relative), where 2% relative would allow 12.
    ref = _point(11, 2000, 600)
    points = [ref, _point(10, 1500, 610), _point(9, 500, 611)]
    assert choose_setting(points, REF, tolerance_for_points(1.0, points, REF)).setting == SearchSetting(10, 1500)
    assert choose_setting(points, REF, 0.02).setting == SearchSetting(9, 500)
    # The paired interval's upper end is held to the same points.
    base = [5] * 100
    detailed = compare_to_reference([_detailed(REF, base), _detailed(SearchSetting(10, 1500), [6, 6, 6, 6] + base[4:])], REF)
    high = detailed[1].versus_reference.high
    assert choose_setting(detailed, REF, tolerance_for_points(100 * high + 0.001, detailed, REF)).setting == SearchSetting(10, 1500)
    assert choose_setting(detailed, REF, tolerance_for_points(100 * high - 0.01, detailed, REF)).setting == REF
    with pytest.raises(ConfigError, match="tolerance in WER points must be >= 0"):
        tolerance_for_points(-1.0, points, REF)
    with pytest.raises(ConfigError, match="must include the reference setting"):
        tolerance_for_points(1.0, points[1:], REF)


def test_choice_needs_the_reference_and_a_sane_tolerance() -> None:
    with pytest.raises(ConfigError, match=r"must include the reference setting \(beam 11, max-active 2000\)"):
        choose_setting([_point(10, 1000, 5)], REF)
    with pytest.raises(ConfigError, match="tolerance must be >= 0"):
        choose_setting([_point(11, 2000, 5)], REF, -0.1)
    # No error at the reference: one error stands in for the denominator, so 2% allows none.
    assert choose_setting([_point(11, 2000, 0), _point(9, 500, 1)], REF, 0.02).setting == REF


def test_min_active_stays_below_max_active() -> None:
    cfg = with_setting(DecodeConfig(min_active=200), SearchSetting(8.0, 150))
    assert (cfg.beam, cfg.max_active, cfg.min_active) == (8.0, 150, 149)
    assert with_setting(DecodeConfig(min_active=200), SearchSetting(8.0, 500)).min_active == 200
    # `transcribe --max-active 1` is named as such, not as a min-active of 0 the user never set.
    with pytest.raises(ConfigError, match="max-active must be >= 2 .* got 1"):
        with_setting(DecodeConfig(), SearchSetting(8.0, 1))
    # Kaldi's decoders abort on min_active == max_active; the config says so in one line first.
    with pytest.raises(ConfigError, match="1 <= min_active < max_active, got 200, 200"):
        DecodeConfig(min_active=200, max_active=200)


def test_transcribe_decodes_with_the_model_directorys_settings(tmp_path: Path) -> None:
    recorded = {"beam": 11.0, "max_active": 2000, "min_active": 200, "acoustic_scale": 0.125}
    spec = ModelSpec("hybrid", FeatureConfig(), "utterance", decoding=recorded)
    (tmp_path / MODEL_JSON).write_text(spec.to_json())
    cfg = decode_config_for(tmp_path)
    # Not DecodeConfig's defaults (beam 13, 7000, scale 0.1): what the recipe's tables used.
    assert (cfg.beam, cfg.max_active, cfg.acoustic_scale) == (11.0, 2000, 0.125)
    cfg = decode_config_for(tmp_path, beam=9.0, max_active=100)
    assert (cfg.beam, cfg.max_active, cfg.min_active, cfg.acoustic_scale) == (9.0, 100, 99, 0.125)
    assert decode_config_for(tmp_path, acoustic_scale=0.2).acoustic_scale == 0.2
    # A CTC model directory records its HLG scale; --acoustic-scale replaces that one.
    ctc = tmp_path / "ctc"
    ctc.mkdir()
    (ctc / MODEL_JSON).write_text(ModelSpec("ctc", FeatureConfig(), "utterance", 4, units="phone",
                                            decoding={"beam": 11.0, "max_active": 2000, "ctc_acoustic_scale": 0.5}).to_json())
    cfg = decode_config_for(ctc)
    assert (cfg.beam, cfg.max_active, cfg.ctc_acoustic_scale) == (11.0, 2000, 0.5)
    cfg = decode_config_for(ctc, acoustic_scale=2.0)
    assert (cfg.ctc_acoustic_scale, cfg.acoustic_scale) == (2.0, DecodeConfig().acoustic_scale)


def test_speed_options_are_refused_before_anything_is_measured(tmp_path: Path, capsys) -> None:
    from asr_kd.bin.cli import main as cli_main

    # No model directory exists here: a refusal about them would mean the options were checked late.
    base = ["deploy-report", "--test-manifest", str(tmp_path / "cuts_test.jsonl.gz"), "--system", f"int8={tmp_path / 'none'}@onnx-int8"]
    cases = [
        (["--dev-manifest", "dev.jsonl.gz"], "--dev-manifest applies to the speed measurement: add --speed NAME@BACKEND"),
        (["--search-grid", "9:500"], "--search-grid applies to the speed measurement"),
        (["--speed", "int8@onnx-int8"], "the deployment search is chosen on dev: pass the dev part's cuts (--dev-manifest)"),
        (["--speed", "int8@onnx-int8", "--dev-manifest", "d.jsonl.gz", "--search-tolerance", "-0.1"],
         "the search tolerance must be >= 0, got -0.1"),
        (["--speed", "int8@onnx-int8", "--dev-manifest", "d.jsonl.gz"], "--dev-manifest d.jsonl.gz does not exist"),
        (["--rtf-target", "0.01"], "--rtf-target applies to the speed measurement"),
        (["--speed", "int8"], "--speed int8: no such --system"),  # BACKEND left out means torch
        (["--speed", "int8@onnx-int8", "--speed", "ctc@onnx-int8"], "--speed ctc@onnx-int8: no such --system"),  # each one checked
        (["--speed", "int8@onnx-int8", "--dev-manifest", "d.jsonl.gz", "--rtf-target", "-1"], "the end-to-end RTF target must be >= 0"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert cli_main(base + extra) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_an_empty_part_is_named_not_divided_by(tmp_path: Path) -> None:
    from lhotse import CutSet

    from asr_kd.deploy.report import load_test_audio
    from asr_kd.errors import DataError

    empty = tmp_path / "cuts_dev-clean.jsonl.gz"
    CutSet([]).to_file(empty)
    with pytest.raises(DataError, match=rf"manifest {empty} holds no cut or recording; pass the manifest of a part that has audio"):
        load_test_audio(empty, 16000)


def test_failed_searches_are_counted_in_the_section() -> None:
    from asr_kd.deploy.speed import SpeedResult, speed_markdown
    from asr_kd.metrics.wer import compute_wer

    refs = {"u1": "a b c", "u2": "d e", "u3": "f"}
    full = compute_wer(refs, refs)
    one_lost = compute_wer(refs, {"u1": "a b c", "u3": "f"})  # u2's search failed: two deletions
    points = [SearchPoint(REF, 0, 6, 0.02), SearchPoint(SearchSetting(8, 300), 2, 6, 0.01, failed=1)]
    result = SpeedResult(REF, points, points[1], 0.001, 0.001, full, one_lost, 0.02, 0.01, failed_reference=0, failed_chosen=1)
    text = speed_markdown(result, "distilled (onnx-int8)", "dev-clean", "test-clean")
    assert "| 8 (chosen) | 300 | 33.33% (2/6, 1 failed) | – | 0.0100 |" in text
    assert "| 11 (tables) | 2000 | 0.00% (0/6) | – | 0.0200 |" in text
    assert "The search failed on 1 test utterance(s) at the chosen setting and 0 at the tables'" in text
    clean = dataclasses.replace(result, dev_points=[points[0], dataclasses.replace(points[1], failed=0)], failed_chosen=0, test_chosen=full)
    assert "failed" not in speed_markdown(clean, "s", "dev", "test")


def test_when_nothing_narrower_passes_the_tables_setting_is_reported_once() -> None:
    from asr_kd.deploy.speed import SpeedResult, speed_markdown
    from asr_kd.metrics.wer import compute_wer

    refs = {"u1": "a b c", "u2": "d e"}
    wer = compute_wer(refs, {"u1": "a b c", "u2": "d x"})
    points = [SearchPoint(REF, 1, 5, 0.02), SearchPoint(SearchSetting(8, 300), 3, 5, 0.01)]
    text = speed_markdown(SpeedResult(REF, points, points[0], 0.0004, 0.0005, wer, wer, 0.025, 0.024), "s (onnx-int8)", "dev", "test")
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"No narrower setting passed on dev, so the tables' {REF} stays. On test: end-to-end RTF per core **")
    assert "(target at most 0.02: NOT met). Test WER 20.00%. `asr-kd transcribe` decodes with it" in last
    assert "against" not in last and "+0.00 [+0.00, +0.00]" not in text


def test_a_search_already_fast_enough_is_not_narrowed() -> None:
    from asr_kd.deploy.speed import SpeedResult, speed_markdown
    from asr_kd.metrics.wer import compute_wer

    refs = {"u1": "a b c", "u2": "d e"}
    wer = compute_wer(refs, refs)
    points = [SearchPoint(REF, 0, 5, 0.0017), SearchPoint(SearchSetting(9, 500), 0, 5, 0.0015)]
    result = SpeedResult(REF, points, points[0], 0.0005, 0.0012, wer, wer, 0.0016, 0.0016,
                         dev_end_to_end_reference=0.0034, reference_meets_target=True)
    last = speed_markdown(result, "ctc-frame (onnx-int8)", "dev", "test").strip().splitlines()[-1]
    assert last.startswith(f"The tables' {REF} already meets the target on dev (end to end 0.0034), so it stays: ")
    assert "end-to-end RTF per core **0.0033** = features 0.0005 + acoustic model 0.0012 + search 0.0016 (target at most 0.02: met)" in last
    assert "No narrower setting passed" not in last and "(chosen)" not in speed_markdown(result, "s", "dev", "test")
    # The verdict and the rule name the target asked for; target 0 (always narrow) is judged against the default.
    strict = speed_markdown(result, "s", "dev", "test", target=0.003)
    assert "misses the end-to-end target (0.003) on dev" in strict and "(target at most 0.003: NOT met)" in strict
    always = speed_markdown(dataclasses.replace(result, reference_meets_target=False), "s", "dev", "test", target=0)
    assert "narrowed as far as dev allows" in always and "(target at most 0.02: met)" in always


def test_an_ensemble_refuses_members_fed_other_features(tmp_path: Path) -> None:
    import numpy as np

    from asr_kd.deploy.acoustic import ensemble_acoustic
    from asr_kd.deploy.model_dir import TID2PDF_FILE

    dirs = {}
    for name, features in (("a", FeatureConfig()), ("b", FeatureConfig(num_mel_bins=80))):
        d = tmp_path / name
        d.mkdir()
        (d / MODEL_JSON).write_text(ModelSpec("hybrid", features, "utterance").to_json())
        np.save(d / TID2PDF_FILE, np.arange(10, dtype=np.int32))
        dirs[name] = d
    # Checked before any network loads (these directories hold none).
    with pytest.raises(ConfigError, match=rf"{dirs['b']} and {dirs['a']} normalise different features"):
        ensemble_acoustic([dirs["a"], dirs["b"]])
    (dirs["b"] / MODEL_JSON).write_text(ModelSpec("hybrid", FeatureConfig(), "utterance").to_json())
    np.save(dirs["b"] / TID2PDF_FILE, np.arange(1, 11, dtype=np.int32))
    with pytest.raises(ConfigError, match="model different senones"):
        ensemble_acoustic([dirs["a"], dirs["b"]])
