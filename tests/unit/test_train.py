"""Training a frame classifier on real fbank features: it learns, resumes exactly, checkpoints
atomically, logs to TensorBoard, stops early, and predicts log-posteriors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet

from asr_kd.config import DnnConfig, TrainConfig, load_config
from asr_kd.data.alignments import load_alignment
from asr_kd.errors import ConfigError, DataError
from asr_kd.models.dnn import dnn_preset
from asr_kd.train.capacity import FrameVariant, train_variant
from asr_kd.train.checkpoint import list_checkpoints, load_checkpoint
from asr_kd.train.frame_classifier import (
    frame_cross_entropy,
    load_frame_classifier,
    predict_log_posteriors,
    train_frame_classifier,
)
from tests.unit.test_train_corpus import NUM_CLASSES, FrameCorpus, make_frame_corpus

# 12 training cuts of 1.5 s, 6 s per batch: 3 batches (steps) per epoch.
BASE = TrainConfig(
    num_epochs=8, max_duration=6.0, num_buckets=2, warmup_steps=5, lr=3e-3, lr_schedule="constant",
    checkpoint_every_steps=4, keep_last_checkpoints=2, log_every_steps=2, seed=3,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> FrameCorpus:
    return make_frame_corpus(tmp_path_factory.mktemp("frames"))


def _train(corpus: FrameCorpus, cfg: TrainConfig, exp: Path, model_cfg: DnnConfig | None = None, **kw):  # noqa: ANN202
    return train_frame_classifier(corpus.train_cuts, corpus.dev_cuts, corpus.train_cmvn, corpus.dev_cmvn, NUM_CLASSES,
                                  model_cfg or dnn_preset("tiny"), cfg, exp, **kw)


def test_training_learns_and_writes_its_outputs(corpus: FrameCorpus, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    result = _train(corpus, BASE, exp)
    hist = result.state.history
    assert [h["epoch"] for h in hist] == list(range(1, 9)) and result.state.step == 24
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    assert hist[-1]["frame_accuracy"] > 0.8  # chance is 1/3
    assert result.state.best_metric == max(h["frame_accuracy"] for h in hist)
    # Outputs: config, the last K periodic checkpoints, best and final, TensorBoard events.
    assert load_config(TrainConfig, exp / "train.yaml") == BASE
    assert [p.name for p in list_checkpoints(exp)] == ["step-000000021.pt", "step-000000024.pt"]
    assert not [p for p in exp.rglob("*") if ".tmp" in p.name]
    final = load_checkpoint(exp / "final.pt")
    assert final["train_state"]["finished"] and final["train_state"]["step"] == 24
    best = load_checkpoint(exp / "best.pt")
    assert best["train_state"]["step"] == result.state.best_step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/frame_accuracy", "dev/frame_accuracy", "dev/loss"} <= tags
    assert [e.step for e in events.Scalars("dev/frame_accuracy")] == [h["step"] for h in hist]
    # Running again with --resume on a finished run does nothing and keeps the result.
    again = _train(corpus, BASE, exp, resume=True)
    assert again.state.step == 24 and again.state.history == hist
    # Without --resume, an existing run is never silently mixed with a new one.
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume to continue that run, or use a new --exp-dir"):
        _train(corpus, BASE, exp)


def test_bf16_on_the_cpu_is_asked_for_and_learns(corpus: FrameCorpus, tmp_path: Path) -> None:
    from asr_kd.train.loop import autocast_context

    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    cpu = torch.device("cpu")
    # "bf16" means CUDA only: CPU runs stay float32 (what the recipe's records were made with).
    with autocast_context(dataclasses.replace(BASE, amp="bf16"), cpu):
        assert layer(x).dtype == torch.float32
    with autocast_context(dataclasses.replace(BASE, amp="bf16-cpu"), cpu):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match=r"train.amp must be one of \('bf16', 'bf16-cpu', 'none'\), got 'fp16'"):
        TrainConfig(amp="fp16")
    fp32 = _train(corpus, BASE, tmp_path / "fp32").state.history
    bf16 = _train(corpus, dataclasses.replace(BASE, amp="bf16-cpu"), tmp_path / "bf16").state.history
    assert bf16[-1]["frame_accuracy"] > 0.8 and abs(bf16[-1]["frame_accuracy"] - fp32[-1]["frame_accuracy"]) < 0.1
    assert bf16[-1]["loss"] != fp32[-1]["loss"]  # it did run in bf16


def test_predict_log_posteriors_matches_dev_accuracy(corpus: FrameCorpus, tmp_path: Path) -> None:
    result = _train(corpus, dataclasses.replace(BASE, num_epochs=4), tmp_path / "exp")
    model = load_frame_classifier(result.final_path)
    dev = CutSet.from_file(corpus.dev_cuts)
    correct = total = 0
    seen = []
    for cut, logp in predict_log_posteriors(model, corpus.dev_cuts, corpus.dev_cmvn, max_duration=2.0):
        seen.append(cut.id)
        assert logp.shape == (cut.num_frames, NUM_CLASSES) and logp.dtype == np.float32
        np.testing.assert_allclose(np.logaddexp.reduce(logp, axis=1), 0.0, atol=1e-5)
        labels = load_alignment(cut)
        correct += int((logp.argmax(1) == labels).sum())
        total += labels.size
    assert seen == list(dev.ids)  # manifest order, every cut once
    assert correct / total == pytest.approx(result.state.history[-1]["frame_accuracy"], abs=1e-9)


@pytest.mark.parametrize("specaug,subsampling", [(False, 1), (True, 1), (True, 2)])
def test_resumed_run_equals_uninterrupted_run(corpus: FrameCorpus, tmp_path: Path, specaug: bool, subsampling: int) -> None:
    # Dropout makes the generator states matter; 10 steps cross epoch boundaries (3 steps each),
    # and the crash comes mid-epoch, right after the checkpoint at step 4 and one more step.
    # SpecAugment's masks, and the frames a subsampled step keeps, must come out the same after the resume too.
    model_cfg = dataclasses.replace(dnn_preset("tiny"), dropout=0.2)
    cfg = dataclasses.replace(BASE, max_steps=10, num_epochs=5, warmup_steps=3, checkpoint_every_steps=4, keep_last_checkpoints=5,
                              frame_subsampling=subsampling)
    if specaug:
        cfg = dataclasses.replace(cfg, specaug_freq_masks=2, specaug_time_masks=2, specaug_time_width=10)
    straight = _train(corpus, cfg, tmp_path / "straight", model_cfg)

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crashing_loss(model, batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 6:
            raise Crash()
        return frame_cross_entropy(model, batch)

    with pytest.raises(Crash):
        _train(corpus, cfg, tmp_path / "crashed", model_cfg, compute_loss=crashing_loss)
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")] == ["step-000000003.pt", "step-000000004.pt"]
    assert not (tmp_path / "crashed" / "final.pt").exists()
    # Generators move on in between, as in a new process: the checkpoint must restore them.
    torch.manual_seed(1234)
    resumed = _train(corpus, cfg, tmp_path / "crashed", model_cfg, resume=True)
    assert resumed.state.step == straight.state.step == 10
    a = load_checkpoint(straight.final_path)
    b = load_checkpoint(resumed.final_path)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert resumed.state.history == straight.state.history
    if specaug:  # the masks were applied: the same run without them ends elsewhere
        plain = _train(corpus, dataclasses.replace(cfg, specaug_freq_masks=0, specaug_time_masks=0), tmp_path / "plain", model_cfg)
        assert plain.state.history != straight.state.history


def test_a_capacity_variant_resumes_its_interrupted_run(corpus: FrameCorpus, tmp_path: Path) -> None:
    """bench/hybrid_capacity.py's guard keeps an interrupted variant's folder when the settings
    match; train_variant must then continue from its checkpoint (it used to refuse the folder)."""
    variant = FrameVariant("v", dnn_preset("tiny"), dataclasses.replace(BASE, num_epochs=3))
    args = (corpus.train_cuts, corpus.dev_cuts, corpus.train_cmvn, corpus.dev_cmvn, NUM_CLASSES)
    straight = train_variant(variant, *args, tmp_path / "straight")
    calls = {"n": 0}

    def crashing_loss(model, batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("killed")
        return frame_cross_entropy(model, batch)

    with pytest.raises(RuntimeError, match="killed"):
        _train(corpus, variant.train, tmp_path / "crashed", variant.dnn, compute_loss=crashing_loss)
    resumed = train_variant(variant, *args, tmp_path / "crashed")
    assert (straight["resumed_at_step"], resumed["resumed_at_step"]) == (0, 4)
    assert resumed["steps"] == straight["steps"] == 9 and resumed["epochs"] == 3
    assert resumed["history"] == straight["history"]
    assert resumed["cpu_seconds"] > 0 and resumed["cpu_seconds_per_epoch"] == pytest.approx(resumed["cpu_seconds"] / 3, abs=0.1)
    # Stopped after training had finished (while scoring): nothing is trained again, and the cost,
    # the stopped process's, is unknown rather than this process's few seconds.
    again = train_variant(variant, *args, tmp_path / "crashed")
    assert (again["resumed_at_step"], again["steps"], again["history"]) == (9, 9, straight["history"])
    assert (again["cpu_seconds"], again["wall_seconds"], again["cpu_seconds_per_epoch"]) == (None, None, None)


def test_frame_subsampled_training_learns_from_every_nth_frame(corpus: FrameCorpus, tmp_path: Path) -> None:
    from asr_kd.data.frames import POSITIONS
    from asr_kd.train.augment import frame_phase

    seen = []

    def recording_loss(model, batch):  # noqa: ANN001, ANN202
        positions = batch[POSITIONS]
        seen.append((int(positions[0]), batch["features"].shape[1], batch["labels"].shape[1], positions.numel()))
        return frame_cross_entropy(model, batch)

    cfg = dataclasses.replace(BASE, frame_subsampling=2)
    result = _train(corpus, cfg, tmp_path / "thin", compute_loss=recording_loss)
    # Every step: outputs and labels at frames phase, phase + 2, ... of the whole-frame input,
    # the phase that frame_phase draws for the step (both phases occur over the 24 steps).
    assert len(seen) == result.state.step == 24
    assert [phase for phase, *_ in seen] == [frame_phase(cfg, step) for step in range(24)]
    assert {phase for phase, *_ in seen} == {0, 1}
    assert all(labels == kept == len(range(phase, frames, 2)) for phase, frames, labels, kept in seen)
    # It learns like the every-frame run (dev is scored on every frame), and is not that run.
    full = _train(corpus, BASE, tmp_path / "full").state.history
    thin = result.state.history
    assert thin[-1]["frame_accuracy"] > 0.8 and thin != full
    assert load_config(TrainConfig, tmp_path / "thin" / "train.yaml").frame_subsampling == 2
    with pytest.raises(ConfigError, match="train.frame_subsampling must be >= 1"):
        dataclasses.replace(BASE, frame_subsampling=0)


def test_spec_augment_masks_stay_inside_each_utterance() -> None:
    from asr_kd.train.augment import spec_augment, spec_augment_enabled, step_generator

    cfg = dataclasses.replace(BASE, specaug_freq_masks=2, specaug_freq_width=5, specaug_time_masks=2, specaug_time_width=30)
    assert spec_augment_enabled(cfg) and not spec_augment_enabled(BASE)
    x = torch.randn(3, 100, 20) + 10.0  # no feature is 0 before masking
    lengths = torch.tensor([100, 60, 40])
    before = x.clone()
    masked = spec_augment(x, lengths, cfg, step_generator(cfg, 7))
    assert torch.equal(x, before)  # a copy is masked, not the batch
    zero = masked == 0
    for b, n in enumerate(lengths.tolist()):
        assert not zero[b, n:].any()  # padding untouched
        frames = zero[b, :n].all(dim=1)  # whole frames masked: time masks
        bins = zero[b, :n].all(dim=0)  # whole bins masked: frequency masks
        assert int(frames.sum()) <= 2 * min(30, int(0.2 * n))
        assert int(bins.sum()) <= 2 * 5
        # Every zero lies in a masked frame or a masked bin.
        assert not (zero[b, :n] & ~frames[:, None] & ~bins[None, :]).any()
    assert zero.any()
    # The same step draws the same masks; another step others.
    assert torch.equal(masked, spec_augment(x, lengths, cfg, step_generator(cfg, 7)))
    assert not torch.equal(masked, spec_augment(x, lengths, cfg, step_generator(cfg, 8)))
    with pytest.raises(ConfigError, match="train.specaug_time_width must be >= 0, got -1"):
        TrainConfig(specaug_time_width=-1)


def test_early_stopping(corpus: FrameCorpus, tmp_path: Path) -> None:
    # A learning rate this small cannot move the dev accuracy: the run stops after `patience`
    # epochs without improvement instead of running all ten.
    cfg = dataclasses.replace(BASE, num_epochs=10, lr=1e-12, early_stopping_patience=2, best_metric="loss", best_mode="min")
    result = _train(corpus, cfg, tmp_path / "exp")
    assert result.state.stop_reason.startswith("early stopping")
    assert len(result.state.history) < 10
    assert result.state.epochs_without_improvement == 2


def test_dev_every_n_epochs_keeps_the_training_and_counts_epochs(corpus: FrameCorpus, tmp_path: Path) -> None:
    # Dropout and SpecAugment draw from the generators: evaluating dev less often must not move them.
    model_cfg = dataclasses.replace(dnn_preset("tiny"), dropout=0.2)
    cfg = dataclasses.replace(BASE, specaug_freq_masks=2, specaug_time_masks=2, specaug_time_width=10)
    every = _train(corpus, cfg, tmp_path / "every", model_cfg)
    third = _train(corpus, dataclasses.replace(cfg, eval_every_epochs=3), tmp_path / "third", model_cfg)
    a, b = load_checkpoint(every.final_path), load_checkpoint(third.final_path)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    # Dev after epochs 3 and 6, and after the last (8), with the values the every-epoch run saw there.
    assert [h["epoch"] for h in third.state.history] == [3, 6, 8]
    assert third.state.history == [h for h in every.state.history if h["epoch"] in (3, 6, 8)]
    # Early stopping still counts epochs: patience 4 at one evaluation every 3 epochs stops after
    # the second evaluation without improvement (6 epochs), not the fourth.
    stuck = dataclasses.replace(BASE, num_epochs=20, lr=1e-12, early_stopping_patience=4, best_metric="loss", best_mode="min",
                                eval_every_epochs=3)
    result = _train(corpus, stuck, tmp_path / "stuck")
    assert result.state.stop_reason.startswith("early stopping")
    assert [h["epoch"] for h in result.state.history] == [3, 6, 9]
    assert result.state.epochs_without_improvement == 6
    with pytest.raises(ConfigError, match="train.eval_every_epochs must be >= 1, got 0"):
        dataclasses.replace(BASE, eval_every_epochs=0)
    # A max_steps stop mid-epoch still scores the final model: after epoch 2 (step 6), then at step 7.
    cut = _train(corpus, dataclasses.replace(BASE, eval_every_epochs=2, max_steps=7), tmp_path / "cut")
    assert [(h["epoch"], h["step"]) for h in cut.state.history] == [(2, 6), (2, 7)]


def test_resuming_a_checkpoint_from_before_an_option_does_not_warn(corpus: FrameCorpus, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # A checkpoint written before train.eval_every_epochs existed lacks the key: its default, not a change.
    from asr_kd.train.checkpoint import save_checkpoint

    exp = tmp_path / "exp"
    _train(corpus, dataclasses.replace(BASE, max_steps=4, checkpoint_every_steps=4), exp)
    (exp / "final.pt").unlink()
    for path in list_checkpoints(exp):
        ckpt = load_checkpoint(path)
        ckpt["config"].pop("eval_every_epochs")
        ckpt["train_state"]["finished"] = False
        save_checkpoint(path, ckpt)
    caplog.set_level("WARNING", logger="asr_kd.train.loop")
    _train(corpus, dataclasses.replace(BASE, max_steps=4, checkpoint_every_steps=4), exp, resume=True)
    assert not [r for r in caplog.records if "changed settings" in r.getMessage()]
    caplog.clear()
    _train(corpus, dataclasses.replace(BASE, max_steps=6, checkpoint_every_steps=4), exp, resume=True)
    assert [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()] == [
        "resuming with changed settings ['max_steps'] (was {'max_steps': 4})"]


def test_missing_inputs_are_one_line_errors(corpus: FrameCorpus, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cut manifest .*nope.jsonl.gz does not exist; run stage 1"):
        train_frame_classifier(tmp_path / "nope.jsonl.gz", None, None, None, 3, dnn_preset("tiny"), BASE, tmp_path / "e")
    with pytest.raises(DataError, match="label 2 outside 0..1; pass --num-classes"):
        train_frame_classifier(corpus.train_cuts, None, corpus.train_cmvn, None, 2, dnn_preset("tiny"), BASE, tmp_path / "e")
    with pytest.raises(DataError, match=r"checkpoint .*missing.pt does not exist"):
        load_frame_classifier(tmp_path / "missing.pt")


def test_cli_train_dnn(corpus: FrameCorpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from asr_kd.bin.cli import main

    exp = tmp_path / "exp"
    args = ["train-dnn", "--cuts", str(corpus.train_cuts), "--dev-cuts", str(corpus.dev_cuts), "--cmvn", str(corpus.train_cmvn),
            "--dev-cmvn", str(corpus.dev_cmvn), "--num-classes", str(NUM_CLASSES), "--model-config", "tiny",
            "--model-set", "hidden_dim=16", "--exp-dir", str(exp), "--set", "num_epochs=2", "--set", "max_duration=6"]
    assert main(args) == 0
    assert "final.pt (num_epochs=2)" in capsys.readouterr().out
    assert load_frame_classifier(exp / "final.pt").cfg.hidden_dim == 16
    assert "finished after 6 steps" in (exp / "log" / "train.log").read_text()
    assert main(args[:1] + ["--cuts", str(tmp_path / "none.jsonl.gz")] + args[3:]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr-kd train-dnn: error: cut manifest") and "\n" not in err
    assert main(args[:-4] + ["--set", "optimizer=adam"]) == 1
    assert "train.optimizer must be one of ('adamw', 'sgd'), got 'adam'" in capsys.readouterr().err
    assert main([a if a != "tiny" else "huge" for a in args]) == 1
    assert "--model-config 'huge' is neither a preset" in capsys.readouterr().err


def test_dataloader_workers_do_not_change_the_result(corpus: FrameCorpus, tmp_path: Path) -> None:
    cfg = dataclasses.replace(BASE, num_epochs=2)
    a = load_checkpoint(_train(corpus, cfg, tmp_path / "w0").final_path)["model"]
    b = load_checkpoint(_train(corpus, dataclasses.replace(cfg, num_workers=2), tmp_path / "w2").final_path)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_utterance_cmvn_trains_on_what_a_model_directory_feeds(corpus: FrameCorpus, tmp_path: Path) -> None:
    """A network trained on per-utterance CMVN sees, frame for frame, what a model directory of
    normalisation "utterance" gives it, learns, and says so in its checkpoint, which the model
    directory then follows (and refuses global statistics for)."""
    from asr_kd.data.frames import FrameDataset
    from asr_kd.deploy.model_dir import network_normalization, normalize_features

    cuts = list(CutSet.from_file(corpus.dev_cuts))
    batch = FrameDataset(None, None, per_utterance=True)[CutSet.from_cuts(cuts[:1])]
    feats = cuts[0].load_features()
    expected = normalize_features(feats, "utterance", None)
    assert torch.equal(batch["features"][0], torch.from_numpy(expected))  # bit for bit the deployment path
    np.testing.assert_allclose(expected.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(expected.std(0), 1.0, atol=1e-3)
    # The stored features are not normalised already: without per_utterance they differ.
    assert not np.allclose(FrameDataset(None, None)[CutSet.from_cuts(cuts[:1])]["features"][0].numpy(), expected, atol=1e-2)
    with pytest.raises(ValueError, match="takes no CMVN statistics"):
        FrameDataset(corpus.dev_cmvn, None, per_utterance=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per-utterance CMVN takes no CMVN statistics"):
        _train(corpus, BASE, tmp_path / "both", per_utterance_cmvn=True)

    exp = tmp_path / "utt"
    result = train_frame_classifier(corpus.train_cuts, corpus.dev_cuts, None, None, NUM_CLASSES, dnn_preset("tiny"), BASE, exp,
                                    per_utterance_cmvn=True)
    # This corpus's label is a function of the whole utterance's spectrum, which per-utterance CMVN
    # removes: the network stays at chance (1/3) on train and dev, where the speaker-normalised one
    # below learns (> 0.8): the normalisation reached training and dev scoring both.
    assert max(h["frame_accuracy"] for h in result.state.history) < 0.5
    assert load_checkpoint(exp / "final.pt")["extra"]["input_normalization"] == "utterance"
    assert network_normalization(exp / "final.pt") == "utterance" == network_normalization(exp / "final.pt", "utterance")
    with pytest.raises(ConfigError, match=r"trained on features normalised per utterance; .* \(drop --normalization global\)"):
        network_normalization(exp / "final.pt", "global")
    # Loaded for recipe-style scoring, it is fed per-utterance CMVN whatever statistics are passed, and no
    # ensemble fed a part's statistics takes it.
    from asr_kd.kd.ensemble import ensemble_log_posteriors

    model = load_frame_classifier(exp / "final.pt")
    assert model.input_normalization == "utterance"
    given = [lp for _, lp in predict_log_posteriors(model, corpus.dev_cuts, corpus.dev_cmvn, amp="none")]
    none = [lp for _, lp in predict_log_posteriors(model, corpus.dev_cuts, None, amp="none")]
    assert all(np.array_equal(a, b) for a, b in zip(given, none))
    model.input_normalization = None  # what it would be fed without the mark: other posteriors
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(given, (lp for _, lp in predict_log_posteriors(model, corpus.dev_cuts, corpus.dev_cmvn, amp="none"))))
    with pytest.raises(ConfigError, match="a network trained on per-utterance CMVN .* cannot join it"):
        next(ensemble_log_posteriors([load_frame_classifier(exp / "final.pt")], CutSet.from_file(corpus.dev_cuts), None))
    # A network trained with the part's statistics records nothing and defaults to global.
    speaker = _train(corpus, BASE, tmp_path / "spk")
    assert speaker.state.history[-1]["frame_accuracy"] > 0.8
    assert "input_normalization" not in load_checkpoint(speaker.final_path)["extra"]
    assert network_normalization(speaker.final_path) == "global" and network_normalization(speaker.final_path, "utterance") == "utterance"


def test_frame_subsampling_refuses_batches_that_are_not_frames(tmp_path: Path) -> None:
    # The shared loop trains other models too (the MNIST MLPs): their batches have no frames to thin.
    from asr_kd.train.loop import train

    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]

    def loss(model, batch):  # noqa: ANN001, ANN202
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1]), {}

    cfg = dataclasses.replace(BASE, frame_subsampling=2, num_epochs=1)
    with pytest.raises(ConfigError, match="train.frame_subsampling=2 thins batches of frames .*set train.frame_subsampling=1"):
        train(torch.nn.Linear(3, 2), lambda epoch, skip: batches, loss, None, cfg, tmp_path / "mlp")
    assert train(torch.nn.Linear(3, 2), lambda epoch, skip: batches, loss, None, dataclasses.replace(cfg, frame_subsampling=1),
                 tmp_path / "plain").state.step == 1
