"""The CTC path end to end on the 'tiny' corpus: units, two teachers (independent, from a
shared initial checkpoint, and guided by teacher 0's spikes), the spike report, baseline / frame-level / sequence-level students,
stored CTC soft targets, greedy / prefix-beam / HLG decoding and the RESULTS.md rows.

Models are 'tiny' and trained for a few dozen steps: the test checks what each step wrote and
that training lowered the CTC loss, not that the models are good.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from lhotse import load_manifest_lazy

from asr_kd.bin.cli import main as cli_main
from asr_kd.config import CtcConfig, DecodeConfig, TrainConfig
from asr_kd.ctc.kd import CtcFrameKdLoss
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.training import evaluate_ctc, load_ctc_model
from asr_kd.stages.ctc_common import load_ctc_teachers, prepare_units
from asr_kd.stages.ctc_s4_teachers import train_ctc_teachers
from asr_kd.stages.ctc_s5_spikes import spike_report
from asr_kd.stages.ctc_s6_students import make_ctc_soft_targets, train_ctc_student
from asr_kd.stages.ctc_s7_decode import decode_ctc_systems
from asr_kd.data.ctc_data import CtcDataset
from asr_kd.data.frames import make_loader, make_sampler
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.soft_targets import load_soft_targets
from asr_kd.report.results_md import read_section
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import read_record

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
        train_ctc_teachers(layout, shared, dataclasses.replace(TRAIN, max_steps=25), results_md=md, command="test")
        guided = train_ctc_teachers(layout, dataclasses.replace(CTC, guide_weight=1.0), dataclasses.replace(TRAIN, max_steps=25),
                                    results_md=md, command="test")
        student_train = dataclasses.replace(TRAIN, max_steps=20)
        students = {kind: train_ctc_student(layout, kind, CTC, student_train, results_md=md, command="test")
                    for kind in ("baseline", "frame", "sequence")}
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


def test_students_and_pseudo_labels(ctc_run) -> None:
    layout, md, _, students, _ = ctc_run
    for kind, summary in students.items():
        assert summary["steps"] == 20 and (layout.ctc_student_dir(kind) / "final.pt").is_file()
        assert read_section(md, f"## CTC student: {kind} (phone)")
    assert "teachers" not in read_record(layout.ctc_student_dir("baseline")).inputs
    assert read_record(layout.ctc_student_dir("frame")).inputs["teachers"] == read_record(layout.ctc_teacher_set(0)).fingerprint
    labels = json.loads((layout.ctc_student_dir("sequence") / "pseudo_labels_greedy.json").read_text())
    train_ids = {c.id for c in layout.open_cuts(layout.fbank_cuts(layout.train_part))}
    assert set(labels) == train_ids
    assert all(len(hyps) == 1 and hyps[0][1] == 1.0 and 0 not in hyps[0][0] for hyps in labels.values())


def test_stored_soft_targets_give_the_online_loss(ctc_run) -> None:
    # With top_k = every token the stored targets are the online ensemble's (up to float16), so
    # the frame-level loss from stored targets equals the online one.
    layout, _, _, _, _ = ctc_run
    units = prepare_units(layout, CTC)
    full = dataclasses.replace(CTC, top_k=units.num_tokens, kd_source="stored", ctc_weight=0.0)
    cuts_path = make_ctc_soft_targets(layout, full)
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


def test_decoding_writes_the_ctc_rows(ctc_run, capsys) -> None:
    layout, md, _, _, _ = ctc_run
    scores = decode_ctc_systems(layout, CTC, DecodeConfig(), results_md=md, command="test", corpus="tiny")
    assert set(scores) == {"teacher0", "teacher1", "ensemble of 2", "ensemble of 2 (independent, guided 1)",
                           "ensemble of 2 (shared init 15 steps)", "student: baseline", "student: frame", "student: sequence"}
    for by_part in scores.values():
        assert set(by_part) == {"dev-clean", "test-clean"}
        for s in by_part.values():
            assert set(s) == {"greedy_ter", "beam_ter", "hlg_wer"} and all(v >= 0 and math.isfinite(v) for v in s.values())
    assert (layout.ctc_graph / "HLG.fst").is_file() and read_record(layout.ctc_graph) is not None
    section = read_section(md, "## CTC results (phone)")
    assert section and "| student: sequence | test-clean |" in section and "| ensemble of 2 | dev-clean |" in section
    # The command line reaches the same library function (spike report: cheap, already tested above).
    rc = cli_main(["ctc-spike-report", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir),
                   "--ctc-set", "model_size=tiny", "--num-threads", "1"])
    assert rc == 0 and "independent: mean spike offset" in capsys.readouterr().out
    assert cli_main(["ctc-decode", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir / "nowhere")]) == 1


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


def test_decode_part_with_a_ctc_student(ctc_run, tmp_path) -> None:
    """`asr-kd decode-part --systems ctc-frame`: a user's own part (test-clean's audio under
    another name) decoded by a CTC student through the HLG, as the CTC table decoded test-clean."""
    import shutil

    layout, md, _, _, _ = ctc_run
    scores = decode_ctc_systems(layout, CTC, DecodeConfig(), results_md=md, command="test", corpus="tiny")
    corpus = tmp_path / "corpus"
    shutil.copytree(layout.data_dir / "corpus" / "test-clean", corpus / "my-test")
    rc = cli_main(["decode-part", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir), "--corpus-dir", str(corpus),
                   "--part", "my-test", "--systems", "ctc-frame", "ctc-baseline", "ctc-teacher1", "ctc-ensemble", "--num-threads", "1"])
    assert rc == 0
    part = json.loads((layout.exp_dir / "decode_parts" / "my-test" / "scores.json").read_text())
    for name, row in (("ctc-frame", "student: frame"), ("ctc-baseline", "student: baseline"), ("ctc-teacher1", "teacher1"),
                      ("ctc-ensemble", "ensemble of 2")):
        assert part[name]["wer"] == pytest.approx(scores[row]["test-clean"]["hlg_wer"])
        assert part[name]["utterances"] == sum(1 for _ in layout.open_cuts(layout.fbank_cuts("test-clean")))
        errors = part[name]["substitutions"] + part[name]["deletions"] + part[name]["insertions"]
        assert sum(v["errors"] for v in part[name]["per_speaker"].values()) == errors
    # A CTC student that was never trained is named in one line.
    assert cli_main(["decode-part", "--data-dir", str(layout.data_dir), "--exp-dir", str(layout.exp_dir), "--corpus-dir", str(corpus),
                     "--part", "my-test", "--systems", "ctc-nosuch"]) == 1
