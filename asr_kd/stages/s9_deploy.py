"""Stage 9: deployment. Self-contained model directories of the systems of Tables 1 and 3 (the
teachers, the triphone GMM, stage 6's students; the CTC baseline and frame-level students),
students trained again on per-utterance CMVN (what a model directory can give any file), ONNX
fp32 and int8 exports, and the cost table with the int8 quantisation gate
(:func:`asr_kd.deploy.report.deploy_report`).

:func:`deploy_plan` decides which systems are built, exported, measured, gated and timed (a pure
function of the run's settings); :func:`run_deploy` trains the per-utterance CMVN students
(stage 6's code, their own records in ``<exp>/students/<kind>_uttcmvn``), then builds and
measures everything in ``<exp>/deploy`` under one record whose inputs are the records of every
stage a model directory reads (stages 3, 4, 6 and 7; CTC 6 and 7). The section is kept in
``<exp>/deploy/section.md`` and ``report.json`` (rows and gates): a skipped stage writes the same
section again, so RESULTS.md never shows speeds or WERs of models other than the recorded ones.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Sequence

from asr_kd.config import INT8_MAX_RELATIVE, DnnConfig, KdConfig, TrainConfig
from asr_kd.deploy.recipe_paths import UTTCMVN_SUFFIX
from asr_kd.errors import ConfigError, DataError
from asr_kd.launch import Launcher
from asr_kd.stages.common import gmm_record, student_record, teachers_record
from asr_kd.stages.ctc_common import ctc_student_record
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, StageRecord, read_record, require_current, require_record
from asr_kd.utils import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
HEADING = "## Deployment"
UTTCMVN_KINDS = ("hard", "distilled", "compressed")  # the students stage 9 can train again on per-utterance CMVN
MODEL_TYPES = ("hybrid", "ctc", "both")
PLOT_NAME = "wer_vs_cost.png"
SECTION_NAME = "section.md"
REPORT_NAME = "report.json"


@dataclasses.dataclass(frozen=True)
class ModelDirJob:
    """One model directory to assemble: the recipe's ``system`` (asr-kd make-model-dir --system) in
    ``<exp>/deploy/<folder>``; ``tune_scale``: its acoustic scale chosen again on the dev part."""

    system: str
    folder: str
    tune_scale: bool = False


@dataclasses.dataclass(frozen=True)
class DeployPlan:
    """What stage 9 builds and measures. ``systems`` are ``NAME=FOLDER[,FOLDER...][@BACKEND]``
    with folders relative to ``<exp>/deploy`` (:class:`asr_kd.deploy.report.SystemSpec`);
    ``speed`` are ``NAME@BACKEND`` of systems among them."""

    model_dirs: tuple[ModelDirJob, ...]
    exports: tuple[str, ...]
    systems: tuple[str, ...]
    gates: tuple[str, ...]
    speed: tuple[str, ...]
    baseline: str | None
    uttcmvn_kinds: tuple[str, ...]  # the students trained again on per-utterance CMVN, in the order asked

    @property
    def hybrid(self) -> bool:
        """Whether the plan deploys the hybrid path's systems (the triphone GMM among them); their
        networks are also scored with per-speaker, global and per-utterance CMVN."""
        return any(job.system == "tri" for job in self.model_dirs)

    @property
    def ctc(self) -> bool:
        """Whether the plan deploys CTC students."""
        return any(job.system.startswith("ctc-") for job in self.model_dirs)


def deployable_kinds(requested: Sequence[str], kd_mode: str, compressed: bool) -> tuple[str, ...]:
    """Return which of the ``requested`` students (hard, distilled, compressed) can be trained again
    on per-utterance CMVN: a distilled one learns from stage 5's stored soft targets, so none with
    ``kd_mode`` online (teachers in the loop would see the student's input); a compressed one only
    when the run has a compressed network. Each one left out is logged with the reason."""
    unknown = [k for k in requested if k not in UTTCMVN_KINDS]
    if unknown:
        raise ConfigError(f"--uttcmvn takes {', '.join(UTTCMVN_KINDS)} (or none), got {unknown[0]!r}")
    twice = next((k for i, k in enumerate(requested) if k in requested[:i]), None)
    if twice is not None:
        raise ConfigError(f"--uttcmvn names {twice!r} twice")
    kinds = []
    for kind in requested:
        if kind != "hard" and kd_mode != "stored":
            log.info("stage 9: no %s student on per-utterance CMVN: it learns from stored soft targets, and the kd config has mode: %s",
                     kind, kd_mode)
        elif kind == "compressed" and not compressed:
            log.info("stage 9: no compressed student (no compressed network: --compressed-config none): none on per-utterance CMVN")
        else:
            kinds.append(kind)
    return tuple(kinds)


def deploy_plan(model_type: str, num_teachers: int, compressed: bool, uttcmvn_kinds: Sequence[str] = ()) -> DeployPlan:
    """Return what stage 9 builds for ``model_type`` (hybrid, ctc or both): with the hybrid path
    the teachers, the triphone GMM and stage 6's students (``compressed``: the compressed one too)
    as model directories, the distilled (and compressed) student exported, the ensemble as the
    speed-up baseline and the distilled student's int8 gate; ``uttcmvn_kinds`` (from
    :func:`deployable_kinds`) each as a model directory with its scale tuned on dev, the distilled
    one gated and timed end to end in place of the distilled student. With the CTC path the
    baseline and frame-level students, the frame-level one exported and timed (and gated, with the
    ensemble's place as baseline taken by the CTC baseline, when the hybrid path is off)."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"--model-type takes {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if num_teachers < 1:
        raise ConfigError(f"--num-teachers must be >= 1, got {num_teachers}")
    hybrid, ctc = model_type != "ctc", model_type != "hybrid"
    dirs: list[ModelDirJob] = []
    exports: list[str] = []
    systems: list[str] = []
    gates: list[str] = []
    speed: list[str] = []
    baseline = None
    if hybrid:
        teachers = [f"teacher{i}" for i in range(num_teachers)]
        students = ["hard", "distilled", *(["compressed"] if compressed else [])]
        dirs += [ModelDirJob(t, t) for t in teachers] + [ModelDirJob("tri", "tri")] + [ModelDirJob(k, k) for k in students]
        exports.append("distilled")
        systems += ["tri=tri", f"ensemble={','.join(teachers)}", "teacher0=teacher0", "baseline=hard", "distilled=distilled",
                    "distilled=distilled@onnx", "distilled=distilled@onnx-int8"]
        if compressed:
            exports.append("compressed")
            systems += ["compressed=compressed", "compressed=compressed@onnx-int8"]
        gates.append("distilled")
        hybrid_speed = "distilled@onnx-int8"
        for kind in uttcmvn_kinds:
            folder, name = f"{kind}_uttcmvn", ("baseline" if kind == "hard" else kind) + UTTCMVN_SUFFIX
            dirs.append(ModelDirJob(kind + UTTCMVN_SUFFIX, folder, tune_scale=True))
            systems.append(f"{name}={folder}")
            if kind != "hard":  # the deployable form: int8
                exports.append(folder)
                systems.append(f"{name}={folder}@onnx-int8")
            if kind == "distilled":  # the student users deploy: gated (fp32 ONNX too) and timed end to end
                systems.append(f"{name}={folder}@onnx")
                gates.append(name)
                hybrid_speed = f"{name}@onnx-int8"
        speed.append(hybrid_speed)
        baseline = "ensemble"
    if ctc:
        # The CTC baseline and frame-level students (seed 0), each at the HLG scale CTC stage 7 tuned on dev; the
        # frame-level one, the other distilled student users deploy, also as ONNX fp32 and int8, timed end to end.
        dirs += [ModelDirJob("ctc-baseline", "ctc_baseline"), ModelDirJob("ctc-frame", "ctc_frame")]
        exports.append("ctc_frame")
        systems += ["ctc-baseline=ctc_baseline", "ctc-frame=ctc_frame", "ctc-frame=ctc_frame@onnx", "ctc-frame=ctc_frame@onnx-int8"]
        speed.append("ctc-frame@onnx-int8")
        if not hybrid:
            gates, baseline = ["ctc-frame"], "ctc-baseline"
    return DeployPlan(tuple(dirs), tuple(exports), tuple(systems), tuple(gates), tuple(speed), baseline, tuple(uttcmvn_kinds))


@dataclasses.dataclass(frozen=True)
class StudentSettings:
    """How stage 6 trained the full-size and the compressed students (stage 9 trains their
    per-utterance CMVN versions the same way)."""

    model_config: DnnConfig
    train_config: TrainConfig
    kd: KdConfig
    compressed_model_config: DnnConfig | None = None  # None: the run has no compressed student
    compressed_train_config: TrainConfig | None = None  # None: train_config


def _train_uttcmvn_students(layout: RecipeLayout, kinds: Sequence[str], students: StudentSettings, num_teachers: int | None, command: str,
                            jobs: int, num_threads: int, launcher: Launcher | None) -> None:
    """Train (or skip, on their records) the per-utterance CMVN students of ``kinds``, seed 0 each."""
    from asr_kd.stages.s6_students import train_students

    full = [k for k in kinds if k != "compressed"]
    common = {"layout": layout, "kd": students.kd, "num_teachers": num_teachers, "command": command, "num_seeds": 1, "jobs": jobs,
              "num_threads": num_threads, "launcher": launcher, "per_utterance_cmvn": True}
    if full:
        train_students(kinds=full, model_config=students.model_config, train_config=students.train_config, **common)
    if "compressed" in kinds:
        assert students.compressed_model_config is not None
        train_students(kinds=["compressed"], model_config=students.compressed_model_config,
                       train_config=students.compressed_train_config or students.train_config, **common)


def _decoded_current(folder: Path, stage_hint: str, current: dict[str, str]) -> StageRecord:
    """Return the record of the decoding stage in ``folder``, which chose the scales the model
    directories decode at; DataError naming ``stage_hint`` when it did not decode one of the
    systems of ``current`` (its input keys) or decoded another version of one."""
    record = require_current(folder, stage_hint, current)
    missing = sorted(k for k in current if k not in record.inputs)
    if missing:
        raise DataError(f"{folder} did not decode {', '.join(m.replace('student_', '').replace('student ', '') for m in missing)}, whose "
                        f"tuned scale a model directory needs; run {stage_hint} again (with that system)")
    return record


def deploy_inputs(layout: RecipeLayout, plan: DeployPlan) -> dict[str, str]:
    """Return the fingerprints of the stage records the plan's model directories are built from,
    but for stage 9's own per-utterance CMVN students (:func:`uttcmvn_inputs`); DataError naming
    the stage to run when one has not finished, was made from an earlier run of its own inputs
    (stage 3's record carries stages 1 and 2), or (the decoding stages) did not tune a system the
    plan deploys."""
    inputs: dict[str, str] = {}
    features = read_record(layout.features("fbank"))
    if features is not None:  # stage 1's feature config goes into every model directory
        inputs["features"] = features.fingerprint
    if plan.hybrid:
        from asr_kd.stages.s7_decode import student_system_name

        inputs["gmm"] = gmm_record(layout).fingerprint  # checks that stages 1 and 2 were not redone since
        inputs["teachers"] = teachers_record(layout).fingerprint
        students = {}
        for job in plan.model_dirs:
            if job.system in UTTCMVN_KINDS:
                fp = student_record(layout, layout.student_dir(job.system), f"stage 6 ({job.system} student)").fingerprint
                inputs[f"student_{job.folder}"] = students[f"student_{student_system_name(job.system, 0)}"] = fp
        # Stage 7 chose the scales the model directories decode at: for these very students and teachers.
        inputs["decode"] = _decoded_current(layout.decode, "stage 7 (asr-kd decode-hybrid)",
                                            {**students, "teachers": inputs["teachers"]}).fingerprint
    if plan.ctc:
        students = {}
        for job in plan.model_dirs:
            if job.system.startswith("ctc-"):
                name = job.system[4:]
                fp = ctc_student_record(layout, name, "CTC stage 6 (asr-kd ctc-train-students)").fingerprint
                inputs[f"ctc_{name}"] = students[f"student {name}"] = fp
        graph = require_record(layout.ctc_graph, "CTC stage 7 (asr-kd ctc-decode), which builds the HLG graph").fingerprint
        inputs["ctc_decode"] = _decoded_current(layout.ctc_decode, "CTC stage 7 (asr-kd ctc-decode)", {**students, "graph": graph}).fingerprint
    return inputs


def uttcmvn_inputs(layout: RecipeLayout, plan: DeployPlan) -> dict[str, str]:
    """Return the fingerprints of the records of stage 9's per-utterance CMVN students in the plan."""
    inputs = {}
    for job in plan.model_dirs:
        kind = job.system.removesuffix(UTTCMVN_SUFFIX)
        if job.system != kind:
            hint = f"stage 9 ({kind} student on per-utterance CMVN)"
            inputs[f"student_{job.folder}"] = student_record(layout, layout.student_dir(kind, 0, True), hint).fingerprint
    return inputs


def run_deploy(
    layout: RecipeLayout, plan: DeployPlan, students: StudentSettings | None = None, num_teachers: int | None = None,
    max_relative: float = INT8_MAX_RELATIVE, results_md: Path | None = None, command: str = "", jobs: int = 1, num_threads: int = 1,
    launcher: Launcher | None = None,
) -> dict:
    """Run stage 9 as ``plan`` says (:func:`deploy_plan`), or skip it when its record matches, and
    write its section to ``results_md`` (the cost-table plot beside it). ``students``: how stage 6
    trained its students, for those of ``plan.uttcmvn_kinds`` (distilled from ``num_teachers``
    teachers' soft targets; default: every teacher stage 4 trained). Returns ``report.json``'s contents:
    ``{"rows": [CostRow fields...], "gates": [GateResult fields...]}``. A failed quantisation gate
    (:func:`gates_passed`) is part of the record: the same models fail it again on a rerun, which
    measures nothing; another ``max_relative`` or a retrained student redoes the stage."""
    from asr_kd.deploy.recipe_paths import make_model_dir_from_recipe

    inputs = deploy_inputs(layout, plan)  # first: no student is trained for a stage that would then refuse to run
    if plan.uttcmvn_kinds:
        if students is None:
            raise ConfigError("stage 9 trains students on per-utterance CMVN: it needs stage 6's student settings")
        _train_uttcmvn_students(layout, plan.uttcmvn_kinds, students, num_teachers, command, jobs, num_threads, launcher)
    folder = layout.deploy
    config = {"plan": plan, "max_relative": max_relative, "train_part": layout.train_part, "dev_part": layout.dev_part,
              "test_part": layout.test_part, "ctc_units": layout.ctc_units if plan.ctc else None}
    guard = StageGuard("stage 9 (deployment)", folder, config, {**inputs, **uttcmvn_inputs(layout, plan)}, command)
    section, report = folder / SECTION_NAME, folder / REPORT_NAME
    if guard.needs_work():
        dev = layout.fbank_cuts(layout.dev_part)
        for job in plan.model_dirs:
            log.info("stage 9: model directory %s -> %s", job.system, folder / job.folder)
            make_model_dir_from_recipe(layout.exp_dir, layout.data_dir, job.system, folder / job.folder, layout.train_part, layout.ctc_units,
                                       tune_on=dev if job.tune_scale else None)
        from asr_kd.deploy.onnx_export import export_onnx

        for name in plan.exports:
            log.info("stage 9: ONNX export of %s", folder / name)
            export_onnx(folder / name)
        _measure(layout, plan, folder, max_relative, command)
        guard.finish(guard.all_files())
    data = read_json(report)
    assert isinstance(data, dict)
    if results_md is not None:
        from asr_kd.report.results_md import write_section

        if (folder / PLOT_NAME).is_file() and Path(results_md).resolve().parent != folder.resolve():
            shutil.copyfile(folder / PLOT_NAME, Path(results_md).parent / PLOT_NAME)
        write_section(results_md, HEADING, section.read_text())
    return data


def _measure(layout: RecipeLayout, plan: DeployPlan, folder: Path, max_relative: float, command: str) -> None:
    """Measure the plan's systems side by side (the cost table, gates, end-to-end speed) and store
    the section and ``report.json`` in ``folder``."""
    from asr_kd.deploy.report import SystemSpec, deploy_report

    def spec(text: str) -> SystemSpec:  # the plan's folders are relative to the stage's
        s = SystemSpec.parse(text)
        return dataclasses.replace(s, model_dirs=tuple(folder / d for d in s.model_dirs))

    systems = [spec(s) for s in plan.systems]
    speed = [next(s for s in systems if f"{s.name}@{s.backend}" == want) for want in plan.speed]
    rows, gates, text = deploy_report(
        systems, layout.fbank_cuts(layout.test_part), list(plan.gates), max_relative, plan.baseline, command=command,
        speaker_cmvn=layout.cmvn(layout.test_part) if plan.hybrid else None, plot=folder / PLOT_NAME, plot_link=PLOT_NAME,
        speed_system=speed, dev_manifest=layout.fbank_cuts(layout.dev_part))
    write_json_atomic(folder / REPORT_NAME, {"rows": [dataclasses.asdict(r) for r in rows], "gates": [dataclasses.asdict(g) for g in gates]})
    write_text_atomic(folder / SECTION_NAME, text)


def gates_passed(report: dict) -> bool:
    """Return whether every quantisation gate of a stage-9 ``report.json`` passed."""
    return all(g["passed"] for g in report.get("gates", []))
