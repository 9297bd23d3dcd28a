"""The stage engine's one skip/redo rule (asr_kd/stages/provenance.py) on small real folders."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest

from asr_kd.config import KdConfig, TrainConfig
from asr_kd.errors import ConfigError, DataError
from asr_kd.stages.provenance import (
    IN_PROGRESS_NAME, RECORD_NAME, StageGuard, config_dict, differences, fingerprint, listing_fingerprint, read_record,
)


def _run(folder: Path, config: object, inputs: dict[str, str] | None = None, on_change: str = "redo", payload: str = "x") -> tuple[bool, StageGuard]:
    """One stage run: returns whether the work ran, and the guard."""
    guard = StageGuard("test stage", folder, config, inputs or {}, "cmd", on_change=on_change)
    ran = guard.needs_work()
    if ran:
        (folder / "out.txt").write_text(payload)
        guard.finish(["out.txt"])
    return ran, guard


def test_fingerprint_ignores_key_order_and_neutral_keys_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    # num_jobs and logging cadence change speed, never results: not part of the config.
    assert config_dict(TrainConfig(log_every_steps=5)) == config_dict(TrainConfig(log_every_steps=50))
    assert config_dict(TrainConfig(lr=1e-3)) != config_dict(TrainConfig(lr=2e-3))
    assert "num_jobs" not in config_dict({"num_jobs": 4, "x": 1})


def test_an_option_added_later_is_recorded_only_away_from_its_default(tmp_path: Path) -> None:
    import dataclasses

    from asr_kd.config import later_option

    @dataclasses.dataclass(frozen=True)
    class Before:
        lr: float = 0.1

    @dataclasses.dataclass(frozen=True)
    class After:
        lr: float = 0.1
        width: int = later_option(0)

    # A run recorded before the option existed matches the same settings after it was added...
    assert config_dict(After()) == config_dict(Before()) == {"lr": 0.1}
    assert fingerprint(After()) == fingerprint(Before())
    assert _run(tmp_path, Before())[0] and not _run(tmp_path, After())[0]
    # ...and setting it is a changed config, recorded by value.
    assert config_dict(After(width=8)) == {"lr": 0.1, "width": 8}
    ran, guard = _run(tmp_path, After(width=8))
    assert ran and read_record(tmp_path).config == {"lr": 0.1, "width": 8}


def test_matching_record_is_skipped_and_changed_config_is_redone(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    assert _run(folder, KdConfig(temperature=2.0))[0]
    rec = read_record(folder)
    assert rec is not None and rec.config["temperature"] == 2.0 and rec.outputs["out.txt"]["bytes"] == 1
    assert not _run(folder, KdConfig(temperature=2.0))[0]
    # A changed T redoes the stage, and the record then says what ran.
    (folder / "stale.bin").write_bytes(b"old")
    assert _run(folder, KdConfig(temperature=5.0), payload="yy")[0]
    rec = read_record(folder)
    assert rec is not None and rec.config["temperature"] == 5.0 and rec.outputs["out.txt"]["bytes"] == 2
    assert not (folder / "stale.bin").exists(), "outputs of the old settings must be removed on a redo"


def test_a_skip_says_when_older_code_made_the_outputs_it_keeps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from asr_kd.stages.provenance import code_version

    folder = tmp_path / "stage"
    _run(folder, {"T": 2})
    with caplog.at_level("INFO", logger="asr_kd.stages.provenance"):
        assert not _run(folder, {"T": 2})[0]
    assert caplog.text.rstrip().endswith("skipping")  # made by this code: nothing to add
    # The code version is recorded, not compared: a record of other code is still kept, and the log says so.
    old = dataclasses.replace(read_record(folder), code_version="git 0000000")
    (folder / RECORD_NAME).write_text(old.to_json())
    caplog.clear()
    with caplog.at_level("INFO", logger="asr_kd.stages.provenance"):
        assert not _run(folder, {"T": 2})[0]
    assert (f"skipping (made by git 0000000, whose code may differ from today's {code_version()}: remove {folder} to redo it "
            "with this code)") in caplog.text  # a commit this checkout lacks: it cannot tell
    # The project's first commit had other code: it says so.
    import subprocess

    from tests.conftest import REPO_ROOT

    first = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-list", "--max-parents=0", "HEAD"], capture_output=True, text=True)
    if first.returncode == 0 and first.stdout.strip():
        (folder / RECORD_NAME).write_text(dataclasses.replace(old, code_version="git " + first.stdout.split()[0][:7]).to_json())
        caplog.clear()
        with caplog.at_level("INFO", logger="asr_kd.stages.provenance"):
            assert not _run(folder, {"T": 2})[0]
        assert f"whose code differs from today's {code_version()}: remove {folder}" in caplog.text


def test_stop_policy_names_the_differing_keys_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    _run(folder, KdConfig(temperature=2.0, top_k=20))
    with pytest.raises(ConfigError) as err:
        _run(folder, KdConfig(temperature=5.0, top_k=20), on_change="stop")
    msg = str(err.value)
    assert "\n" not in msg and "temperature: 2.0 -> 5.0" in msg and "--on-change redo (run.sh; ASR_KD_ON_CHANGE=redo for an asr-kd command)" in msg and "top_k" not in msg
    assert read_record(folder).config["temperature"] == 2.0  # nothing was touched


def test_changed_input_fingerprint_redoes(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    _run(folder, {"a": 1}, {"upstream": "aaaa"})
    assert not _run(folder, {"a": 1}, {"upstream": "aaaa"})[0]
    ran, guard = _run(folder, {"a": 1}, {"upstream": "bbbb"})
    assert ran and guard.record is not None and guard.record.inputs == {"upstream": "bbbb"}
    assert differences({"a": 1}, {"a": 1}, {"upstream": "aaaa"}, {"upstream": "bbbb"}) == ["input upstream: aaaa -> bbbb"]


def test_deleted_record_redoes_with_new_config_and_saves_what_ran(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    _run(folder, {"T": 2})
    (folder / RECORD_NAME).unlink()
    ran, _ = _run(folder, {"T": 5}, payload="new")
    assert ran and read_record(folder).config == {"T": 5} and (folder / "out.txt").read_text() == "new"


def test_copied_folder_with_new_mtimes_is_not_redone(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    _run(folder, {"T": 2})
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, copy_function=shutil.copy)  # plain copy: new modification times
    assert not _run(copy, {"T": 2})[0]


def test_truncated_output_is_detected_and_redone(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    _run(folder, {"T": 2}, payload="abcdef")
    (folder / "out.txt").write_text("abc")  # truncated after the stage finished
    ran, _ = _run(folder, {"T": 2}, payload="abcdef")
    assert ran and (folder / "out.txt").read_text() == "abcdef"


def test_interrupted_run_resumes_only_with_the_same_settings(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    guard = StageGuard("s", folder, {"T": 2}, {})
    assert guard.needs_work()
    (folder / "checkpoint.pt").write_text("half")  # killed here: no record
    assert json.loads((folder / IN_PROGRESS_NAME).read_text())["config_fingerprint"] == guard.config_fingerprint
    # Same settings: the partial work stays for the resume.
    assert StageGuard("s", folder, {"T": 2}, {}).needs_work() and (folder / "checkpoint.pt").is_file()
    # Other settings: the partial work of T=2 is removed before T=5 starts.
    assert StageGuard("s", folder, {"T": 5}, {}).needs_work() and not (folder / "checkpoint.pt").exists()


def test_finish_refuses_a_missing_output(tmp_path: Path) -> None:
    guard = StageGuard("s", tmp_path / "stage", {"T": 2}, {})
    guard.needs_work()
    with pytest.raises(DataError, match="was not written"):
        guard.finish(["never.txt"])
    assert read_record(tmp_path / "stage") is None


def test_listing_fingerprint_sees_a_changed_file_but_not_a_copy(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "p" / "1").mkdir(parents=True)
    (corpus / "p" / "1" / "a.flac").write_bytes(b"1234")
    before = listing_fingerprint(corpus, ["p"])
    shutil.copytree(corpus, tmp_path / "copy")
    assert listing_fingerprint(tmp_path / "copy", ["p"]) == before
    (corpus / "p" / "1" / "a.flac").write_bytes(b"12345")
    assert listing_fingerprint(corpus, ["p"]) != before


def test_all_files_leaves_out_linked_folders_and_the_record(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "theirs.pt").write_text("not ours")
    guard = StageGuard("s", tmp_path / "stage", {"T": 2}, {})
    guard.needs_work()
    (guard.folder / "sub").mkdir()
    (guard.folder / "sub" / "ours.txt").write_text("1")
    (guard.folder / "linked").symlink_to(other, target_is_directory=True)
    # Another writer's temporaries (a file, a folder) are never outputs.
    (guard.folder / ".units.tmp1a2b.json").write_text("{}")
    (guard.folder / ".storage.tmp9").mkdir()
    (guard.folder / ".storage.tmp9" / "part.npy").write_bytes(b"1")
    assert guard.all_files() == [guard.folder / "sub" / "ours.txt"]
    guard.finish(guard.all_files())
    assert set(read_record(guard.folder).outputs) == {"sub/ours.txt"}


def test_unrecorded_contents_are_emptied_unless_adopted(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "made_by_hand.txt").write_text("keep?")
    assert StageGuard("s", folder, {"T": 2}, {}, adopt_unrecorded=True).needs_work()
    assert (folder / "made_by_hand.txt").is_file()  # left to the stage's own reuse-or-refuse logic
    (folder / IN_PROGRESS_NAME).unlink()
    assert StageGuard("s", folder, {"T": 2}, {}).needs_work()
    assert not (folder / "made_by_hand.txt").exists()


def test_only_rank_0_of_a_torchrun_job_touches_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "stage"
    _run(folder, {"T": 2})
    (folder / "extra.bin").write_bytes(b"1")
    monkeypatch.setenv("RANK", "1")
    assert StageGuard("s", folder, {"T": 5}, {}).is_main  # a stray RANK without a torchrun job: rank 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    other = StageGuard("s", folder, {"T": 5}, {})
    assert other.needs_work() and (folder / "extra.bin").is_file() and read_record(folder).config == {"T": 2}
    (folder / "out.txt").write_text("rank 1")
    with pytest.raises(DataError, match="rank 0 wrote no record"):
        other.wait_for_main(timeout=0.5)  # what finish() does on rank 1: wait for rank 0's record
    # Rank 0's finished record of other settings, there for longer than disagree_after: the
    # ranks disagree on what the stage is made of (an hour's silent wait before).
    with pytest.raises(DataError, match=r"rank 0's record .* differs from this rank's settings \(T: 2 -> 5\)"):
        other.wait_for_main(timeout=5.0, disagree_after=0.3)
    # A note left by a crash after the record was written hides nothing (rank 0 removes a record
    # before it works, so a record and a note together are a stale note).
    (folder / IN_PROGRESS_NAME).write_text("{}")
    with pytest.raises(DataError, match="differs from this rank's settings"):
        other.wait_for_main(timeout=5.0, disagree_after=0.3)
    (folder / IN_PROGRESS_NAME).unlink()
    assert read_record(folder).config == {"T": 2}  # rank 1 wrote nothing
    # finish() on rank 1 hashes nothing (rank 0 may still be writing) and returns rank 0's record.
    same = StageGuard("s", folder, {"T": 2}, {})
    assert same.finish(["not_written_here.bin"]) == read_record(folder) == same.record
    # Outputs broken under a matching record: rank 0 will redo the stage, so this rank does not
    # take the old record for rank 0's answer.
    (folder / "out.txt").write_text("changed")
    broken = StageGuard("s", folder, {"T": 2}, {})
    assert broken.needs_work() and broken.record is None
    with pytest.raises(DataError, match="rank 0 wrote no record"):
        broken.wait_for_main(timeout=0.5)
    monkeypatch.setenv("RANK", "0")
    assert StageGuard("s", folder, {"T": 5}, {}).needs_work() and not (folder / "extra.bin").exists()


def test_results_files_written_by_the_stages_do_not_make_the_code_dirty(tmp_path: Path) -> None:
    """A run rewrites recipes/*/RESULTS.md and its plots as it goes; only code, scripts and configs
    count as local modifications in a record's code version."""
    import subprocess

    from asr_kd.stages.provenance import code_is_modified

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    for rel in ("asr_kd/a.py", "recipes/r/run.sh", "recipes/r/RESULTS.md", "recipes/r/plot.png", "recipes/r/conf/x.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    assert not code_is_modified(tmp_path)
    (tmp_path / "recipes/r/RESULTS.md").write_text("v2\n")
    (tmp_path / "recipes/r/plot.png").write_text("v2\n")
    assert not code_is_modified(tmp_path)
    (tmp_path / "recipes/r/conf/x.yaml").write_text("v2\n")
    assert code_is_modified(tmp_path)


def test_record_says_what_the_work_cost_including_child_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = tmp_path / "stage"
    guard = StageGuard("s", folder, {"T": 2}, {})
    assert guard.needs_work()
    # The work runs in a child (as the job pools and torchrun do): 0.3 s of CPU and 300 MiB touched.
    burn = "x = b'\\x01' * (300 << 20)\nimport time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    (folder / "out.bin").write_bytes(b"z" * 1000)
    res = guard.finish(["out.bin"]).resources
    assert res["cpu_s"] >= 0.3 and res["peak_rss_mb"] >= 300 and res["wall_s"] >= 0.3
    assert res["disk_bytes"] == 1000 and res["resumed"] is False
    # A skipped rerun keeps the record (and the costs) of the run that made the outputs.
    again = StageGuard("s", folder, {"T": 2}, {})
    assert not again.needs_work() and again.record is not None and again.record.resources == res


def test_resumed_run_is_marked_and_old_records_without_costs_still_read(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    assert StageGuard("s", folder, {"T": 2}, {}).needs_work()  # killed before finishing
    guard = StageGuard("s", folder, {"T": 2}, {})
    assert guard.needs_work()
    (folder / "out.txt").write_text("x")
    assert guard.finish(["out.txt"]).resources["resumed"] is True
    data = json.loads((folder / RECORD_NAME).read_text())
    del data["resources"]  # a record written before costs were recorded
    (folder / RECORD_NAME).write_text(json.dumps(data))
    rec = read_record(folder)
    assert rec is not None and rec.resources == {}
    assert not StageGuard("s", folder, {"T": 2}, {}).needs_work()


def test_a_tree_copied_without_git_names_its_commit_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU machine or cluster node gets the tree without .git: ASR_KD_CODE_VERSION names the commit.
    from asr_kd.stages.provenance import code_version

    monkeypatch.setenv("ASR_KD_CODE_VERSION", "git abc1234")
    assert code_version() == "git abc1234"
    monkeypatch.setenv("ASR_KD_CODE_VERSION", "  ")
    assert code_version().startswith(("git ", "asr-kd ")) and code_version() != "git abc1234"


def test_trained_checkpoints_name_best_pt_where_a_run_kept_one(tmp_path: Path) -> None:
    from asr_kd.stages.common import trained_checkpoints

    (tmp_path / "final.pt").write_bytes(b"x")
    assert trained_checkpoints(tmp_path) == [tmp_path / "final.pt"]
    (tmp_path / "best.pt").write_bytes(b"x")
    assert trained_checkpoints(tmp_path) == [tmp_path / "final.pt", tmp_path / "best.pt"]


def test_a_stage_built_on_an_input_redone_since_is_refused_two_stages_down(tmp_path: Path) -> None:
    """Stage 1 redone with other features, stage 3 not: stage 4 and later used to train on the new
    fbank features beside stage 3's record (whose own fingerprint had not changed). Likewise the
    teachers, after stage 3 was redone, and a student after stage 4 was."""
    from asr_kd.stages.common import alignment_inputs, gmm_record, student_record, teachers_record
    from asr_kd.stages.layout import RecipeLayout

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    _, features = _run(layout.features("fbank"), {"num_mel_bins": 40})
    _, gmm = _run(layout.gmm, {"gmm": 1}, {"features": features.record.fingerprint})
    _, teachers = _run(layout.teachers, {"num_teachers": 2}, alignment_inputs(layout))
    student = layout.student_dir("distilled")  # online: trained on the teachers themselves
    _run(student, {"kd": 1}, {**alignment_inputs(layout), "teachers": teachers.record.fingerprint})
    # stored (kd.mode's default): trained on stage 5's targets, named in its summary.json
    soft_dir = layout.soft_root / "teachers2_arithmetic_T2_k10"
    _, soft = _run(soft_dir, {"temperature": 2}, {"teachers": teachers.record.fingerprint, **alignment_inputs(layout)})
    stored = layout.student_dir("compressed")
    _run(stored, {"kd": 2}, {**alignment_inputs(layout), "soft_targets": soft.record.fingerprint})
    (stored / "summary.json").write_text(json.dumps({"soft_targets_dir": soft_dir.name}))
    assert gmm_record(layout).fingerprint == gmm.record.fingerprint
    assert teachers_record(layout).fingerprint == teachers.record.fingerprint
    assert student_record(layout, student, "stage 6").inputs["teachers"] == teachers.record.fingerprint
    assert student_record(layout, stored, "stage 6").inputs["soft_targets"] == soft.record.fingerprint
    # Stage 5 redone (its record deleted; the new targets differ): the stored student was trained on the old ones.
    (soft_dir / RECORD_NAME).unlink()
    _run(soft_dir, {"temperature": 2}, {"teachers": teachers.record.fingerprint, **alignment_inputs(layout)}, payload="x2")
    assert read_record(soft_dir).fingerprint != soft.record.fingerprint
    with pytest.raises(DataError, match=rf"^{stored} was made from an earlier run of its input 'soft_targets' .*; run stage 6 again first$"):
        student_record(layout, stored, "stage 6")
    # Stage 4 redone (other settings): the online student was trained on the old teachers, and
    # the stored student's targets were made from them.
    _run(layout.teachers, {"num_teachers": 3}, alignment_inputs(layout))
    with pytest.raises(DataError, match=rf"^{student} was made from an earlier run of its input 'teachers' .*; run stage 6 again first$"):
        student_record(layout, student, "stage 6")
    with pytest.raises(DataError, match=rf"^{soft_dir} was made from an earlier run of its input 'teachers' .*; run stage 5 \(soft targets\) again first$"):
        student_record(layout, stored, "stage 6")
    # Stage 1 redone with other settings, stage 3 not: everything on stage 3 is refused.
    _run(layout.features("fbank"), {"num_mel_bins": 80}, payload="y")
    with pytest.raises(DataError, match=rf"^{layout.gmm} was made from an earlier run of its input 'features' .*; run stage 3 \(asr-kd train-gmm\) again first$"):
        teachers_record(layout)
    # Stage 3 redone on the new features: the teachers (trained on the old alignments) are refused,
    # and so is the DNN realignment made from the old GMM (--alignments dnn).
    dnn = dataclasses.replace(layout, alignments="dnn")
    _run(dnn.realign, {"dnn": 1}, {"gmm": gmm.record.fingerprint})
    _run(layout.gmm, {"gmm": 1}, {"features": read_record(layout.features("fbank")).fingerprint}, payload="z")
    with pytest.raises(DataError, match=rf"^{layout.teachers} was made from an earlier run of its input 'gmm'"):
        teachers_record(layout)
    with pytest.raises(DataError, match=rf"^{dnn.realign} was made from an earlier run of its input 'gmm' .*; run the DNN realignment"):
        alignment_inputs(dnn)
    _run(dnn.realign, {"dnn": 1}, {"gmm": read_record(layout.gmm).fingerprint})  # realigned again: accepted
    assert alignment_inputs(dnn) == {"gmm": read_record(layout.gmm).fingerprint, "realign": read_record(dnn.realign).fingerprint}


def test_ctc_models_built_on_features_redone_since_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Stage 1 redone, the CTC models not: a CTC student, the stored targets and stage 7 used to
    take the old teachers and phone start (their records were only checked to exist) beside the
    new features, as the hybrid stages never do."""
    from asr_kd.config import CtcConfig
    from asr_kd.stages.ctc_common import ctc_student_record, model_inputs_now, phone_init_inputs, teacher_set_record, trained_teacher_sets
    from asr_kd.stages.layout import RecipeLayout

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp", ctc_units="bpe")
    phone = dataclasses.replace(layout, ctc_units="phone")
    cfg = CtcConfig(units="bpe", num_teachers=2, phone_init_steps=5)
    _, features = _run(layout.features("fbank"), {"num_mel_bins": 40})
    fbank = {"features": features.record.fingerprint}
    _, phone_units = _run(phone.ctc_units_dir, {"units": "phone"})
    _, units = _run(layout.ctc_units_dir, {"units": "bpe"}, fbank)
    _, start = _run(layout.ctc_phone_init, {"ctc": {"phone_init_steps": 5}}, {"units": phone_units.record.fingerprint, **fbank})
    made_on = {"units": units.record.fingerprint, **fbank, "phone_init": start.record.fingerprint}
    teacher_sets = {}
    for steps in (0, 9):
        _, guard = _run(layout.ctc_teacher_set(steps), {"ctc": {"num_teachers": 2}}, made_on)
        teacher_sets[steps] = guard.record.fingerprint
    student = layout.ctc_student_dir("frame")
    _run(student, {"ctc": {"shared_init_steps": 0, "guide_weight": 0.0}}, {**made_on, "teachers": teacher_sets[0]})
    assert model_inputs_now(layout) == made_on
    assert phone_init_inputs(layout, cfg) == {"phone_init": start.record.fingerprint}
    assert teacher_set_record(layout, cfg).fingerprint == teacher_sets[0]
    assert [c.shared_init_steps for c in trained_teacher_sets(layout, cfg)] == [0, 9]
    assert ctc_student_record(layout, "frame", "stage 6").inputs["teachers"] == teacher_sets[0]
    # The shared set retrained on the same inputs: the student (of the independent set) still stands;
    # the independent set retrained: the student was distilled from the old one.
    _run(layout.ctc_teacher_set(9), {"ctc": {"num_teachers": 3}}, made_on)
    assert ctc_student_record(layout, "frame", "stage 6").fingerprint == read_record(student).fingerprint
    _run(layout.ctc_teacher_set(0), {"ctc": {"num_teachers": 3}}, made_on)
    with pytest.raises(DataError, match=rf"^{student} was made from an earlier run of its input 'teachers' .*; run stage 6 again first$"):
        ctc_student_record(layout, "frame", "stage 6")
    # Stage 1 redone with other settings: the phone start, every teacher set and the student stand on old features.
    _run(layout.features("fbank"), {"num_mel_bins": 80}, payload="y")
    with pytest.raises(DataError, match=rf"^{layout.ctc_phone_init} was made from an earlier run of its input 'features'"):
        phone_init_inputs(layout, cfg)
    with pytest.raises(DataError, match=rf"^{layout.ctc_teacher_set(0)} was made from an earlier run of its input 'features' .*; run asr-kd ctc-train-teachers"):
        teacher_set_record(layout, cfg)
    with pytest.raises(DataError, match=rf"^{student} was made from an earlier run of its input 'features'"):
        ctc_student_record(layout, "frame", "stage 6")
    with caplog.at_level(logging.WARNING, logger="asr_kd.stages.ctc_common"):
        assert trained_teacher_sets(layout, cfg) == []
    assert sum("left out: made from an earlier run of its input 'features'" in r.getMessage() for r in caplog.records) == 2
    # The phone units redone (the phone start's own units), features as they were: refused too.
    fresh = {"features": read_record(layout.features("fbank")).fingerprint}
    _run(layout.ctc_phone_init, {"ctc": {"phone_init_steps": 5}}, {"units": phone_units.record.fingerprint, **fresh})
    assert set(phone_init_inputs(layout, cfg)) == {"phone_init"}
    _run(phone.ctc_units_dir, {"units": "phone", "again": 1})
    with pytest.raises(DataError, match=rf"^{layout.ctc_phone_init} was made from an earlier run of its input 'units'"):
        phone_init_inputs(layout, cfg)
