"""Variants of the hard-target DNN (asr_kd/train/capacity.py): parsing, the label-smoothed loss and
the fixed training sample of bench/hybrid_capacity.py."""

from __future__ import annotations

import pytest
import torch
from lhotse import CutSet
from lhotse.testing.dummies import dummy_cut

from asr_kd.config import DnnConfig, TrainConfig
from asr_kd.errors import ConfigError, DataError
from asr_kd.models.dnn import SplicedDnn, dnn_preset
from asr_kd.train.capacity import label_smoothed_frame_cross_entropy, parse_variant, spread_sample
from asr_kd.train.frame_classifier import frame_cross_entropy

BASE_DNN, BASE_TRAIN = dnn_preset("mini"), TrainConfig(num_epochs=10, lr=0.003)


def test_a_variant_overrides_the_model_the_training_and_the_smoothing() -> None:
    v = parse_variant("wide4x512:hidden_dim=512,num_hidden_layers=4,num_epochs=6,lr=0.001,label_smoothing=0.1", BASE_DNN, BASE_TRAIN)
    assert (v.name, v.dnn.hidden_dim, v.dnn.num_hidden_layers, v.dnn.left_context) == ("wide4x512", 512, 4, 20)
    assert (v.train.num_epochs, v.train.lr, v.train.seed, v.label_smoothing) == (6, 0.001, 0, 0.1)
    assert v.overrides == ("hidden_dim=512", "num_hidden_layers=4", "num_epochs=6", "lr=0.001", "label_smoothing=0.1")
    base = parse_variant("base", BASE_DNN, BASE_TRAIN)
    assert (base.dnn, base.train, base.label_smoothing, base.overrides) == (BASE_DNN, BASE_TRAIN, 0.0, ())


def test_bad_variants_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['width'\]; known: DnnConfig \[") as err:
        parse_variant("w:width=512", BASE_DNN, BASE_TRAIN)
    assert "\n" not in str(err.value) and "label_smoothing" in str(err.value)
    with pytest.raises(ConfigError, match="model.dropout must be in"):
        parse_variant("d:dropout=1.5", BASE_DNN, BASE_TRAIN)
    with pytest.raises(ConfigError, match="label_smoothing must be a number, got 'lots'"):
        parse_variant("s:label_smoothing=lots", BASE_DNN, BASE_TRAIN)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        parse_variant("s:label_smoothing=1", BASE_DNN, BASE_TRAIN)
    with pytest.raises(ConfigError, match="names a folder"):
        parse_variant("../up:lr=0.1", BASE_DNN, BASE_TRAIN)


def test_label_smoothing_mixes_the_cross_entropy_with_the_uniform_one() -> None:
    torch.manual_seed(0)
    model = SplicedDnn(DnnConfig(feature_dim=4, left_context=1, right_context=1, hidden_dim=8, num_hidden_layers=1), 6)
    labels = torch.tensor([[0, 3, 5, -100], [2, 2, -100, -100]])
    batch = {"features": torch.randn(2, 4, 4), "lengths": torch.tensor([3, 2]), "labels": labels}
    plain, plain_logs = frame_cross_entropy(model, batch)
    zero, zero_logs = label_smoothed_frame_cross_entropy(model, batch, 0.0)
    assert zero.item() == pytest.approx(plain.item(), rel=1e-6) and zero_logs["frame_accuracy"] == plain_logs["frame_accuracy"]
    eps = 0.2
    smoothed, _ = label_smoothed_frame_cross_entropy(model, batch, eps)
    logp = torch.log_softmax(model(batch["features"], batch["lengths"]), -1)
    mask = labels != -100
    uniform = -logp[mask].mean(-1).mean()
    assert smoothed.item() == pytest.approx((1 - eps) * plain.item() + eps * uniform.item(), rel=1e-5)
    assert smoothed.item() != pytest.approx(plain.item(), rel=1e-3)
    # A frame-subsampled batch (train.frame_subsampling=2, phase 1): the same loss at frames 1 and 3.
    from asr_kd.data.frames import subsample_frames

    thin, _ = label_smoothed_frame_cross_entropy(model, subsample_frames(batch, 2, 1), eps)
    kept = torch.nn.functional.cross_entropy(model(batch["features"], batch["lengths"])[:, 1::2].flatten(0, 1), labels[:, 1::2].flatten(),
                                             ignore_index=-100, label_smoothing=eps)
    assert thin.item() == pytest.approx(kept.item(), rel=1e-6)


def test_the_training_sample_spans_the_manifest_and_skips_unaligned_cuts() -> None:
    cuts = [dummy_cut(i) for i in range(20)]
    for i, c in enumerate(cuts):
        if i != 3:
            c.custom = {"senones": "stand-in"}  # only its presence matters to the sample
    ids = [c.id for c in spread_sample(CutSet.from_cuts(cuts), 5)]
    aligned = [c.id for i, c in enumerate(cuts) if i != 3]
    assert ids == [aligned[i * 19 // 5] for i in range(5)] and ids[0] == cuts[0].id and cuts[3].id not in ids
    assert ids == [c.id for c in spread_sample(CutSet.from_cuts(cuts), 5)]  # fixed, not random
    assert len(spread_sample(CutSet.from_cuts(cuts), 50)) == 19
    with pytest.raises(ConfigError, match="at least 1 cut"):
        spread_sample(CutSet.from_cuts(cuts), 0)


def test_a_distilled_variant_trains_with_stage_6s_stored_target_loss() -> None:
    from asr_kd.config import KdConfig
    from asr_kd.kd.student import StoredDistillationLoss
    from asr_kd.train.capacity import variant_loss

    kd = KdConfig(temperature=1.0, mode="stored")
    plain = parse_variant("bn:bottleneck_dim=64,frame_projection_dim=16", BASE_DNN, BASE_TRAIN)
    assert (plain.dnn.bottleneck_dim, plain.dnn.frame_projection_dim) == (64, 16)
    loss = variant_loss(plain, kd)
    assert isinstance(loss, StoredDistillationLoss) and loss.kd == kd
    assert variant_loss(plain) is frame_cross_entropy
    with pytest.raises(ConfigError, match="distilled variants learn from stored soft targets; set kd.mode=stored, got 'online'"):
        variant_loss(plain, KdConfig(mode="online"))
    with pytest.raises(ConfigError, match="label_smoothing applies to hard targets only"):
        variant_loss(parse_variant("s:label_smoothing=0.1", BASE_DNN, BASE_TRAIN), kd)


def test_variants_over_seeds_are_compared_with_the_recipes_baseline_over_its_seeds(tmp_path) -> None:
    import dataclasses
    import json
    import runpy

    import numpy as np

    from asr_kd.metrics.paired import bootstrap_difference
    from asr_kd.stages.layout import RecipeLayout
    from tests.conftest import REPO_ROOT

    bench = runpy.run_path(str(REPO_ROOT / "bench" / "hybrid_capacity.py"))
    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    rng = np.random.default_rng(0)
    ids, words = [f"u{i:02d}" for i in range(30)], rng.integers(3, 12, 30)

    def write(folder, errors, wer=None) -> None:
        folder.mkdir(parents=True)
        (folder / "per_utt.json").write_text(json.dumps({u: [int(e), int(w), 0, 0] for u, e, w in zip(ids, errors, words)}))
        if wer is not None:
            (folder / "scores.json").write_text(json.dumps({"wer": wer}))

    base = [rng.integers(0, 6, 30) for _ in range(3)]
    for k, e in enumerate(base):  # stage 7's baseline and its seeds
        write(layout.decode / f"{'baseline' if k == 0 else f'baseline_seed{k}'}_test-clean", e, e.sum() / words.sum())
    ours = [np.maximum(e - 1, 0) for e in base[:2]]  # a variant of two seeds, one error fewer per utterance
    runs, results = [], []
    for k, e in enumerate(ours):
        name = "v" if k == 0 else f"v_seed{k}"
        write(tmp_path / "out" / name / "decode" / f"{name}_test-clean", e)
        variant = parse_variant("v:bottleneck_dim=8", BASE_DNN, BASE_TRAIN)
        runs.append(bench["Run"](name, variant, k, tmp_path / "out" / name))
        results.append({"seed": 1000 + k, "macs_per_frame": 1000, "dev": {"wer": 0.5}, "test": {"test-clean": {"wer": e.sum() / words.sum()}}})
    (row,) = bench["compare_to_recipe"](layout, runs, results, "baseline", 4000)
    assert row["reference_seeds"] == ["baseline", "baseline_seed1", "baseline_seed2"] and row["seeds"] == [1000, 1001]
    assert row["teacher_share"] == 0.25 and row["test_wer_mean"] == pytest.approx(np.mean([e.sum() for e in ours]) / words.sum())
    want = bootstrap_difference(np.mean(base, axis=0), np.mean(ours, axis=0), words.astype(float)).to_dict()
    assert row["minus_reference"] == want and want["value"] < 0
    table = "\n".join(bench["format_comparison"]([row], layout, 4000))
    assert f"{100 * want['value']:+.2f} [{100 * want['low']:+.2f}, {100 * want['high']:+.2f}]" in table and "1,000 (25.0%)" in table
    assert "minus_reference_ood" not in row and "test-ood" not in table
    # An out-of-domain part that stage 7 decoded for every baseline seed gets its own difference;
    # here the variant makes one error more per utterance there.
    ood = dataclasses.replace(layout, ood_part="test-ood")
    base_ood = [rng.integers(0, 6, 30) for _ in range(3)]
    for k, e in enumerate(base_ood):
        write(layout.decode / f"{'baseline' if k == 0 else f'baseline_seed{k}'}_test-ood", e)
    for k, e in enumerate(base_ood[:2]):
        name = "v" if k == 0 else f"v_seed{k}"
        write(tmp_path / "out" / name / "decode" / f"{name}_test-ood", e + 1)
    # Not yet decoded there for one baseline seed: no column.
    (layout.decode / "baseline_seed2_test-ood" / "per_utt.json").rename(tmp_path / "held.json")
    (row,) = bench["compare_to_recipe"](ood, runs, results, "baseline", 4000)
    assert "minus_reference_ood" not in row and row["minus_reference"] == want
    (tmp_path / "held.json").rename(layout.decode / "baseline_seed2_test-ood" / "per_utt.json")
    (row,) = bench["compare_to_recipe"](ood, runs, results, "baseline", 4000)
    want_ood = bootstrap_difference(np.mean(base_ood, axis=0), np.mean(base_ood[:2], axis=0) + 1, words.astype(float)).to_dict()
    assert row["minus_reference"] == want and row["ood_part"] == "test-ood" and row["minus_reference_ood"] == want_ood
    assert want_ood["low"] > 0
    table = "\n".join(bench["format_comparison"]([row], ood, 4000))
    assert "| test-ood: − baseline, points [95% CI] |" in table
    assert f"{100 * want_ood['value']:+.2f} [{100 * want_ood['low']:+.2f}, {100 * want_ood['high']:+.2f}], above 0 |" in table
    with pytest.raises(DataError, match="name a system stage 7 decoded"):
        bench["compare_to_recipe"](layout, runs, results, "distilled", 4000)
    # Against an earlier run of the bench (another --out: a control of the same size) and its
    # _seed1 sibling, found beside it; no test-ood decodes there, so no column.
    control = [rng.integers(0, 6, 30) for _ in range(2)]
    for k, e in enumerate(control):
        name = "h" if k == 0 else "h_seed1"
        write(tmp_path / "other" / name / "decode" / f"{name}_test-clean", e)
        (tmp_path / "other" / name / "result.json").write_text(json.dumps({"test": {"test-clean": {"wer": e.sum() / words.sum()}}}))
    (row,) = bench["compare_to_recipe"](ood, runs, results, str(tmp_path / "other" / "h"), 4000)
    want_h = bootstrap_difference(np.mean(control, axis=0), np.mean(ours, axis=0), words.astype(float)).to_dict()
    assert (row["reference"], row["reference_seeds"], row["minus_reference"]) == ("h", ["h", "h_seed1"], want_h)
    assert "minus_reference_ood" not in row
    table = "\n".join(bench["format_comparison"]([row], layout, 4000))
    assert table.startswith(f"Against hybrid_capacity's run `h` ({tmp_path / 'other' / 'h'}) (2 seeds, test WER ")
    assert f"{100 * want_h['value']:+.2f} [{100 * want_h['low']:+.2f}, {100 * want_h['high']:+.2f}]" in table
    with pytest.raises(DataError, match="result.json does not exist; name a finished hybrid_capacity run folder"):
        bench["compare_to_recipe"](layout, runs, results, str(tmp_path / "out"), 4000)


def test_the_cost_sentence_names_the_runs_that_resumed() -> None:
    import runpy

    from tests.conftest import REPO_ROOT

    note = runpy.run_path(str(REPO_ROOT / "bench" / "hybrid_capacity.py"))["_resumed_note"]
    results = [{"run": "a", "training": {"steps": 90}}, {"run": "b", "training": {"steps": 90, "resumed_at_step": 40}},
               {"run": "c", "training": {"steps": 90, "resumed_at_step": 0}}]
    assert note(results) == (" Resumed after an interruption: b (at step 40 of 90); their CPU and wall seconds are the resuming "
                             "process's scaled by all steps over the steps it ran.")
    assert note([results[0], results[2]]) == ""  # results written before resumed_at_step existed have no key
    # Stopped while scoring, after training had finished: nothing to scale, the cost is unknown.
    finished = {"run": "d", "training": {"steps": 90, "resumed_at_step": 90, "cpu_seconds": None, "cpu_seconds_per_epoch": None}}
    assert note([results[0], finished]) == (" Stopped after their training had finished, and scored by a second process: d; their "
                                            "training's CPU seconds went with the stopped process (n/a), and the cost below leaves them out.")
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "hybrid_capacity.py"))
    known = {"run": "e", "training": {"steps": 90, "cpu_seconds": 900.4, "cpu_seconds_per_epoch": 90.04}}
    assert (bench["_cpu_cell"](finished["training"]), bench["_cpu_cell"](known["training"])) == ("n/a", "90 (900)")
    decoded = {"dev": {"decode_seconds": 60.0}, "test": {"test-clean": {"decode_seconds": 60.0}}}
    cost = bench["cost_sentence"]
    assert cost([{**known, **decoded}, {**finished, **decoded}]) == (
        "Cost of this table: 15 CPU minutes of training (1 of the 2 runs; the others' are n/a) and 4 minutes of decoding "
        "(each run's dev scale search and test decodes) over 2 runs.")
    assert cost([{**finished, **decoded}]).startswith("Cost of this table: unknown CPU minutes of training (n/a above) and 2 minutes")
