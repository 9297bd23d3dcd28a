"""The CTC path end to end on the 'tiny' corpus: units, two teachers (independent, from a
shared initial checkpoint, and guided by teacher 0's spikes), the spike report, baseline / frame-level / sequence-level students,
stored CTC soft targets, greedy / prefix-beam / HLG decoding and the RESULTS.md rows.

Models are 'tiny' and trained for a few dozen steps: the test checks what each step wrote and
that training lowered the CTC loss, not that the models are good.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import threading
import time

import pytest
import torch
from lhotse import load_manifest_lazy

from asr_kd.bin.cli import main as cli_main
from asr_kd.config import CtcConfig, DecodeConfig, TrainConfig
from asr_kd.errors import ConfigError, DataError
from asr_kd.ctc.kd import CtcFrameKdLoss
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.training import evaluate_ctc, load_ctc_model
from asr_kd.launch import Launcher
from asr_kd.stages.ctc_common import load_ctc_teachers, prepare_units
from asr_kd.stages.ctc_s4_teachers import train_ctc_teachers
from asr_kd.stages.ctc_s5_spikes import spike_report
from asr_kd.stages.ctc_s6_students import ctc_pseudo_dir, make_ctc_soft_targets, make_pseudo_labels, train_ctc_student, train_ctc_students
from asr_kd.stages.ctc_s7_decode import decode_ctc_systems
from asr_kd.data.ctc_data import CtcDataset
from asr_kd.data.frames import make_loader, make_sampler
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.soft_targets import load_soft_targets
from asr_kd.report.results_md import read_section
from asr_kd.stages.layout import RecipeLayout
from asr_kd.utils import folder_lock
from asr_kd.stages.provenance import RECORD_NAME, read_record
from asr_kd.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TRAIN = TrainConfig(max_duration=60.0, num_epochs=100, max_steps=40, warmup_steps=10, lr=3e-3, log_every_steps=10,
                    checkpoint_every_steps=1000, amp="none", device="cpu", best_metric="token_error_rate", best_mode="min")
CTC = CtcConfig(units="phone", model_size="tiny", dropout=0.0, num_teachers=2, top_k=8)


@pytest.fixture(scope="module")
def ctc_run(tiny_stage2, tmp_path_factory):
    """Teachers (independent and shared-init), spike report and the three students, trained once."""
    data, _ = tiny_stage2
    exp = tmp_path_factory.mktemp("ctc_stages") / "exp"
    layout = RecipeLayout(data, exp, ctc_units="phone")
    md = exp / "RESULTS.md"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teachers = train_ctc_teachers(layout, CTC, TRAIN, results_md=md, command="test")
        shared = dataclasses.replace(CTC, shared_init_steps=15)
        # Through the launcher's Slurm path on this machine: the shared first steps are a job too.
        train_ctc_teachers(layout, shared, dataclasses.replace(TRAIN, max_steps=25), results_md=md, command="test",
                           launcher=Launcher("submitit-local"))
        guided = train_ctc_teachers(layout, dataclasses.replace(CTC, guide_weight=1.0), dataclasses.replace(TRAIN, max_steps=25),
                                    results_md=md, command="test")
        student_train = dataclasses.replace(TRAIN, max_steps=20)
        students = {kind: train_ctc_student(layout, kind, CTC, student_train, results_md=md, command="test")
                    for kind in ("baseline", "frame", "sequence")}
        # A second seed of the baseline (CTC stage 7 makes the two one row), through the launcher's
        # Slurm path on this machine: seed 0 is up to date and skipped, seed 1 is a submitit job.
        launched = train_ctc_students(layout, CTC, student_train, kinds=["baseline"], num_seeds=2, results_md=md, command="test",
                                      launcher=Launcher("submitit-local"))
        assert launched["baseline"][0] == students["baseline"]
        students["baseline_seed1"] = launched["baseline"][1]
        # A seed made with other settings (as after a config change with fewer --num-seeds): never averaged in.
        train_ctc_student(layout, "sequence", CTC, dataclasses.replace(student_train, max_steps=10), results_md=md, command="test", seed_index=1)
    finally:
        torch.set_num_threads(before)
    return layout, md, teachers, students, guided


def _dev_loader(layout: RecipeLayout):
    units = prepare_units(layout, CTC)
    dataset = CtcDataset(layout.open_cmvn(layout.dev_part), units.encode)
    return make_loader(dataset, make_sampler(layout.open_cuts(layout.fbank_cuts(layout.dev_part)), 60.0, shuffle=False, seed=0, bucketing=False))


def test_teachers_lower_the_ctc_loss(ctc_run) -> None:
    layout, md, teachers, _, _ = ctc_run
    units = prepare_units(layout, CTC)
    torch.manual_seed(TRAIN.seed)
    untrained = CtcEncoder(40, units.num_tokens, "tiny", dropout=0.0).eval()
    with torch.no_grad():
        before = evaluate_ctc(untrained, _dev_loader(layout), torch.device("cpu"))
        for i in range(len(teachers)):
            after = evaluate_ctc(load_ctc_model(layout.ctc_teacher_set(0) / f"teacher{i}" / "final.pt"), _dev_loader(layout), torch.device("cpu"))
            assert after["loss"] < 0.8 * before["loss"]
    assert [t["steps"] for t in teachers] == [40, 40]
    assert (layout.ctc_teacher_set(15) / "init" / "final.pt").is_file()
    # The shared set's first steps and its teachers ran as submitit jobs (their answers), not in this process.
    jobs = layout.exp_dir / "log"
    name = layout.ctc_teacher_set(15).name
    assert json.loads((jobs / f"ctc_phone_stage4_{name}_init" / "task0.result.json").read_text())["result"] == {
        "$path": str(layout.ctc_teacher_set(15) / "init" / "final.pt")}
    assert [json.loads((jobs / f"ctc_phone_stage4_{name}" / f"task{i}.result.json").read_text())["result"]["$dict"]["steps"]
            for i in range(2)] == [25, 25]
    assert read_record(layout.ctc_teacher_set(15)).config["ctc"]["shared_init_steps"] == 15
    section = read_section(md, "## CTC teachers (phone, independent)")
    assert section and "| teacher1 | 1 | 40 |" in section
    # Where the stage ran, from its record (the same line as the hybrid sections).
    record = read_record(layout.ctc_teacher_set(0))
    assert f"torch {record.environment['torch']}" in section and f"({record.code_version})." in section
    assert read_section(md, "## CTC teachers (phone, shared init 15 steps)")


def test_guided_teachers_share_the_guide(ctc_run) -> None:
    layout, md, teachers, _, guided = ctc_run
    guided_dir = layout.ctc_teacher_set(0, 1.0)
    assert guided_dir.name == "teachers_guided1"
    # teacher0 is the independent set's teacher0 (linked, not retrained); teacher1 was guided.
    assert (guided_dir / "teacher0").is_symlink() and (guided_dir / "teacher0").resolve() == (layout.ctc_teacher_set(0) / "teacher0").resolve()
    assert guided[0]["steps"] == teachers[0]["steps"] == 40 and guided[1]["steps"] == 25
    events = list((guided_dir / "teacher1" / "tensorboard").rglob("events.out.tfevents*"))
    assert events and any(b"train/guide_loss" in e.read_bytes() for e in events)  # the guided term was logged
    section = read_section(md, "## CTC teachers (phone, independent, guided 1)")
    assert section and "| teacher0 (guide) | 0 | 40 |" in section and "guided CTC" in section
    # Training again skips the set (its record matches): the link is kept and nothing is retrained.
    record = read_record(guided_dir)
    again = train_ctc_teachers(layout, dataclasses.replace(CTC, guide_weight=1.0), dataclasses.replace(TRAIN, max_steps=25))
    assert [t["steps"] for t in again] == [40, 25] and read_record(guided_dir) == record
    assert record.inputs["guide_set"] == read_record(layout.ctc_teacher_set(0)).fingerprint


def test_teachers_in_two_processes_equal_those_trained_in_turn(ctc_run, tmp_path, caplog) -> None:
    """--jobs 2 trains the set's teachers in two spawned processes: the same weights as the
    fixture's teachers, trained one after another in this process."""
    layout, _, teachers, _, _ = ctc_run
    other = RecipeLayout(layout.data_dir, tmp_path / "exp", ctc_units="phone")
    with caplog.at_level(logging.INFO, logger="asr_kd"):
        parallel = train_ctc_teachers(other, CTC, TRAIN, jobs=2, num_threads=1)
    assert "running 2 jobs in 2 local processes" in caplog.text
    assert re.search(r"2 CTC teachers trained in \d+ s in 2 local processes", caplog.text)
    assert parallel == teachers
    for i in range(CTC.num_teachers):
        a = load_checkpoint(layout.ctc_teacher_set(0) / f"teacher{i}" / "final.pt")["model"]
        b = load_checkpoint(other.ctc_teacher_set(0) / f"teacher{i}" / "final.pt")["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_guided_set_trains_its_teachers_in_two_processes_each_loading_the_guide(ctc_run, tmp_path, caplog) -> None:
    """A guided set of 3 with --jobs 2: teachers 1 and 2 are two processes, each loading the
    guide; teacher 1 equals the fixture's guided teacher 1, trained in this process."""
    layout, _, _, _, guided = ctc_run
    other = RecipeLayout(layout.data_dir, tmp_path / "exp", ctc_units="phone")
    for folder in (layout.ctc_units_dir, layout.ctc_teacher_set(0)):  # copied: their records still match
        shutil.copytree(folder, other.ctc_root / folder.name, symlinks=True)
    three = dataclasses.replace(CTC, guide_weight=1.0, num_teachers=3)
    with caplog.at_level(logging.INFO, logger="asr_kd"):
        got = train_ctc_teachers(other, three, dataclasses.replace(TRAIN, max_steps=25), jobs=2, num_threads=1)
    assert "running 2 jobs in 2 local processes" in caplog.text
    assert [t["steps"] for t in got] == [40, 25, 25] and got[:2] == guided
    events = list((other.ctc_teacher_set(0, 1.0) / "teacher2" / "tensorboard").rglob("events.out.tfevents*"))
    assert events and any(b"train/guide_loss" in e.read_bytes() for e in events)  # teacher 2 was guided too
    a = load_checkpoint(layout.ctc_teacher_set(0, 1.0) / "teacher1" / "final.pt")["model"]
    b = load_checkpoint(other.ctc_teacher_set(0, 1.0) / "teacher1" / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = load_checkpoint(other.ctc_teacher_set(0, 1.0) / "teacher2" / "final.pt")["model"]
    assert not torch.equal(b[next(iter(b))], c[next(iter(c))])  # its own seed


def test_a_shared_set_or_students_under_torchrun_with_two_jobs_are_refused_before_the_first_round(ctc_run, tmp_path, monkeypatch) -> None:
    """Under torchrun every model is one DDP job across the ranks: --jobs 2 is refused before the
    shared first steps train (one job, which alone would be allowed), and before the students'
    seed 0 (one job for one kind) trains, not after them."""
    layout, _, _, _, _ = ctc_run
    other = RecipeLayout(layout.data_dir, tmp_path / "exp", ctc_units="phone")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    shared = dataclasses.replace(CTC, shared_init_steps=15)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2.*--jobs 1 --cmd local \(got --jobs 2 --cmd local\)"):
        train_ctc_teachers(other, shared, TRAIN, jobs=2)
    assert not (other.ctc_teacher_set(15) / "init").exists()
    # The students the same way: seed 0 alone (one job) would be allowed, seeds 1 and 2 not; refused before seed 0.
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2.*\(got --jobs 2 --cmd local\)"):
        train_ctc_students(other, CTC, TRAIN, kinds=["baseline"], num_seeds=3, jobs=2)
    assert not other.ctc_student_dir("baseline").exists()


def test_spike_report_compares_every_teacher_set(ctc_run) -> None:
    layout, md, _, _, _ = ctc_run
    report = spike_report(layout, CTC, results_md=md, command="test")
    assert set(report) == {"independent", "shared init 15 steps", "independent, guided 1"}
    for s in report.values():
        assert s["mean_spike_offset_frames"] >= 0 and 0 <= s["argmax_disagreement"] <= 1 and s["num_models"] == 2
    assert json.loads((layout.ctc_root / "spikes" / "spike_report.json").read_text()) == report
    for png in (layout.ctc_root / "spikes" / "spike_timings.png", md.parent / "ctc_spike_timings_phone.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    section = read_section(md, "## CTC spike misalignment (phone)")
    assert section and "| independent | 2 |" in section and "| shared init 15 steps | 2 |" in section
    assert "| independent, guided 1 | 2 |" in section and "(ctc_spike_timings_phone.png)" in section


def test_students_and_pseudo_labels(ctc_run, monkeypatch) -> None:
    layout, md, _, students, _ = ctc_run
    for kind, summary in students.items():
        assert summary["steps"] == 20 and (layout.ctc_student_dir(kind) / "final.pt").is_file()
    for kind in ("frame", "sequence"):
        assert read_section(md, f"## CTC student: {kind} (phone)")
    # Seeds: seed + 1000 + k, recorded; the baseline's section lists both.
    assert [students["baseline"]["seed"], students["baseline_seed1"]["seed"]] == [TRAIN.seed + 1000, TRAIN.seed + 1001]
    assert read_record(layout.ctc_student_dir("baseline_seed1")).config["train"]["seed"] == TRAIN.seed + 1001
    section = read_section(md, "## CTC student: baseline (phone)")
    assert section and f"seed {TRAIN.seed + 1000}: 20 steps" in section and f"seed {TRAIN.seed + 1001}: 20 steps" in section
    with pytest.raises(ConfigError, match="_seed<k>"):
        train_ctc_student(layout, "baseline", CTC, TRAIN, name="baseline_seed2")
    assert "teachers" not in read_record(layout.ctc_student_dir("baseline")).inputs
    assert read_record(layout.ctc_student_dir("frame")).inputs["teachers"] == read_record(layout.ctc_teacher_set(0)).fingerprint
    # The pseudo-labels are made once, beside the students, for both sequence seeds.
    folder = ctc_pseudo_dir(layout, CTC)
    assert folder == layout.ctc_root / "pseudo_labels" / f"teachers_arithmetic_n{CTC.num_teachers}_greedy"
    labels = json.loads((folder / "labels.json").read_text())
    train_ids = {c.id for c in layout.open_cuts(layout.fbank_cuts(layout.train_part))}
    assert set(labels) == train_ids
    assert all(len(hyps) == 1 and hyps[0][1] == 1.0 and 0 not in hyps[0][0] for hyps in labels.values())
    record = read_record(folder)
    assert record.inputs["teachers"] == read_record(layout.ctc_teacher_set(0)).fingerprint
    assert record.inputs["features"] == read_record(layout.features("fbank")).fingerprint
    # The records made on the way name the command that made them (the units and pseudo-labels
    # used to record none; the stored soft targets: the next test).
    assert [read_record(d).command for d in (layout.ctc_units_dir, folder)] == ["test"] * 2
    made = record.finished
    assert made <= read_record(layout.ctc_student_dir("sequence")).finished  # made by seed 0, not remade by seed 1 after it
    assert not any(p.name.startswith("pseudo") for kind in ("sequence", "sequence_seed1") for p in layout.ctc_student_dir(kind).iterdir())
    units = prepare_units(layout, CTC)
    again = make_pseudo_labels(layout, CTC, units)
    assert read_record(folder).finished == made and {k: v[0][0] for k, v in again.items()} == {k: v[0][0] for k, v in labels.items()}
    # Under torchrun another rank waits for rank 0's record outside the folder's lock, which rank 0
    # holds while it makes the labels (a rank waiting inside it kept rank 0 out: a deadlock).
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    (folder / RECORD_NAME).rename(folder / "record.bak")  # rank 0 still at work: no record yet
    got: dict = {}
    try:
        with folder_lock(folder.parent):
            waiting = threading.Thread(target=lambda: got.update(make_pseudo_labels(layout, CTC, units)), daemon=True)
            waiting.start()
            time.sleep(1.0)
            assert waiting.is_alive() and not got  # waits for the record
            (folder / "record.bak").rename(folder / RECORD_NAME)  # rank 0 finishes, still holding the lock
            waiting.join(timeout=60)
    finally:  # the fixture's record stays for the other tests
        if (folder / "record.bak").exists():
            (folder / "record.bak").rename(folder / RECORD_NAME)
    assert not waiting.is_alive() and got == again and read_record(folder).finished == made
    monkeypatch.delenv("RANK")
    # Students that would share a folder are refused before any job runs (a job would stop first on
    # this empty experiment's missing stages).
    empty = RecipeLayout(layout.data_dir, layout.exp_dir.parent / "empty_exp", ctc_units="phone")
    for kinds, extra, match in ((["frame", "frame"], {}, "kinds repeat"), (["baseline"], {"frame": CTC}, "cannot be named 'frame'"),
                                (["baseline"], {"x_seed1": CTC}, "_seed<k>")):
        with pytest.raises(ConfigError, match=match):
            train_ctc_students(empty, CTC, TRAIN, kinds=kinds, extra_frame=extra)
    assert not empty.exp_dir.exists()
    # Other hypothesis settings: their own folder.
    assert ctc_pseudo_dir(layout, dataclasses.replace(CTC, pseudo_labels="nbest", nbest=3)).name == f"teachers_arithmetic_n{CTC.num_teachers}_nbest3_beam8"


def test_stored_soft_targets_give_the_online_loss(ctc_run) -> None:
    # With top_k = every token the stored targets are the online ensemble's (up to float16), so
    # the frame-level loss from stored targets equals the online one.
    layout, _, _, _, _ = ctc_run
    units = prepare_units(layout, CTC)
    full = dataclasses.replace(CTC, top_k=units.num_tokens, kd_source="stored", ctc_weight=0.0)
    cuts_path = make_ctc_soft_targets(layout, full, command="test")
    # Named by their settings, the teacher count included; the record quotes the command.
    assert cuts_path.parent.name == f"teachers_arithmetic_n{CTC.num_teachers}_T{CTC.temperature:g}_k{units.num_tokens}"
    assert read_record(cuts_path.parent).command == "test"
    cuts = load_manifest_lazy(cuts_path)
    cut = next(iter(cuts))
    ids, probs = load_soft_targets(cut)
    assert ids.shape == (round(cut.duration / 0.04), units.num_tokens) and abs(float(probs[0].astype("float32").sum()) - 1) < 1e-2
    stats = json.loads(cuts_path.with_name("stats.json").read_text())
    assert stats["top_k"] == units.num_tokens and stats["mean_kl_stored_vs_full"] < 1e-3  # all tokens kept: only float16 rounding
    dataset = CtcDataset(layout.open_cmvn(layout.train_part), units.encode, soft_targets=True)
    batch = next(iter(make_loader(dataset, make_sampler(cuts, 30.0, shuffle=False, seed=0, bucketing=False))))
    student = load_ctc_model(layout.ctc_student_dir("baseline"))
    ensemble = TeacherEnsemble(load_ctc_teachers(layout, CTC), CTC.fusion)
    with torch.no_grad():
        stored, _ = CtcFrameKdLoss(full)(student, batch)
        online, _ = CtcFrameKdLoss(dataclasses.replace(full, kd_source="online"), ensemble)(student, batch)
    assert math.isclose(float(stored), float(online), rel_tol=0.02, abs_tol=0.02)


# Without 1.0 (the default scale): on a tie (the tiny models' 100% WER) the smaller scale is chosen, so the
# tests see that the chosen scale, not the default, reaches test-clean and decode-part.
DECODE = DecodeConfig(ctc_acoustic_scales=(0.5, 2.0))


def test_decoding_writes_the_ctc_rows(ctc_run, capsys) -> None:
    from asr_kd.ctc.training import ctc_log_probs, hlg_wer
    from asr_kd.data.ctc_data import cut_text
    from asr_kd.decode.hlg import load_hlg
    from asr_kd.stages.ctc_s7_decode import system_slug

    layout, md, _, _, _ = ctc_run
    scores = decode_ctc_systems(layout, CTC, DECODE, results_md=md, command="test", corpus="tiny")
    assert set(scores) == {"teacher0", "teacher1", "ensemble of 2", "ensemble of 2 (independent, guided 1)",
                           "ensemble of 2 (shared init 15 steps)", "student: baseline", "student: baseline_seed1", "student: frame",
                           "student: sequence"}
    for name, by_part in scores.items():
        assert set(by_part) == {"dev-clean", "test-clean"}
        for part, s in by_part.items():
            assert {"greedy_ter", "beam_ter", "hlg_wer", "acoustic_scale"} <= set(s)
            assert all(0 <= s[k] and math.isfinite(s[k]) for k in ("greedy_ter", "beam_ter", "hlg_wer"))
            # The per-utterance counts add up to the part's rates (what the bootstrap resamples).
            per_utt = json.loads((layout.ctc_decode / f"{system_slug(name)}_{part}" / "per_utt.json").read_text())
            counts = [sum(v[i] for v in per_utt.values()) for i in range(4)]
            assert counts[0] / counts[1] == pytest.approx(s["hlg_wer"]) and counts[2] / counts[3] == pytest.approx(s["greedy_ter"])
        # The scale is chosen on dev and used on test; the other seed uses its first seed's.
        assert by_part["dev-clean"]["acoustic_scale"] == by_part["test-clean"]["acoustic_scale"] in DECODE.ctc_acoustic_scales
        assert ("sweep" in by_part["dev-clean"]) == (name != "student: baseline_seed1") and "sweep" not in by_part["test-clean"]
    assert scores["student: baseline_seed1"]["test-clean"]["acoustic_scale"] == scores["student: baseline"]["dev-clean"]["acoustic_scale"]
    # The sweep's errors are the dev WERs at those scales, and the chosen scale has the fewest;
    # test-clean was decoded at it (decoded again here).
    hlg = load_hlg(layout.ctc_graph / "HLG.fst")
    units = prepare_units(layout, CTC)
    frame = [load_ctc_model(layout.ctc_student_dir("frame"))]
    for part in ("dev-clean", "test-clean"):
        cuts = layout.open_cuts(layout.fbank_cuts(part))
        refs = {c.id: cut_text(c) for c in cuts}
        lps = {c.id: lp for c, lp in ctc_log_probs(frame, cuts, layout.open_cmvn(part), 1.0, CTC.fusion)}
        if part == "dev-clean":
            sweep = scores["student: frame"][part]["sweep"]
            assert [hlg_wer(lps, refs, units, hlg, DECODE, s).errors for s in sweep["scales"]] == sweep["errors"]
            assert sweep["errors"][sweep["scales"].index(sweep["best"])] == min(sweep["errors"])
        else:
            assert hlg_wer(lps, refs, units, hlg, DECODE, scores["student: frame"][part]["acoustic_scale"]).wer == pytest.approx(
                scores["student: frame"][part]["hlg_wer"])
    # Differences from the baseline: its two seeds averaged utterance by utterance (same words, so
    # the difference of WERs is the frame student's minus the seeds' mean).
    comparisons = json.loads((layout.ctc_decode / "comparisons.json").read_text())
    diffs = comparisons["parts"]["test-clean"]
    assert set(diffs) == {"ensemble of 2 - baseline", "ensemble of 2 (independent, guided 1) - baseline",
                          "ensemble of 2 (shared init 15 steps) - baseline", "student: frame - baseline", "student: sequence - baseline"}
    base = (scores["student: baseline"]["test-clean"]["hlg_wer"] + scores["student: baseline_seed1"]["test-clean"]["hlg_wer"]) / 2
    d = diffs["student: frame - baseline"]["hlg_wer"]
    assert d["value"] == pytest.approx(scores["student: frame"]["test-clean"]["hlg_wer"] - base) and d["low"] <= d["value"] <= d["high"]
    assert (layout.ctc_graph / "HLG.fst").is_file() and read_record(layout.ctc_graph).command == "test"
    section = read_section(md, "## CTC results (phone)")
    assert section and "| student: sequence | 1 | test-clean |" in section and "| ensemble of 2 | 1 | dev-clean |" in section
    mean_ter = (scores["student: baseline"]["test-clean"]["greedy_ter"] + scores["student: baseline_seed1"]["test-clean"]["greedy_ter"]) / 2
    assert f"| student: baseline | 2 | test-clean | {100 * mean_ter:.1f}% ± " in section
    assert "| test-clean | student: frame − baseline | " + f"{100 * d['value']:+.2f}" in section
    assert "Left out, their settings differing from their first seed's: sequence_seed1." in section
    # A dev choice at an end of the scale grid is named under the table, and only such a one.
    ends = (min(DECODE.ctc_acoustic_scales), max(DECODE.ctc_acoustic_scales))
    for name, by_part in scores.items():
        if "sweep" in by_part["dev-clean"]:
            assert (f"{name} (acoustic scale)" in section) == (by_part["dev-clean"]["sweep"]["best"] in ends), name
    assert f"seed {TRAIN.seed + 1001}" not in read_section(md, "## CTC student: sequence (phone)")
    # A changed grid redoes the decoding (the record holds the decode config).
    record = read_record(layout.ctc_decode)
    decode_ctc_systems(layout, CTC, dataclasses.replace(DECODE, ctc_acoustic_scales=(1.0,)))
    assert read_record(layout.ctc_decode) != record
    # Parts given test first: dev is still decoded first, and test-clean gets the scale chosen there.
    again = decode_ctc_systems(layout, CTC, DECODE, parts=["test-clean", "dev-clean"], results_md=md, command="test", corpus="tiny")
    assert again["student: frame"]["test-clean"]["acoustic_scale"] == again["student: frame"]["dev-clean"]["sweep"]["best"] == 0.5
    # The command line reaches the same library function (spike report: cheap, already tested above).
    rc = cli_main(["ctc-spike-report", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir),
                   "--ctc-set", "model_size=tiny", "--num-threads", "1"])
    assert rc == 0 and "independent: mean spike offset" in capsys.readouterr().out
    assert cli_main(["ctc-decode", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir / "nowhere")]) == 1


def test_a_word_insertion_penalty_on_hlg_is_searched_on_dev_and_applied_to_test(ctc_run) -> None:
    """decode.insertion_penalties on HLG: a fixed bonus reaches every system and part (its WER equals
    a decoding of the penalised graph, and inserts words the plain graph does not), the table prints
    it, and the tools that decode without a penalty refuse those systems; a grid is searched on dev
    at each penalty's best scale and the test part decoded at the chosen pair."""
    from asr_kd.ctc.training import ctc_log_probs, hlg_wer
    from asr_kd.data.ctc_data import cut_text
    from asr_kd.decode.hlg import load_hlg
    from asr_kd.decode.penalty import add_word_penalty
    from asr_kd.stages.ctc_s7_decode import build_ctc_graph, system_decoding

    layout, md, _, _, _ = ctc_run
    units = prepare_units(layout, CTC)
    frame = [load_ctc_model(layout.ctc_student_dir("frame"))]
    lps, refs = {}, {}
    for part in ("dev-clean", "test-clean"):
        cuts = layout.open_cuts(layout.fbank_cuts(part))
        refs[part] = {c.id: cut_text(c) for c in cuts}
        lps[part] = {c.id: lp for c, lp in ctc_log_probs(frame, cuts, layout.open_cmvn(part), 1.0, CTC.fusion)}
    hlg = load_hlg(build_ctc_graph(layout, units))

    # The tiny models' HLG output is empty at penalty 0; a bonus of 20 per word fills it with words at both scales.
    fixed = dataclasses.replace(DECODE, insertion_penalties=(-20.0,))
    scores = decode_ctc_systems(layout, CTC, fixed, results_md=md, command="test", corpus="tiny")
    bonus = add_word_penalty(hlg, -20.0, units.lang.words.ids())
    for part in ("dev-clean", "test-clean"):
        entry = scores["student: frame"][part]
        assert entry["insertion_penalty"] == -20.0
        with_bonus = hlg_wer(lps[part], refs[part], units, bonus, DECODE, entry["acoustic_scale"])
        plain = hlg_wer(lps[part], refs[part], units, hlg, DECODE, entry["acoustic_scale"])
        assert entry["hlg_wer"] == pytest.approx(with_bonus.wer) and with_bonus.insertions > plain.insertions
    assert all(s["insertion_penalty"] == -20.0 for by_part in scores.values() for s in by_part.values())
    section = read_section(md, "## CTC results (phone)")
    assert "| Scale, word insertion penalty where not 0 |" in section and "a word insertion penalty of -20 on every word of HLG" in section
    row = f"| student: frame | 1 | test-clean | {100 * scores['student: frame']['test-clean']['greedy_ter']:.1f}% |"
    assert row in section and f"| {scores['student: frame']['test-clean']['acoustic_scale']:g}, -20 |" in section
    with pytest.raises(ConfigError, match=r"student: frame was decoded by CTC stage 7 with a word insertion penalty \(-20,"):
        system_decoding(layout, "student: frame")
    # One penalty and no scale grid: nothing is searched; every part at ctc_acoustic_scale with that penalty.
    untuned = DecodeConfig(insertion_penalties=(-20.0,))
    scores = decode_ctc_systems(layout, CTC, untuned, results_md=md, command="test", corpus="tiny")
    for part in ("dev-clean", "test-clean"):
        entry = scores["student: frame"][part]
        assert "sweep" not in entry and (entry["acoustic_scale"], entry["insertion_penalty"]) == (untuned.ctc_acoustic_scale, -20.0)
        assert entry["hlg_wer"] == pytest.approx(hlg_wer(lps[part], refs[part], units, bonus, untuned, untuned.ctc_acoustic_scale).wer)
        assert entry["hlg_wer"] != pytest.approx(hlg_wer(lps[part], refs[part], units, hlg, untuned, untuned.ctc_acoustic_scale).wer)

    grid = dataclasses.replace(DECODE, insertion_penalties=(-20.0, 0.0, 4.0))
    scores = decode_ctc_systems(layout, CTC, grid, results_md=md, command="test", corpus="tiny")
    dev, test = scores["student: frame"]["dev-clean"], scores["student: frame"]["test-clean"]
    sweep = dev["sweep"]
    tried = dict((p, e) for p, e in sweep["penalty_errors"])
    assert 0.0 in tried and set(tried) <= {-20.0, 0.0, 4.0} and len(tried) >= 2
    for penalty, errors in tried.items():  # each penalty's fewest dev errors over the scale grid
        graph = add_word_penalty(hlg, penalty, units.lang.words.ids())
        assert errors == min(hlg_wer(lps["dev-clean"], refs["dev-clean"], units, graph, DECODE, s).errors for s in DECODE.ctc_acoustic_scales)
    assert sweep["penalty"] == dev.get("insertion_penalty", 0.0) == test.get("insertion_penalty", 0.0)
    # The fewest errors, ties to the penalty nearest 0: on tiny no penalty beats the empty output's
    # errors (a word put in is at best a substitution), so 0 is kept and the system is not refused.
    assert sweep["penalty"] == min(tried, key=lambda p: (tried[p], abs(p))) == 0.0
    assert (test["acoustic_scale"], 0.0) == (dev["acoustic_scale"], 0.0) == (sweep["best"], 0.0) == system_decoding(layout, "student: frame")
    graph = add_word_penalty(hlg, sweep["penalty"], units.lang.words.ids())
    assert test["hlg_wer"] == pytest.approx(hlg_wer(lps["test-clean"], refs["test-clean"], units, graph, DECODE, test["acoustic_scale"]).wer)
    section = read_section(md, "## CTC results (phone)")
    assert "searched on dev-clean from {-20, 0, 4} the same way" in section
    # Each system's choice at an end of either grid is named, with the grid.
    for name, by_part in scores.items():
        if "sweep" in by_part["dev-clean"]:
            sw = by_part["dev-clean"]["sweep"]
            at = [n for n, edge in (("acoustic scale", sw["best"] in (min(DECODE.ctc_acoustic_scales), max(DECODE.ctc_acoustic_scales))),
                                    ("word insertion penalty", sw["penalty"] in (-20.0, 4.0))) if edge]
            assert (f"{name} ({' and '.join(at)})" in section) == bool(at), name


def test_the_penalty_bench_decodes_the_ctc_systems_as_ctc_stage_7(ctc_run, tmp_path) -> None:
    """bench/decode_penalty.py --ctc on the tiny run: its scale-only side is CTC stage 7's own
    decoding (the same dev choice and test WERs, a student's two seeds), its penalty side never
    has more dev errors, and the section prints the JSON's numbers."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    layout, md, _, _, _ = ctc_run
    scores = decode_ctc_systems(layout, CTC, DECODE, results_md=md, command="test", corpus="tiny")
    out_json, results = tmp_path / "pen.json", tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "decode_penalty.py"), "--ctc", "--data", str(layout.data_dir),
                           "--exp", str(layout.exp_dir), "--systems", "baseline", "ensemble", "--seeds", "2", "--penalties", "-20", "0",
                           "--json", str(out_json), "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out_json.read_text())
    for name, row in (("baseline", "student: baseline"), ("ensemble", "ensemble of 2")):
        e = got["systems"][name]
        assert e["choices"]["scale"]["scale"] == scores[row]["dev-clean"]["acoustic_scale"]
        assert e["choices"]["scale"]["dev_errors"] == min(scores[row]["dev-clean"]["sweep"]["errors"])
        assert e["choices"]["scale+penalty"]["dev_errors"] <= e["choices"]["scale"]["dev_errors"]
        assert {p for p, _ in e["choices"]["scale+penalty"]["sweep"]["penalty_errors"]} == {-20.0, 0.0}
    seeds = [scores[m]["test-clean"]["hlg_wer"] for m in ("student: baseline", "student: baseline_seed1")]
    assert got["systems"]["baseline"]["parts"]["test-clean"]["scale"]["wer"] == pytest.approx(seeds)
    assert got["systems"]["ensemble"]["parts"]["test-clean"]["scale"]["wer"] == [pytest.approx(scores["ensemble of 2"]["test-clean"]["hlg_wer"])]
    text = results.read_text()
    iv = got["systems"]["baseline"]["parts"]["test-clean"]["difference"]
    assert "the CTC systems (bench/decode_penalty.py --ctc)" in text
    assert f"| baseline | 2 | {100 * got['systems']['baseline']['choices']['scale']['dev_wer']:.2f}% (" in text
    assert f"{100 * iv['value']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]" in text


def test_the_blank_penalty_bench_decodes_what_it_says(ctc_run, tmp_path) -> None:
    """bench/decode_penalty.py --ctc --blank: the scale-only side is CTC stage 7's decoding (the
    guided set's ensemble by its folder name), the penalty side's test WER is HLG decoding of the
    log-probabilities with the chosen penalty taken off the blank, made here, and a pair's
    difference is the two systems' WERs differenced."""
    import subprocess
    import sys

    from asr_kd.ctc.training import ctc_log_probs, hlg_wer
    from asr_kd.data.ctc_data import cut_text
    from asr_kd.decode.hlg import load_hlg
    from tests.conftest import REPO_ROOT

    layout, md, _, _, _ = ctc_run
    scores = decode_ctc_systems(layout, CTC, DECODE, results_md=md, command="test", corpus="tiny")
    out_json, results = tmp_path / "blank.json", tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "decode_penalty.py"), "--ctc", "--blank", "--data", str(layout.data_dir),
                           "--exp", str(layout.exp_dir), "--systems", "baseline", "teachers_guided1", "--seeds", "2", "--penalties", "0", "3",
                           "--pair", "teachers_guided1", "baseline", "--json", str(out_json), "--results", str(results)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out_json.read_text())
    guided = got["systems"]["teachers_guided1"]
    row = "ensemble of 2 (independent, guided 1)"
    assert guided["choices"]["scale"]["scale"] == scores[row]["dev-clean"]["acoustic_scale"]
    assert guided["parts"]["test-clean"]["scale"]["wer"] == [pytest.approx(scores[row]["test-clean"]["hlg_wer"])]
    assert {p for p, _ in guided["choices"]["scale+penalty"]["sweep"]["penalty_errors"]} == {0.0, 3.0}
    # The penalty side, decoded here: the guided set's two teachers fused, the blank's log-probability lowered.
    choice = guided["choices"]["scale+penalty"]
    cuts = layout.open_cuts(layout.fbank_cuts("test-clean"))
    models = load_ctc_teachers(layout, dataclasses.replace(CTC, guide_weight=1.0))
    lps = {c.id: lp for c, lp in ctc_log_probs(models, cuts, layout.open_cmvn("test-clean"), 1.0, CTC.fusion)}
    for lp in lps.values():
        lp[:, 0] -= choice["penalty"]
    wer = hlg_wer(lps, {c.id: cut_text(c) for c in cuts}, prepare_units(layout, CTC), load_hlg(layout.ctc_graph / "HLG.fst"), DECODE, choice["scale"])
    assert guided["parts"]["test-clean"]["scale+penalty"]["wer"] == [pytest.approx(wer.wer)]
    base = got["systems"]["baseline"]["parts"]["test-clean"]
    for way in ("scale", "scale+penalty"):
        d = got["pairs"][f"teachers_guided1 - baseline | test-clean | {way}"]
        assert d["value"] == pytest.approx(guided["parts"]["test-clean"][way]["wer"][0] - sum(base[way]["wer"]) / 2)
    text = results.read_text()
    assert "## Blank penalty on HLG tuned on dev beside the scale" in text and "tokens cheaper) of {0, 3}" in text
    assert f"| teachers_guided1 - baseline | test-clean | {100 * got['pairs']['teachers_guided1 - baseline | test-clean | scale']['value']:+.2f} [" in text
    bad = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "decode_penalty.py"), "--blank", "--penalties", "0", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--blank needs --ctc" in bad.stderr, bad.stderr


def test_ctc_stage_7_searches_a_blank_penalty_on_dev(ctc_run, tmp_path) -> None:
    """decode.ctc_blank_penalties: CTC stage 7 searches the blank penalty beside the scale on dev
    (the sweep says which penalty), decodes every seed of a row on test at the first seed's choice
    (its WER that of HLG decoding here at that scale and penalty), prints the choice in the table,
    and decode-part and the model directories of stage 9 decode each system at its choice as well."""
    from asr_kd.ctc.training import ctc_log_probs, hlg_wer
    from asr_kd.data.ctc_data import cut_text
    from asr_kd.decode.hlg import load_hlg
    from asr_kd.decode.tuning import ScaleSweep
    from asr_kd.deploy.model_dir import load_spec
    from asr_kd.deploy.recipe_paths import make_model_dir_from_recipe
    from asr_kd.stages.ctc_s7_decode import SystemDecoding, system_decoding

    config, md = dataclasses.replace(DECODE, ctc_blank_penalties=(0.0, 3.0)), tmp_path / "RESULTS.md"
    _, other, scores = _decoded_copy(ctc_run, tmp_path, config, ood_part="", results_md=md)
    dev = scores["student: baseline"]["dev-clean"]
    sweep = ScaleSweep.from_dict(dev["sweep"])
    assert sweep.penalty_name == "blank penalty" and {p for p, _ in sweep.penalty_errors} == {0.0, 3.0}
    assert (sweep.best, sweep.penalty) == (dev["acoustic_scale"], dev.get("blank_penalty", 0.0))
    assert min(sweep.errors) == min(e for _, e in sweep.penalty_errors) and "insertion_penalty" not in dev
    cuts = other.open_cuts(other.fbank_cuts("test-clean"))
    refs, units, hlg = {c.id: cut_text(c) for c in cuts}, prepare_units(other, CTC), load_hlg(other.ctc_graph / "HLG.fst")
    for folder in ("baseline", "baseline_seed1"):
        test = scores[f"student: {folder}"]["test-clean"]
        lps = {c.id: lp for c, lp in ctc_log_probs([load_ctc_model(other.ctc_student_dir(folder))], cuts, other.open_cmvn("test-clean"), 1.0,
                                                   CTC.fusion)}
        assert test["hlg_wer"] == pytest.approx(hlg_wer(lps, refs, units, hlg, config, sweep.best, sweep.penalty).wer)
        assert (test["acoustic_scale"], test.get("blank_penalty", 0.0)) == (sweep.best, sweep.penalty)
    section = read_section(md, "## CTC results (phone)")
    assert "| Scale, blank penalty |" in section and "a blank penalty (taken off the blank's log-probability" in section and "{0, 3}" in section
    # bench/decode_penalty.py --blank on this run: with the grid the stage searched, its scale-and-penalty side must
    # reproduce the table (it does, every seed); with another grid it names the fix.
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    bench = [sys.executable, str(REPO_ROOT / "bench" / "decode_penalty.py"), "--ctc", "--blank", "--data", str(other.data_dir), "--exp",
             str(other.exp_dir), "--systems", "baseline", "--seeds", "2", "--json", str(tmp_path / "b.json"), "--results", str(tmp_path / "b.md")]
    proc = subprocess.run([*bench, "--penalties", "0", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "b.json").read_text())["systems"]["baseline"]
    assert (got["choices"]["scale+penalty"]["scale"], got["choices"]["scale+penalty"]["penalty"]) == (sweep.best, sweep.penalty)
    assert got["parts"]["test-clean"]["scale+penalty"]["wer"] == pytest.approx([scores[f"student: {f}"]["test-clean"]["hlg_wer"]
                                                                                for f in ("baseline", "baseline_seed1")])
    proc = subprocess.run([*bench, "--penalties", "0", "1"], capture_output=True, text=True, timeout=600)
    if sweep.penalty:  # a table decoded with a penalty, compared with another grid: refused, naming the grid it searched
        assert proc.returncode == 1 and "or pass --blank --penalties 0 3 (the grid it searched)" in proc.stderr, proc.stderr[-3000:]
    assert "| student: baseline | 2 | test-clean | " in section and f" | {sweep.best:g}, {sweep.penalty:g} |" in section
    # A fixed blank penalty (no grid): every system decoded with it; decode-part (a user's part: test-clean's audio under
    # another name) and a model directory decode with it too. (The tiny models' HLG output is empty at penalty 0; at 4
    # the baseline student's holds words, so the table's WER holds only with the penalty.)
    fixed = decode_ctc_systems(other, CTC, dataclasses.replace(DECODE, ctc_blank_penalty=4.0), results_md=md, command="test", corpus="tiny")
    assert all(e["test-clean"]["blank_penalty"] == 4.0 for e in fixed.values())
    assert "a blank penalty of 4 on every frame (not tuned)" in read_section(md, "## CTC results (phone)")
    baseline = fixed["student: baseline"]["test-clean"]
    assert system_decoding(other, "student: baseline") == SystemDecoding(baseline["acoustic_scale"], 4.0)
    lps = {c.id: lp for c, lp in ctc_log_probs([load_ctc_model(other.ctc_student_dir("baseline"))], cuts, other.open_cmvn("test-clean"), 1.0,
                                               CTC.fusion)}
    assert baseline["hlg_wer"] < hlg_wer(lps, refs, units, hlg, DECODE, baseline["acoustic_scale"], 0.0).wer  # the penalty matters
    corpus = tmp_path / "corpus"
    shutil.copytree(other.data_dir / "corpus" / "test-clean", corpus / "my-test")
    assert cli_main(["decode-part", "--data-dir", str(other.data_dir), "--exp-dir", str(other.exp_dir), "--corpus-dir", str(corpus),
                     "--part", "my-test", "--systems", "ctc-baseline", "ctc-ensemble", "--num-threads", "1"]) == 0
    part = json.loads((other.exp_dir / "decode_parts" / "my-test" / "scores.json").read_text())
    for name, row in (("ctc-baseline", "student: baseline"), ("ctc-ensemble", "ensemble of 2")):
        assert part[name]["wer"] == pytest.approx(fixed[row]["test-clean"]["hlg_wer"])
        assert (part[name]["acoustic_scale"], part[name]["blank_penalty"]) == (fixed[row]["test-clean"]["acoustic_scale"], 4.0)
    decoding = load_spec(make_model_dir_from_recipe(other.exp_dir, other.data_dir, "ctc-baseline", tmp_path / "md")).decode_config()
    assert (decoding.ctc_acoustic_scale, decoding.ctc_blank_penalty) == (baseline["acoustic_scale"], 4.0)
    # The word-penalty bench on this run searches at each system's blank penalty held at the stage's: its scale-only
    # side is the table again (the bench stops otherwise), and the section says which penalty was held.
    proc = subprocess.run([*bench[:3], *bench[4:], "--penalties", "-20", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "b.json").read_text())["systems"]["baseline"]
    assert (got["choices"]["scale"]["scale"], got["choices"]["scale"]["blank_penalty"]) == (baseline["acoustic_scale"], 4.0)
    assert got["parts"]["test-clean"]["scale"]["wer"] == pytest.approx([fixed[f"student: {f}"]["test-clean"]["hlg_wer"]
                                                                        for f in ("baseline", "baseline_seed1")])
    assert "each system's blank penalty is held at the one CTC stage 7 chose for it on dev (baseline 4)" in (tmp_path / "b.md").read_text()
    # A blank grid alone (no scale grid), dev not among the parts asked for: dev is still searched first, every seed
    # decoded at the choice (never 0 here), recorded for decode-part and the model directories.
    blank_only = dataclasses.replace(DECODE, ctc_acoustic_scales=(), ctc_blank_penalties=(2.0, 3.0))
    searched = decode_ctc_systems(other, CTC, blank_only, parts=["test-clean"], results_md=md, command="test", corpus="tiny")
    assert read_record(other.ctc_decode).config["tuned_on"] == "dev-clean"
    sweep = ScaleSweep.from_dict(searched["student: baseline"]["dev-clean"]["sweep"])
    assert sweep.penalty_name == "blank penalty" and sweep.penalty in (2.0, 3.0) and sweep.scales == (DECODE.ctc_acoustic_scale,)
    assert searched["student: baseline_seed1"]["test-clean"]["blank_penalty"] == sweep.penalty
    assert system_decoding(other, "student: baseline_seed1") == SystemDecoding(DECODE.ctc_acoustic_scale, sweep.penalty)


def test_bpe_units_and_hlg_on_the_tiny_lang(tiny_stage2, tmp_path) -> None:
    # BPE pieces trained on tiny's transcripts spell them, and the HLG built over tiny's lexicon and
    # LM decodes oracle posteriors of those pieces back into the words. (Training transcripts: a
    # dev word outside the LM's vocabulary has no path through G.)
    import numpy as np

    from asr_kd.stages.ctc_s7_decode import build_ctc_graph
    from asr_kd.data.ctc_data import cut_text
    from asr_kd.decode.ctc import decode_ctc, greedy_ctc
    from asr_kd.decode.hlg import load_hlg

    data, _ = tiny_stage2
    layout = RecipeLayout(data, tmp_path / "exp", ctc_units="bpe")
    cfg = dataclasses.replace(CTC, units="bpe", bpe_vocab_size=150)
    units = prepare_units(layout, cfg)
    assert units.tokens.name(0) == "<blk>" and 20 < units.num_tokens <= 150
    hlg = load_hlg(build_ctc_graph(layout, units))
    rng = np.random.default_rng(0)
    checked = 0
    for cut in list(layout.open_cuts(layout.fbank_cuts(layout.train_part)))[:5]:
        text = cut_text(cut)
        if any(w not in units.lang.lexicon for w in text.split()):
            continue  # an OOV word cannot come out of HLG
        frames = [0] + [t for tok in units.encode(text) for t in (tok, 0)]
        logits = rng.normal(size=(len(frames), units.num_tokens))
        logits[np.arange(len(frames)), frames] += 10.0
        log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        assert units.to_text(greedy_ctc(log_probs)) == text
        words = decode_ctc(hlg, log_probs, DecodeConfig()).word_ids
        assert " ".join(units.lang.words.name(w) for w in words) == text
        checked += 1
    assert checked >= 2


def _max_encoder_gap(a: dict, b: dict) -> float:
    """The largest absolute difference between two CTC models' encoder weights (all but ``output.*``)."""
    return max(float((a[k] - b[k]).abs().max()) for k in a if not k.startswith("output."))


def test_bpe_models_start_from_the_phone_encoder(tiny_stage2, tmp_path) -> None:
    """ctc.phone_init_steps: CTC stage 4 trains one phone model first; every BPE teacher and
    student starts from its encoder (the output layer over the BPE pieces is new), their records
    name its fingerprint, and another number of steps makes it and them again."""
    data, _ = tiny_stage2
    layout = RecipeLayout(data, tmp_path / "exp", ctc_units="bpe")
    md = tmp_path / "RESULTS.md"
    cfg = dataclasses.replace(CTC, units="bpe", bpe_vocab_size=150, num_teachers=1, phone_init_steps=10)
    # Five steps inside the warm-up move no weight far (lr at most 1.5e-3 a step).
    train = dataclasses.replace(TRAIN, max_steps=5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_ctc_teachers(layout, cfg, train, results_md=md, command="test")
        student = train_ctc_student(layout, "baseline", cfg, train, results_md=md, command="test")
    finally:
        torch.set_num_threads(before)
    phone = load_checkpoint(layout.ctc_phone_init / "final.pt")
    phone_units = prepare_units(dataclasses.replace(layout, ctc_units="phone"), dataclasses.replace(CTC, units="phone"))
    bpe_units = prepare_units(layout, dataclasses.replace(cfg, phone_init_steps=0))
    assert phone["model"]["output.weight"].shape[0] == phone_units.num_tokens != bpe_units.num_tokens
    assert phone["train_state"]["step"] == 10 and student["steps"] == 5
    start = read_record(layout.ctc_phone_init)
    assert start.config["ctc"]["phone_init_steps"] == 10
    teacher = load_checkpoint(layout.ctc_teacher_set(0) / "teacher0" / "final.pt")["model"]
    baseline = load_checkpoint(layout.ctc_student_dir("baseline") / "final.pt")["model"]
    assert teacher["output.weight"].shape[0] == bpe_units.num_tokens
    # Near the phone encoder, far from where a fresh model starts.
    fresh = CtcEncoder(40, bpe_units.num_tokens, "tiny", dropout=0.0).state_dict()
    for model in (teacher, baseline):
        assert _max_encoder_gap(model, phone["model"]) < 0.05 < _max_encoder_gap(fresh, phone["model"])
    for folder in (layout.ctc_teacher_set(0), layout.ctc_student_dir("baseline")):
        assert read_record(folder).inputs["phone_init"] == start.fingerprint
    assert "every encoder started from one phone CTC model trained 10 steps" in read_section(md, "## CTC teachers (bpe, independent)")
    assert "started from the encoder of a phone CTC model trained 10 steps" in read_section(md, "## CTC student: baseline (bpe)")
    # Another number of steps: the phone start and the teachers are made again.
    again = dataclasses.replace(cfg, phone_init_steps=12)
    torch.set_num_threads(1)
    try:
        train_ctc_teachers(layout, again, train, command="test")
    finally:
        torch.set_num_threads(before)
    assert load_checkpoint(layout.ctc_phone_init / "final.pt")["train_state"]["step"] == 12
    assert read_record(layout.ctc_teacher_set(0)).inputs["phone_init"] == read_record(layout.ctc_phone_init).fingerprint != start.fingerprint
    # The student made from the old start is refused, not reused, by a student of the old settings.
    with pytest.raises(DataError, match="trained 12 steps, ctc.phone_init_steps=10"):
        train_ctc_student(layout, "baseline", cfg, train, command="test")


def test_a_ctc_model_on_a_cosine_schedule_over_the_whole_run_reaches_its_floor(tiny_stage2, tmp_path) -> None:
    """lr_schedule=cosine with cosine_steps=0 (the run's length, counted before training) used to
    stop a CTC model at its first step; like a hybrid DNN's, its rate now ends at lr * final_lr_ratio."""
    from asr_kd.ctc.training import train_ctc_model

    data, _ = tiny_stage2
    layout = RecipeLayout(data, tmp_path / "exp", ctc_units="phone")
    cos = dataclasses.replace(TRAIN, max_steps=0, num_epochs=2, warmup_steps=2, lr_schedule="cosine", cosine_steps=0, final_lr_ratio=0.1)
    units = prepare_units(layout, CTC)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_ctc_model(layout.open_cuts(layout.fbank_cuts(layout.train_part)), None, layout.open_cmvn(layout.train_part), None,
                                 units, CTC, cos, tmp_path / "cos")
    finally:
        torch.set_num_threads(before)
    final = load_checkpoint(result.final_path)
    steps = final["train_state"]["step"]
    assert steps >= 4 and final["train_state"]["epoch"] == 2
    # The rate of the last step taken: the cosine's floor, reached at the run's last step (step index steps - 1).
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cos.lr * cos.final_lr_ratio)


def test_decode_part_with_a_ctc_student(ctc_run, tmp_path) -> None:
    """`asr-kd decode-part --systems ctc-frame`: a user's own part (test-clean's audio under
    another name) decoded by a CTC student through the HLG, as the CTC table decoded test-clean."""
    import shutil

    layout, md, _, _, _ = ctc_run
    # Not the default beam and max-active, so that a model directory shows whose settings it took.
    decode = dataclasses.replace(DECODE, beam=12.0, max_active=3000)
    scores = decode_ctc_systems(layout, CTC, decode, results_md=md, command="test", corpus="tiny")
    corpus = tmp_path / "corpus"
    shutil.copytree(layout.data_dir / "corpus" / "test-clean", corpus / "my-test")
    rc = cli_main(["decode-part", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir), "--corpus-dir", str(corpus),
                   "--part", "my-test", "--systems", "ctc-frame", "ctc-baseline", "ctc-teacher1", "ctc-ensemble", "--num-threads", "1"])
    assert rc == 0
    part = json.loads((layout.exp_dir / "decode_parts" / "my-test" / "scores.json").read_text())
    for name, row in (("ctc-frame", "student: frame"), ("ctc-baseline", "student: baseline"), ("ctc-teacher1", "teacher1"),
                      ("ctc-ensemble", "ensemble of 2")):
        assert part[name]["wer"] == pytest.approx(scores[row]["test-clean"]["hlg_wer"])
        assert part[name]["acoustic_scale"] == scores[row]["test-clean"]["acoustic_scale"] == scores[row]["dev-clean"]["sweep"]["best"]
        assert part[name]["utterances"] == sum(1 for _ in layout.open_cuts(layout.fbank_cuts("test-clean")))
        errors = part[name]["substitutions"] + part[name]["deletions"] + part[name]["insertions"]
        assert sum(v["errors"] for v in part[name]["per_speaker"].values()) == errors
    # A model directory of a CTC student decodes as CTC stage 7 did: its beam, max-active and the
    # HLG scale chosen on dev (a later seed: its first seed's). A student the stage left out (its
    # settings differ from its first seed's) gets the defaults, not a scale tuned for other weights.
    from asr_kd.deploy.model_dir import load_spec
    from asr_kd.deploy.recipe_paths import make_model_dir_from_recipe

    for inner, row in (("frame", "student: frame"), ("baseline_seed1", "student: baseline")):
        d = make_model_dir_from_recipe(layout.exp_dir, layout.data_dir, f"ctc-{inner}", tmp_path / f"md_{inner}")
        cfg = load_spec(d).decode_config()
        assert (cfg.beam, cfg.max_active, cfg.min_active) == (12.0, 3000, DECODE.min_active)
        assert cfg.ctc_acoustic_scale == scores[row]["dev-clean"]["sweep"]["best"] == scores[f"student: {inner}"]["test-clean"]["acoustic_scale"]
    assert load_spec(make_model_dir_from_recipe(layout.exp_dir, layout.data_dir, "ctc-sequence_seed1", tmp_path / "md_left")).decoding == {}
    # A CTC student that was never trained is named in one line.
    assert cli_main(["decode-part", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir), "--corpus-dir", str(corpus),
                     "--part", "my-test", "--systems", "ctc-nosuch"]) == 1


def _decoded_copy(ctc_run, tmp_path, config: DecodeConfig = DECODE, ood_part: str = "test-ood", results_md=None):
    """The tiny run's CTC folders copied under ``tmp_path`` and decoded there by CTC stage 7 with
    ``config`` (``ood_part`` scored too where given): ``(the run's layout, the copy's layout, its scores)``."""
    layout = ctc_run[0]
    other = dataclasses.replace(RecipeLayout(layout.data_dir, tmp_path / "exp", ctc_units="phone"), ood_part=ood_part)
    shutil.copytree(layout.ctc_root, other.ctc_root, symlinks=True)
    shutil.rmtree(other.ctc_decode, ignore_errors=True)
    return layout, other, decode_ctc_systems(other, CTC, config, results_md=results_md, command="test", corpus="tiny")


def test_the_ood_bench_decodes_the_ctc_systems_as_ctc_stage_7(ctc_run, tmp_path) -> None:
    """bench/ood_more.py --ctc on a copy of the tiny run, CTC stage 7 scoring test-ood too: the
    recipe's test-ood decodes to the CTC table's WER for each seed (the bench stops otherwise, and
    its JSON says so), each system at the stage's scale and blank penalty, and the new part's
    difference is the seeds' mean WERs differenced."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    # A blank penalty (fixed; the tiny models' HLG output is empty without one): the bench must apply it to match the table.
    layout, other, scores = _decoded_copy(ctc_run, tmp_path, dataclasses.replace(DECODE, ctc_blank_penalty=4.0))
    out_json, results = tmp_path / "ood.json", tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "ood_more.py"), "--ctc", "--data", str(layout.data_dir),
                           "--exp", str(other.exp_dir), "--speakers", "2", "--utts-per-speaker", "2", "--seeds", "2", "--systems", "baseline", "ensemble",
                           "teacher0", "--pair", "ensemble", "baseline", "--pair", "teacher0", "baseline", "--work", str(tmp_path / "work"), "--oracle-scales",
                           "--json", str(out_json), "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out_json.read_text())
    ood, new = run["parts"]["test-ood"], run["parts"]["test-ood-more"]
    for name, rows in (("baseline", ["student: baseline", "student: baseline_seed1"]), ("ensemble", ["ensemble of 2"])):
        assert ood["systems"][name]["seed_wers"] == pytest.approx([scores[r]["test-ood"]["hlg_wer"] for r in rows])
        # --oracle-scales without values: CTC stage 7's own grid on the log-probabilities.
        assert new["systems"][name]["oracle"]["scales"] == sorted(DECODE.ctc_acoustic_scales)
    assert len(new["ids"]) == 4 and new["systems"]["baseline"]["seeds"] == 2 and new["systems"]["ensemble"]["seeds"] == 1
    d = run["differences"]["ensemble - baseline | new part"]
    assert d["value"] == pytest.approx(new["systems"]["ensemble"]["wer"] - new["systems"]["baseline"]["wer"])
    assert "## The CTC systems on a larger sample of the unseen voices" in results.read_text()
    assert f"| ensemble - baseline, test-ood-more | 4 ({sum(new['words'])}) | {100 * d['value']:+.2f} [" in results.read_text()
    # The greedy token error rate (no LM; the bench stops unless test-ood gives the table's for each
    # seed): on the new part what CTC stage 7's own scoring (token_scores) gives the ensemble there.
    from asr_kd.ctc.training import ctc_log_probs, token_scores
    from asr_kd.data.ctc_data import cut_text

    part = dataclasses.replace(other, data_dir=tmp_path / "work" / "data")
    cuts = part.open_cuts(part.fbank_cuts("test-ood-more"))
    lps = {c.id: lp for c, lp in ctc_log_probs(load_ctc_teachers(other, CTC), cuts, part.open_cmvn("test-ood-more"), 1.0, CTC.fusion)}
    stage7 = token_scores(lps, {c.id: cut_text(c) for c in cuts}, prepare_units(other, CTC), CTC.beam_size)
    assert new["systems"]["ensemble"]["ter"] == pytest.approx(stage7.rates["greedy_ter"])
    # Word errors by type at each one's scale: those of HLG decodings there (the baseline: each seed's, averaged),
    # and the printed rows with their hypothesis words.
    from asr_kd.ctc.training import hlg_wer
    from asr_kd.decode.hlg import load_hlg

    hlg, units, refs = load_hlg(other.ctc_graph / "HLG.fst"), prepare_units(other, CTC), {c.id: cut_text(c) for c in cuts}
    for name, models in (("ensemble", [load_ctc_teachers(other, CTC)]),
                         ("baseline", [[load_ctc_model(other.ctc_student_dir(d))] for d in ("baseline", "baseline_seed1")])):
        e = new["systems"][name]
        decoded = []
        for m in models:
            logp = {c.id: lp for c, lp in ctc_log_probs(m, cuts, part.open_cmvn("test-ood-more"), 1.0, CTC.fusion)}
            w = hlg_wer(logp, refs, units, hlg, DECODE, e["scale"], e["blank_penalty"])
            decoded.append((w.substitutions, w.deletions, w.insertions))
        sub, dels, ins = (sum(x) / len(decoded) for x in zip(*decoded))
        assert e["blank_penalty"] == 4.0 and f"| {name} | {e['seeds']} | {e['scale']:g}, 4 | " in results.read_text()
        assert e["by_type"] == pytest.approx([sub, dels, ins]) and sum(e["by_type"]) == pytest.approx(sum(e["errors"])), name
        assert f"| {name} | {sub:.1f} | {dels:.1f} | {ins:.1f} | {sum(new['words']) - dels + ins:.1f} |" in results.read_text(), name
    assert new["tokens"] == [stage7.ref_tokens[u] for u in new["ids"]]
    base = new["systems"]["baseline"]
    assert base["ter"] == pytest.approx(sum(base["seed_ters"]) / 2) and len(base["seed_ters"]) == 2
    t = d["greedy_ter"]
    assert t["value"] == pytest.approx(new["systems"]["ensemble"]["ter"] - base["ter"])
    assert f"| {100 * t['value']:+.2f} [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}] |" in results.read_text()
    assert f"| ensemble | {100 * scores['ensemble of 2']['test-clean']['greedy_ter']:.2f}% | " in results.read_text()
    # A second --pair: its own differences, per-talker column and place in the command line.
    t0 = run["differences"]["teacher0 - baseline | new part"]
    assert t0["value"] == pytest.approx(new["systems"]["teacher0"]["wer"] - base["wer"])
    assert t0["greedy_ter"]["value"] == pytest.approx(new["systems"]["teacher0"]["ter"] - base["ter"])
    for r in run["talkers"]:
        assert r["differences"]["teacher0 - baseline"] == pytest.approx(r["wer"]["teacher0"] - r["wer"]["baseline"])
    assert "--seeds 2 --pair ensemble baseline --pair teacher0 baseline --oracle-scales` (every number" in results.read_text()
    for pairs, why in ((["--pair", "baseline", "baseline"], "a system against itself"),
                       (["--pair", "ensemble", "baseline", "--pair", "ensemble", "baseline"], "given twice")):
        bad = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "ood_more.py"), "--ctc", "--systems", "baseline", "ensemble", *pairs],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and why in bad.stderr, bad.stderr


def test_the_posterior_shape_bench_measures_what_ctc_stage_7_scored(ctc_run, tmp_path) -> None:
    """bench/ctc_peaks.py on a copy of the tiny run: the greedy TER of every seed and of the guided
    set's ensemble equals the CTC table's (the bench stops otherwise), the ensemble's measures
    equal those of its fused posteriors summed here, and a pair's difference is the two rates'."""
    import subprocess
    import sys

    import numpy as np

    from asr_kd.ctc.peaks import utterance_shape
    from asr_kd.ctc.training import ctc_log_probs
    from asr_kd.data.ctc_data import cut_text
    from tests.conftest import REPO_ROOT

    layout, other, scores = _decoded_copy(ctc_run, tmp_path)
    out_json, results = tmp_path / "peaks.json", tmp_path / "RESULTS.md"
    bench = [sys.executable, str(REPO_ROOT / "bench" / "ctc_peaks.py"), "--data", str(layout.data_dir), "--exp", str(other.exp_dir)]
    proc = subprocess.run([*bench, "--systems", "baseline", "frame", "ensemble", "teachers_guided1", "teachers_guided1/teacher1", "--seeds", "2",
                           "--timing-ref", "teacher0", "--pair", "frame", "baseline", "--pair", "teachers_guided1", "ensemble",
                           "--json", str(out_json), "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out_json.read_text())
    assert sorted(run["parts"]) == ["test-clean", "test-ood"]
    clean = run["parts"]["test-clean"]
    assert clean["systems"]["baseline"]["seed_ters"] == pytest.approx(
        [scores[r]["test-clean"]["greedy_ter"] for r in ("student: baseline", "student: baseline_seed1")])
    assert clean["systems"]["teachers_guided1"]["seed_ters"] == pytest.approx([scores["ensemble of 2 (independent, guided 1)"]["test-clean"]["greedy_ter"]])
    assert clean["systems"]["frame"]["seeds"] == 1  # one seed trained: the seeds that exist, said in the table
    # The ensemble's measures from its fused posteriors, summed here.
    cuts = other.open_cuts(other.fbank_cuts("test-clean"))
    units = prepare_units(other, CTC)
    rows = [utterance_shape(lp, units.encode(cut_text(c)))
            for c, lp in ctc_log_probs(load_ctc_teachers(other, CTC), cuts, other.open_cmvn("test-clean"), 1.0, CTC.fusion)]
    ens = clean["rates"]["systems"]["ensemble"]
    assert ens["blank"] == pytest.approx(100 * sum(r["blank_frames"] for r in rows) / sum(r["frames"] for r in rows))
    spikes = sum(r["spikes"] for r in rows)  # a barely trained ensemble may emit none: no peak then
    assert ens["peak"] == (pytest.approx(sum(r["spike_peak_sum"] for r in rows) / spikes) if spikes else None)
    assert ens["spikes"] == pytest.approx(spikes / sum(r["ref_tokens"] for r in rows))
    feasible = np.min([clean["systems"][n]["sums"]["feasible"] for n in clean["systems"]], axis=0)
    assert clean["rates"]["feasible"] == int(feasible.sum()) > 0
    held = [r for r, f in zip(rows, feasible) if f]
    assert ens["loglik"] == pytest.approx(sum(r["ref_loglik"] for r in held) / sum(r["ref_tokens"] for r in held))
    assert ens["gap"] == pytest.approx(sum(r["best_path"] - r["ref_best_path"] for r in held) / sum(r["ref_tokens"] for r in held))
    assert ens["gap"] > 0  # greedy search does not read every reference of a barely trained model
    d = clean["differences"]["teachers_guided1 - ensemble | loglik"]
    assert d["value"] == pytest.approx(clean["rates"]["systems"]["teachers_guided1"]["loglik"] - ens["loglik"])
    assert d["low"] <= d["value"] <= d["high"]
    assert f"| ensemble | 1 | {100 * scores['ensemble of 2']['test-clean']['greedy_ter']:.2f}% | {ens['blank']:.1f}% |" in results.read_text()
    # The baseline's spikes against teacher0's: both seeds' utterances in one count.
    from asr_kd.ctc.kd import SpikeStats

    def log_probs(models):
        return [lp for _, lp in ctc_log_probs(models, cuts, other.open_cmvn("test-clean"), 1.0, CTC.fusion)]

    stats, ref = SpikeStats(), log_probs([load_ctc_teachers(other, CTC)[0]])
    for folder in ("baseline", "baseline_seed1"):
        for a, b in zip(log_probs([load_ctc_model(other.ctc_student_dir(folder))]), ref):
            stats.update(a, b)
    assert clean["systems"]["baseline"]["timing"]["teacher0"] == pytest.approx(stats.summary())
    bad = subprocess.run([*bench, "--systems", "baseline", "nosuch", "--pair", "nosuch", "baseline", "--seeds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no finished CTC student or teacher set 'nosuch'" in bad.stderr, bad.stderr
