"""bench/hybrid_capacity.py on the 'tiny' recipe's stage 3: two variants trained for one epoch; the
numbers it reports are the ones an independent scoring of the saved models gives, and it writes
nothing into the recipe's folders."""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
from pathlib import Path

import pytest
from lhotse import CutSet

from asr_kd.config import DecodeConfig, load_config
from asr_kd.data.alignments import load_alignment
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch
from asr_kd.decode.priors import load_priors
from asr_kd.gmm.train import GmmSystem
from asr_kd.lang.symbols import SymbolTable
from asr_kd.metrics.frame_accuracy import corpus_frame_accuracy
from asr_kd.metrics.wer import compute_wer
from asr_kd.stages.common import read_senones
from asr_kd.stages.layout import RecipeLayout
from asr_kd.train.capacity import frame_scores, spread_sample
from asr_kd.train.frame_classifier import load_frame_classifier, predict_log_posteriors
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
DECODE_TINY = REPO_ROOT / "recipes" / "librispeech" / "conf" / "decode_tiny.yaml"


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folders`` with its size and modification time."""
    return {str(Path(d) / f): (os.stat(Path(d) / f).st_size, os.stat(Path(d) / f).st_mtime_ns)
            for folder in folders for d, _, files in os.walk(folder) for f in files}


def _bench(*args: str) -> int:
    main = runpy.run_path(str(REPO_ROOT / "bench" / "hybrid_capacity.py"))["main"]
    return main(list(args))


@pytest.mark.timeout(1800)
def test_the_bench_reports_what_its_models_score(tiny_stage3, tmp_path: Path) -> None:
    data, _, exp = tiny_stage3
    before = _snapshot(data, exp)
    out, results = tmp_path / "out", tmp_path / "RESULTS.md"
    args = ["--data", str(data), "--exp", str(exp), "--out", str(out), "--dnn-config", "tiny",
            "--train-config", str(REPO_ROOT / "egs" / "tiny_kd" / "conf" / "train.yaml"), "--decode-config", str(DECODE_TINY),
            "--variant", "base:num_epochs=1", "--variant", "deep:num_epochs=1,hidden_dim=96,num_hidden_layers=3,label_smoothing=0.1",
            "--train-sample", "12", "--results", str(results)]
    assert _bench(*args) == 0
    assert _snapshot(data, exp) == before  # --data and --exp are only read

    report = json.loads((out / "hybrid_capacity.json").read_text())
    runs = {r["run"]: r for r in report["runs"]}
    assert list(runs) == ["base", "deep"]
    layout = RecipeLayout(data, exp)
    senones = read_senones(layout)
    decode = load_config(DecodeConfig, DECODE_TINY)
    hclg, tm = load_hclg(senones.graph), GmmSystem.load(senones.model).tm
    priors, words = load_priors(layout.log_priors, tm.num_pdfs), SymbolTable.from_file(senones.graph / "words.txt")
    gmm_test = json.loads(layout.gmm_summary.read_text())["wers"]["tri"]["test-clean"]["wer"]
    dev_cuts = CutSet.from_cuts(layout.open_cuts(layout.ali_cuts("dev-clean")))
    test_cuts = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts("test-clean")))
    for name, r in runs.items():
        model = load_frame_classifier(out / name / "best.pt")
        # Dev frame accuracy: what training's own scorer gives the saved model.
        dev = frame_scores(model, dev_cuts, layout.open_cmvn("dev-clean"), senones.num_senones)
        assert r["dev"]["frame_accuracy"] == pytest.approx(dev["frame_accuracy"], abs=1e-12)
        assert r["training"]["best_dev_frame_accuracy"] == pytest.approx(dev["frame_accuracy"], abs=1e-12)
        assert r["training"]["epochs"] == 1 and r["training"]["cpu_seconds_per_epoch"] > 0
        # Train-sample frame accuracy: the arg-max of the model's posteriors on the fixed sample.
        sample = spread_sample(layout.open_cuts(layout.ali_cuts("train-clean-100")), 12)
        post = {c.id: lp for c, lp in predict_log_posteriors(model, sample, layout.open_cmvn("train-clean-100"), amp="none")}
        acc = corpus_frame_accuracy(post, {c.id: load_alignment(c) for c in sample})
        assert r["train_sample"]["frame_accuracy"] == pytest.approx(acc.accuracy, abs=1e-9) and r["train_sample"]["cuts"] == 12
        # The scale is the dev search's fewest errors, from the decode config's grid.
        sweep = r["dev"]["sweep"]
        assert set(sweep["scales"]) <= set(decode.acoustic_scales) and sweep["best"] == r["dev"]["acoustic_scale"]
        assert min(sweep["errors"]) == sweep["errors"][sweep["scales"].index(sweep["best"])]
        # Test WER: a fresh decoding of the saved model's posteriors at that scale.
        post = {c.id: lp for c, lp in predict_log_posteriors(model, test_cuts, layout.open_cmvn("test-clean"), amp="none")}
        batch = decode_posteriors_batch(hclg, tm, post, priors, dataclasses.replace(decode, acoustic_scale=r["dev"]["acoustic_scale"], num_jobs=1))
        refs = {c.id: " ".join(s.text for s in c.supervisions) for c in test_cuts}
        wer = compute_wer(refs, batch.texts(words))
        test = r["test"]["test-clean"]
        assert (test["wer"], test["ref_words"], test["acoustic_scale"]) == (wer.wer, wer.ref_words, r["dev"]["acoustic_scale"])
        assert r["test_wer_over_gmm"] == pytest.approx(wer.wer / gmm_test) and "test-ood" in r["test"]
    # Multiply-adds per frame: 8 frames x 40 fbank into the layers, 500-odd senones out.
    s = senones.num_senones
    assert runs["base"]["macs_per_frame"] == 320 * 64 + 64 * 64 + 64 * s
    assert runs["deep"]["macs_per_frame"] == 320 * 96 + 2 * 96 * 96 + 96 * s
    assert runs["deep"]["label_smoothing"] == 0.1 and runs["base"]["test_wer_minus_first"] is None
    diff = runs["deep"]["test_wer_minus_first"]
    assert diff["value"] == pytest.approx(runs["deep"]["test"]["test-clean"]["wer"] - runs["base"]["test"]["test-clean"]["wer"])
    assert diff["low"] <= diff["value"] <= diff["high"]

    text = results.read_text()
    assert "`python bench/hybrid_capacity.py " + " ".join(args[:2]) in text
    assert f"| {100 * runs['deep']['dev']['frame_accuracy']:.1f}% |" in text
    assert f"{100 * runs['base']['test']['test-clean']['wer']:.1f}% (of {runs['base']['test']['test-clean']['ref_words']})" in text

    # Rerun with the same variants: nothing is retrained (the records match), the same report.
    model_files = _snapshot(out / "base", out / "deep")
    assert _bench(*args) == 0
    assert _snapshot(out / "base", out / "deep") == model_files
    assert json.loads((out / "hybrid_capacity.json").read_text())["runs"] == report["runs"]
