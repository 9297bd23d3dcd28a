"""Stage 3's DNN realignment (asr_kd/stages/s3_realign.py) on the 'tiny' corpus: a first-pass DNN
trained on the GMM's alignments aligns every part again, with a record like every stage's."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.config import TrainConfig, load_config
from asr_kd.data.alignments import load_alignment
from asr_kd.decode.priors import load_priors, priors_from_alignments
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.models.dnn import load_dnn_config
from asr_kd.stages.common import alignment_inputs, model_checkpoint, read_senones
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import read_record
from asr_kd.stages.s3_realign import realign_with_dnn
from asr_kd.train.frame_classifier import load_frame_classifier
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.usefixtures("one_torch_thread")]

PARTS = ["train-clean-100", "dev-clean", "test-clean", "test-ood"]


@pytest.fixture(scope="module")
def realigned(tiny_stage3: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory):
    data, _, gmm_exp = tiny_stage3
    exp = tmp_path_factory.mktemp("realign") / "exp"
    shutil.copytree(gmm_exp / "gmm", exp / "gmm", symlinks=True)
    layout = RecipeLayout(data, exp, ood_part="test-ood", alignments="dnn")
    train = load_config(TrainConfig, REPO_ROOT / "egs" / "tiny_kd" / "conf" / "train.yaml")
    summary = realign_with_dnn(layout, load_dnn_config("tiny"), train, results_md=exp / "RESULTS.md", command="test")
    return layout, train, summary


def _labels(layout: RecipeLayout, part: str) -> dict[str, np.ndarray]:
    return {c.id: load_alignment(c) for c in layout.open_cuts(layout.ali_cuts(part))}


def test_every_part_is_realigned_and_the_summary_counts_what_changed(realigned) -> None:
    layout, _, summary = realigned
    gmm = dataclasses.replace(layout, alignments="gmm")
    assert [p["part"] for p in summary["parts"]] == PARTS
    for stats in summary["parts"]:
        new, old = _labels(layout, stats["part"]), _labels(gmm, stats["part"])
        assert stats["aligned"] == len(new) >= 0.8 * len(old) and stats["aligned"] + stats["failed"] == stats["cuts"]
        both = [u for u in new if u in old]
        assert all(len(new[u]) == len(old[u]) for u in both)  # the same frames, relabelled
        assert stats["frames"] == sum(len(new[u]) for u in both)
        assert stats["changed"] == sum(int((new[u] != old[u]).sum()) for u in both)
        assert 0 < stats["changed"] < stats["frames"]  # neither a copy of the GMM's labels nor unrelated ones
    text = (layout.exp_dir / "RESULTS.md").read_text()
    train = summary["parts"][0]
    assert f"| train-clean-100 | {train['cuts']} | {train['gmm_aligned']} | {train['aligned']} | {train['failed']} | " \
           f"{100 * train['changed'] / train['frames']:.1f}% |" in text


def test_new_labels_follow_the_aligner_and_priors_are_counted_on_them(realigned) -> None:
    layout, _, _ = realigned
    gmm = dataclasses.replace(layout, alignments="gmm")
    num_senones = read_senones(layout).num_senones
    new, old = _labels(layout, "train-clean-100"), _labels(gmm, "train-clean-100")
    priors = load_priors(layout.log_priors, num_senones)
    assert np.isclose(np.exp(priors).sum(), 1.0, atol=1e-4)
    np.testing.assert_allclose(priors, priors_from_alignments(new.values(), num_senones), atol=1e-6)
    assert not np.allclose(priors, load_priors(gmm.log_priors, num_senones))
    # The realigned labels are the aligner's Viterbi path: its frame-wise best senone agrees with
    # them more often than with the GMM's labels it was trained on.
    aligner = load_frame_classifier(model_checkpoint(layout.realign / "aligner"))
    cuts = [c for c in layout.open_cuts(gmm.ali_cuts("dev-clean")) if c.id in _labels(layout, "dev-clean")]
    new_dev, old_dev = _labels(layout, "dev-clean"), _labels(gmm, "dev-clean")
    agree_new = agree_old = frames = 0
    with torch.no_grad():
        for cut, log_probs in ensemble_log_posteriors([aligner], cuts, layout.open_cmvn("dev-clean")):
            best = log_probs.numpy().argmax(axis=1)
            agree_new += int((best == new_dev[cut.id]).sum())
            agree_old += int((best == old_dev[cut.id]).sum())
            frames += len(best)
    assert agree_new > agree_old + 0.02 * frames, (agree_new, agree_old, frames)


def test_the_record_chains_to_stage_3_and_a_changed_config_redoes_it(realigned) -> None:
    layout, train, summary = realigned
    record = read_record(layout.realign)
    gmm_fp = read_record(layout.gmm).fingerprint
    assert record.inputs == {"gmm": gmm_fp} and record.config["train"]["seed"] == train.seed + 500
    assert alignment_inputs(layout) == {"gmm": gmm_fp, "realign": record.fingerprint}
    assert alignment_inputs(dataclasses.replace(layout, alignments="gmm")) == {"gmm": gmm_fp}
    # The same settings: skipped, nothing rewritten.
    assert realign_with_dnn(layout, load_dnn_config("tiny"), train) == summary and read_record(layout.realign) == record
    # Another training length: redone and recorded.
    again = realign_with_dnn(layout, load_dnn_config("tiny"), dataclasses.replace(train, num_epochs=2))
    assert read_record(layout.realign).config["train"]["num_epochs"] == 2 != record.config["train"]["num_epochs"]
    assert json.loads((layout.realign / "summary.json").read_text()) == again
    assert again["aligner"]["steps"] < summary["aligner"]["steps"]


def test_dnn_labels_that_were_never_made_name_the_realignment(tiny_stage3: tuple[Path, Path, Path]) -> None:
    from asr_kd.errors import DataError

    data, _, gmm_exp = tiny_stage3  # stage 3's GMM only: no exp/realign
    with pytest.raises(DataError, match=r"realign/ali/senones.json does not exist; run stage 3's DNN realignment .*asr-kd realign"):
        read_senones(RecipeLayout(data, gmm_exp, alignments="dnn"))
    with pytest.raises(DataError, match=r"run the DNN realignment \(run.sh --alignments dnn --stage 3\)"):
        alignment_inputs(RecipeLayout(data, gmm_exp, alignments="dnn"))
