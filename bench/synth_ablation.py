"""What each synthesiser and each perturbation of the synthetic corpus adds (issue 12): stage 3's
triphone GMM trained on variants of one corpus' training part, all tested on the same test parts.

A variant is the reference corpus' SynthConfig with some fields changed (``NAME:field=value;...``,
lists comma-separated; ``NAME:`` alone is the reference itself). Each variant's training part is
rendered by ``synthesize_corpus(..., parts=[train])``: the same talkers, sentences and random draws
as the reference's, only what the fields change differs (Festival's talkers speak through espeak-ng
in ``engines=espeak``, and the babble noise is made of espeak-ng voices only; no warp with
``vtlp_max=0``; ...). preset, seed, wordnet_share and ood_engine stay the reference's (the bench
checks the training text is the reference's, sentence for sentence). The reference's dev, test and
out-of-domain parts are hard-linked beside it, so that every variant is decoded on the very same
audio, and the training text (hence lexicon and LM) is the same too. Then the recipe's stages 0-3
run on that folder through the ``asr-kd`` commands of run.sh (manifests, features, lang, GMM with
the acoustic scale tuned on dev), with the recipe's configs.

    python bench/synth_ablation.py --reference recipes/librispeech/data/corpus --work /tmp/synth_ablation \\
        --variant reference: --variant espeak_only:engines=espeak --variant no_vtlp:vtlp_max=0 \\
        [--recipe-exp recipes/librispeech/exp] [--nj 2]

Reported per variant: the triphone GMM's WER on dev-clean (at its tuned scale), test-clean (also
split by the synthesiser family of the test talker, espeak-ng's talkers whose accent no training
talker of the reference speaks apart) and test-ood, and each variant minus the first
(the reference) with paired bootstrap intervals over the test utterances (Bisani & Ney 2004).
With ``--recipe-exp``, the reference variant's WERs are compared with the recipe's own stage 3
(same corpus, same configs: they should be equal). A GMM is a proxy for the networks: it says
which training speech generalises, not how much a DNN gains from it. ``--dnn`` measures that too:
bench/hybrid_capacity.py's ``base`` DNN (the demo's 3 x 256 network, ``--dnn-train-config``'s
TrainConfig, default conf/train_mini.yaml: 10 epochs) trained on each variant's triphone-GMM
alignments and decoded as stage 7 decodes (scale tuned on dev-clean), ``--nj`` variants at a time
(one torch thread each); the same tables for it in a section of its own. Everything is written
under ``--work`` (reused on a rerun with the same settings: each command keeps its own record).

Writes bench/RESULTS.md, section "Synthetic corpus ablations" (and, with ``--dnn``, "Synthetic
corpus ablations with the DNN").
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEADING = "## Synthetic corpus ablations: what each synthesiser and perturbation adds (bench/synth_ablation.py, issue 12)"
DNN_HEADING = ("## Synthetic corpus ablations with the DNN: what each synthesiser and perturbation adds to a hybrid DNN "
               "(bench/synth_ablation.py --dnn, issue 12)")
# What a report of the GMM writes into each variant's result, kept apart from the DNN's report.
REPORT_KEYS = ("differences", "within_null_spread", "against_nulls")
RECIPE = REPO / "recipes" / "librispeech"
TRAIN, DEV, TEST, OOD = "train-clean-100", "dev-clean", "test-clean", "test-ood"
PARTS = (TRAIN, DEV, TEST, OOD)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:field=value;field=value`` -> (NAME, overrides); ``NAME:`` has none."""
    if ":" not in spec:
        raise SystemExit(f"--variant {spec!r}: expected NAME:field=value;... (NAME: alone for the reference)")
    name, rest = spec.split(":", 1)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--variant {spec!r}: the name must be letters, digits, - and _")
    overrides: dict[str, str] = {}
    for item in filter(None, rest.split(";")):
        if "=" not in item:
            raise SystemExit(f"--variant {spec!r}: {item!r} is not field=value")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return name, overrides


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file under ``src`` to the same place under ``dst`` (an atomic copy across
    devices); a file already there must be the same file or hold the same bytes."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif target.exists():
            if not (os.path.samefile(path, target) or filecmp.cmp(path, target, shallow=False)):
                raise SystemExit(f"{target} differs from {path}: delete {dst.parent} (made from another reference) and run again")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)


def _transcripts(part_dir: Path) -> dict[str, str]:
    return {str(t.relative_to(part_dir)): t.read_text() for t in sorted(part_dir.rglob("*.trans.txt"))}


def run(cmd: list[str], log: Path) -> float:
    """Run one asr-kd command (output to ``log``); return its seconds; exit with the log's tail on failure."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"# {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"{shlex.join(cmd[:2])} failed (exit {rc}); see {log}:\n{tail}")
    return round(time.perf_counter() - start, 1)


# Fields a variant may not change: the training text (hence lexicon and LM) must stay the
# reference's, and test-ood is the reference's own audio.
FIXED_FIELDS = ("preset", "seed", "wordnet_share", "ood_engine", "num_jobs")


def variant_config(reference_config, name: str, overrides: dict[str, str], num_jobs: int):
    """The reference's SynthConfig with ``overrides``; SystemExit (one line) on a bad field or value."""
    from asr_kd.config import SynthConfig, config_from_dict
    from asr_kd.errors import ConfigError

    fixed = sorted(set(overrides) & set(FIXED_FIELDS))
    if fixed:
        raise SystemExit(f"--variant {name}: {fixed} must stay the reference's (the training text and test-ood are shared)")
    try:
        return config_from_dict(SynthConfig, {**dataclasses.asdict(reference_config), **overrides, "num_jobs": num_jobs},
                                f"--variant {name}")
    except ConfigError as err:
        raise SystemExit(str(err)) from None


def build_variant(args: argparse.Namespace, name: str, overrides: dict[str, str], config) -> dict:
    """Render the variant's training part, link the reference's test parts, run stages 0-3 on them."""
    from asr_kd.data.synth import synthesize_corpus

    work = args.work / name
    corpus, data, exp = work / "corpus", work / "data", work / "exp"
    log = work / "log.txt"
    work.mkdir(parents=True, exist_ok=True)
    # What this folder was made from: a rerun with another reference or other overrides is refused.
    made_from = {"reference": str(args.reference.resolve()),
                 "reference_marker_sha256": hashlib.sha256((args.reference / "SYNTHETIC.json").read_bytes()).hexdigest(),
                 "overrides": overrides}
    stamp = work / "variant.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != made_from:
        raise SystemExit(f"{work} was made for other settings ({stamp}): delete it or use another --work")
    stamp.write_text(json.dumps(made_from, indent=1))
    timings: dict[str, float] = {}
    start, started_at = time.perf_counter(), time.time()
    if overrides:
        synthesize_corpus(corpus, config, parts=[TRAIN])
        timings["synthesis"] = round(time.perf_counter() - start, 1)
        ref_marker = json.loads((args.reference / "SYNTHETIC.json").read_text())
        marker = json.loads((corpus / "SYNTHETIC.json").read_text())
        if _transcripts(corpus / TRAIN) != _transcripts(args.reference / TRAIN) or marker["wordnet_share"] != ref_marker["wordnet_share"]:
            raise SystemExit(f"{name}: its training text differs from the reference's (another WordNet or code?): "
                             "the lexicon and LM would not match the reference's test parts")
        if "engines" not in overrides and marker["engines"] != ref_marker["engines"]:
            raise SystemExit(f"{name}: engines {marker['engines']} here, {ref_marker['engines']} in the reference: install the same synthesisers")
        linked = (DEV, TEST, OOD)
        # What the change reached: training files equal byte for byte to the reference's (a talker the
        # change leaves alone renders as the reference did, unless the code changed since it was made).
        rendered = sorted((corpus / TRAIN).rglob("*.flac"))
        same = sum((args.reference / f.relative_to(corpus)).is_file()
                   and (args.reference / f.relative_to(corpus)).read_bytes() == f.read_bytes() for f in rendered)
        identical = [same, len(rendered)]
    else:
        linked = PARTS
        identical = None
    for part in linked:
        link_tree(args.reference / part, corpus / part)
    asr_kd = str(Path(sys.executable).parent / "asr-kd")
    parts = list(PARTS)
    timings["manifests"] = run([asr_kd, "prepare-manifests", "--corpus-dir", str(corpus), "--output-dir", str(data / "manifests"),
                                "--parts", *parts, "--num-jobs", str(args.nj)], log)
    timings["features"] = run([asr_kd, "compute-features", "--manifest-dir", str(data / "manifests"), "--output-dir", str(data),
                               "--parts", *parts, "--config", str(RECIPE / "conf/features.yaml"), "--set", f"num_jobs={args.nj}"], log)
    timings["lang"] = run([asr_kd, "prepare-lang", "--manifest-dir", str(data / "manifests"), "--output-dir", str(data / "lang"),
                           "--train-split", TRAIN, "--dev-split", DEV, "--splits", *parts, "--config", str(RECIPE / "conf/lang.yaml"),
                           "--results-md", str(work / "RESULTS.md"), "--results-command", "bench/synth_ablation.py"], log)
    timings["gmm"] = run([asr_kd, "train-gmm", "--data-dir", str(data), "--lang-dir", str(data / "lang"), "--exp-dir", str(exp),
                          "--train-set", TRAIN, "--dev-set", DEV, "--test-set", TEST, "--ood-set", OOD, "--parts", *parts,
                          "--config", str(args.gmm_config), "--decode-config", str(args.decode_config), "--num-jobs", str(args.nj),
                          "--results-md", str(work / "RESULTS.md"), "--recipe-command", "bench/synth_ablation.py"], log)
    timings["total"] = round(time.perf_counter() - start, 1)
    # A rerun finds every stage up to date (each command's own record): keep the timings of the run
    # that did the work, and say so.
    kept = work / "timings.json"
    gmm_reused = (exp / "gmm" / "provenance.json").stat().st_mtime < started_at
    if not gmm_reused:
        kept.write_text(json.dumps({"timings": timings}))
    elif kept.is_file():
        timings = {**json.loads(kept.read_text())["timings"], "reused": True}
    return {"overrides": overrides, "config": dataclasses.asdict(config), "timings": timings, "identical_train_files": identical,
            **read_scores(exp)}


def read_scores(exp: Path) -> dict:
    """The triphone system's WERs (stage 3's record) and per-utterance word errors of each part."""
    stage3 = json.loads((exp / "gmm" / "stage3.json").read_text())
    out: dict = {"wer": {}, "scale": None, "utterances": {}}
    for part in (DEV, TEST, OOD):
        w = stage3["wers"]["tri"][part]
        out["wer"][part] = {k: w[k] for k in ("wer", "substitutions", "deletions", "insertions", "ref_words")}
        if part == DEV:
            out["scale"] = w["acoustic_scale"]  # chosen on dev, used on every part
        details = json.loads((exp / "gmm" / f"decode_tri_{part}" / "wer_details.json").read_text())
        out["utterances"][part] = {u["utt_id"]: [u["substitutions"] + u["deletions"] + u["insertions"],
                                                 u["hits"] + u["substitutions"] + u["deletions"]] for u in details["utterances"]}
    return out


def run_dnn(args: argparse.Namespace, name: str) -> None:
    """Train and score bench/hybrid_capacity.py's ``base`` DNN on the variant's triphone-GMM
    alignments (under ``<work>/<name>/dnn``; its record makes a rerun with the same settings reuse it)."""
    work = args.work / name
    run([sys.executable, str(REPO / "bench" / "hybrid_capacity.py"), "--data", str(work / "data"), "--exp", str(work / "exp"),
         "--out", str(work / "dnn"), "--variant", "base", "--train-config", str(args.dnn_train_config), "--jobs", "1",
         "--threads", "1", "--ood-part", OOD, "--results", str(work / "dnn" / "RESULTS.md"),
         "--title", f"synth_ablation variant {name}"], work / "log_dnn.txt")


def read_dnn_scores(work: Path) -> dict:
    """The DNN's WERs (dev at its tuned scale, the test parts at that scale), frame accuracies and
    per-utterance word errors of each part, as :func:`read_scores` gives the GMM's, from
    hybrid_capacity's ``result.json`` and ``per_utt.json`` files; and its training's CPU time."""
    from asr_kd.stages.s7_decode import per_utterance_path

    folder = work / "dnn" / "base"
    r = json.loads((folder / "result.json").read_text())
    out: dict = {"wer": {}, "scale": r["dev"]["acoustic_scale"], "utterances": {}, "frame_accuracy": {},
                 "train_cpu_seconds": r["training"]["cpu_seconds"],  # None: stopped after training, cost unknown
                 "dnn_network": r["network"], "dnn_epochs": r["train"]["num_epochs"]}
    for part in (DEV, TEST, OOD):
        score = r["dev"] if part == DEV else r["test"][part]
        out["wer"][part] = {k: score[k] for k in ("wer", "substitutions", "deletions", "insertions", "ref_words")}
        out["frame_accuracy"][part] = score["frame_accuracy"]
        per = json.loads(per_utterance_path(None, "base", part, folder / "decode").read_text())
        out["utterances"][part] = {u: v[:2] for u, v in per.items()}
    return out


def dnn_view(results: dict[str, dict]) -> dict[str, dict]:
    """Each variant's result with the DNN's scores in place of the GMM's (what :func:`report`
    reads), without what the GMM's report wrote into it."""
    return {name: {**{k: v for k, v in r.items() if k not in (*REPORT_KEYS, "dnn")}, **r["dnn"]} for name, r in results.items()}


UNTRAINED_ACCENT = "espeak, accent untrained"


def talker_groups(speakers: list[dict]) -> dict[str, str]:
    """Speaker id -> group of a corpus' talkers (SYNTHETIC.json's ``speakers``): the synthesiser
    family, with espeak-ng's talkers whose accent no training talker of the corpus speaks apart
    (UNTRAINED_ACCENT): independent accent draws can leave some out of training (SynthConfig.cover_accents)."""
    def accent(s: dict) -> str:
        return s["voice"].split("+")[0]

    trained = {accent(s) for s in speakers if s["part"] == TRAIN and s["engine"] == "espeak"}
    return {str(s["speaker_id"]): UNTRAINED_ACCENT if s["engine"] == "espeak" and accent(s) not in trained else s["engine"]
            for s in speakers}


def reference_talker_groups(reference: Path) -> dict[str, str]:
    """Speaker id -> group (talker_groups), from the reference corpus' SYNTHETIC.json."""
    marker = json.loads((reference / "SYNTHETIC.json").read_text())
    return talker_groups(marker["speakers"])


def rate(utts: dict[str, list[int]], ids: list[str]) -> float:
    errors, words = (sum(utts[u][i] for u in ids) for i in (0, 1))
    return errors / words


def _seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.0f} s"


def plot_differences(results: dict[str, dict], path: Path, system: str = "triphone GMM") -> Path:
    """A forest plot: each variant's WER minus the reference's on test-clean and test-ood, with the
    95% paired bootstrap interval; left of 0 is better than the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr_kd.report.tables import save_figure

    names = list(results)[1:]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.4), dpi=100)
    for k, (part, colour) in enumerate([(TEST, "tab:blue"), (OOD, "tab:orange")]):
        for i, name in enumerate(names):
            d = next(x for x in results[name]["differences"] if x["part"] == part and x["talkers"] == "all")
            y = len(names) - 1 - i + (0.15 if k == 0 else -0.15)
            ax.errorbar(100 * d["value"], y, xerr=[[100 * (d["value"] - d["low"])], [100 * (d["high"] - d["value"])]], fmt="o",
                        color=colour, capsize=3, label=part if i == 0 else None)
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_xlabel(f"{system} WER minus the {list(results)[0]}'s (points; left is better)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, path)


def report(args: argparse.Namespace, results: dict[str, dict], command: str, dnn: bool = False) -> str:
    """The section of the triphone GMM's scores (``results`` as build_variant returns them), or with
    ``dnn`` of the DNN's (``results`` as :func:`dnn_view` gives them). Records each variant's
    differences and comparisons with the nulls into its result."""
    import numpy as np

    from asr_kd.metrics.paired import bootstrap_difference

    names = list(results)
    ref = results[names[0]]
    group_of = reference_talker_groups(args.reference)
    test_ids = sorted(ref["utterances"][TEST])
    families = sorted({group_of[u.split("-")[0]] for u in test_ids})
    by_family = {f: [u for u in test_ids if group_of[u.split("-")[0]] == f] for f in families}
    lines = [DNN_HEADING if dnn else HEADING, "", f"`{command}` (every number: `{args.json}`).", "",
             f"Reference corpus: `{args.reference}` ({ref['config']['preset']}, seed {ref['config']['seed']}, difficulty "
             f"{ref['config']['difficulty']}, engines {', '.join(ref['config']['engines'])}, test-ood by {ref['config']['ood_engine']}). "
             "Each variant's training part is rendered again with the fields shown changed (the same talkers, sentences and "
             "random draws otherwise); dev-clean, test-clean and test-ood are the reference's own audio for every variant. "
             "Stages 0-3 of the recipe (its feature, lang, GMM and decode configs) train and decode the triphone GMM; the "
             "acoustic scale is tuned on dev-clean." + (
                 f" Then bench/hybrid_capacity.py's `base` DNN ({ref['dnn_network']}, `{args.dnn_train_config.name}`: "
                 f"{ref['dnn_epochs']} epochs, one torch thread) trains on the variant's triphone-GMM alignments and is decoded "
                 "as stage 7 decodes, its acoustic scale tuned on dev-clean: every number below is the DNN's." if dnn else ""), ""]
    fam_cols = " | ".join(f"test-clean, {f} talkers ({len(by_family[f])} utts)" for f in families)
    lines += [f"| Variant | Changed | Training files unchanged | Dev WER (scale) | Test-clean WER | {fam_cols} | Test-ood WER "
              f"| {'DNN training (CPU)' if dnn else 'Time (synthesis, total)'} |", "|---" * (7 + len(families)) + "|"]
    for name in names:
        r = results[name]
        changed = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "nothing (the reference)"
        fam = " | ".join(f"{100 * rate(r['utterances'][TEST], by_family[f]):.2f}%" for f in families)
        t = r["timings"]
        ident = "all (linked)" if r["identical_train_files"] is None else "{} of {}".format(*r["identical_train_files"])
        lines.append(f"| {name} | {changed} | {ident} | {100 * r['wer'][DEV]['wer']:.2f}% ({r['scale']}) | {100 * r['wer'][TEST]['wer']:.2f}% | {fam} "
                     f"| {100 * r['wer'][OOD]['wer']:.2f}% | " + (("n/a" if r["train_cpu_seconds"] is None else f"{r['train_cpu_seconds']:.0f} s") if dnn else
                     f"{_seconds(t.get('synthesis', 0.0 if not r['overrides'] else None))}, {_seconds(t['total'])}{' (an earlier run)' if t.get('reused') else ''}") + " |")
    lines += ["", f"Differences from `{names[0]}` (variant minus reference, WER points, 95% paired bootstrap interval over the "
              "utterances, 2000 resamples; 'no' = the interval contains 0):", "",
              "| Variant | test-clean | " + " | ".join(f"test-clean, {f} talkers" for f in families) + " | test-ood |",
              "|---" * (3 + len(families)) + "|"]
    for name in names[1:]:
        r = results[name]
        cells = []
        for part, subset, ids in [(TEST, "all", test_ids), *((TEST, f, by_family[f]) for f in families),
                                  (OOD, "all", sorted(ref["utterances"][OOD]))]:
            a = np.array([ref["utterances"][part][u][0] for u in ids], dtype=float)
            b = np.array([r["utterances"][part][u][0] for u in ids], dtype=float)
            den = np.array([ref["utterances"][part][u][1] for u in ids], dtype=float)
            ci = bootstrap_difference(a, b, den)
            cells.append(f"{100 * ci.value:+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}] {'yes' if ci.excludes_zero else 'no'}")
            r.setdefault("differences", []).append({"part": part, "talkers": subset, "utterances": len(ids), **ci.to_dict()})
        lines.append(f"| {name}{' (null)' if name in args.null else ''} | " + " | ".join(cells) + " |")
    nulls = [n for n in names[1:] if n in args.null]
    if nulls:
        spread = {part: max(abs(d["value"]) for n in nulls for d in results[n]["differences"] if d["part"] == part and d["talkers"] == "all")
                  for part in (TEST, OOD)}
        lines += ["", f"Null variants ({', '.join(f'`{n}`' for n in nulls)}): the training audio drawn again from the same "
                  "distribution (only which utterance gets which draw changes). The bootstrap intervals cover the choice of test "
                  f"utterances, not the training audio's draws nor the {'DNN' if dnn else 'GMM'}'s sensitivity to them; the nulls measure that: they moved "
                  f"test-clean WER by up to {100 * spread[TEST]:.2f} points and test-ood by up to {100 * spread[OOD]:.2f}. "
                  "A variant's difference no larger than that is not an effect of what it changes, whatever its interval says."]
        for name in names[1:]:
            results[name]["within_null_spread"] = {part: abs(next(d["value"] for d in results[name]["differences"]
                                                                  if d["part"] == part and d["talkers"] == "all")) <= spread[part]
                                                   for part in (TEST, OOD)}
        if len(nulls) >= 2:
            # The reference is one more draw of the same distribution: compare each variant with all of them, on
            # test-clean, each talker group of it, and test-ood.
            columns = [("test-clean", TEST, None), *((f"test-clean, {f} talkers", TEST, f) for f in families), ("test-ood", OOD, None)]

            def wer(name: str, part: str, group: str | None) -> float:
                r = results[name]
                return 100 * (r["wer"][part]["wer"] if group is None else rate(r["utterances"][part], by_family[group]))

            draws = {label: np.array([wer(n, part, group) for n in [names[0], *nulls]]) for label, part, group in columns}
            stats = {label: (float(v.mean()), float(v.std(ddof=1)), float(v.min()), float(v.max())) for label, v in draws.items()}
            lines += ["", f"The reference and the nulls are {len(nulls) + 1} draws of one distribution: "
                      + "; ".join(f"{label} WER {m:.2f}% ± {sd:.2f} (range {lo:.2f}-{hi:.2f})" for label, (m, sd, lo, hi) in stats.items())
                      + " (mean ± standard deviation). Each variant against them (its WER minus their mean, in their standard "
                      "deviations; outside their range or not):", "",
                      "| Variant | " + " | ".join(label for label, _, _ in columns) + " |", "|---" * (1 + len(columns)) + "|"]
            for name in names[1:]:
                if name in nulls:
                    continue
                cells = []
                for label, part, group in columns:
                    m, sd, lo, hi = stats[label]
                    w = wer(name, part, group)
                    where = "below their range" if w < lo else "above their range" if w > hi else "within their range"
                    cells.append(f"{w - m:+.2f} points ({(w - m) / sd:+.1f} SD), {where}")
                    key = part if group is None else f"{part}, {group} talkers"
                    results[name].setdefault("against_nulls", {})[key] = {"points": w - m, "sd": (w - m) / sd, "where": where}
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(names) > 1:
        plot = plot_differences(results, args.results.parent / f"synth_ablation{'_dnn' if dnn else ''}.png",
                                "hybrid DNN" if dnn else "triphone GMM")
        lines += ["", f"![variant minus reference, WER points with 95% intervals]({plot.name})"]
    if dnn:
        cpu = [r["train_cpu_seconds"] / 60 for r in results.values() if r["train_cpu_seconds"] is not None]
        took = f"took {min(cpu):.1f} to {max(cpu):.1f} CPU minutes per variant" if cpu else "cost is unknown (n/a)"
        if cpu and len(cpu) < len(results):
            took += f" ({len(cpu)} of the {len(results)} variants; the others' n/a)"
        lines += ["", f"The DNN's training {took}. It learns from the "
                  "alignments of the variant's own GMM, so a variant's difference here is what its training speech does to "
                  "both; the test parts and the LM are the same for every variant."]
        return "\n".join(lines) + "\n"
    if args.recipe_exp is not None:
        recipe = read_scores(args.recipe_exp)
        same = all(recipe["wer"][p] == ref["wer"][p] for p in (DEV, TEST, OOD))
        lines += ["", f"Check: the reference variant against the recipe's own stage 3 (`{args.recipe_exp}`): "
                  + ("the same tri WERs on dev-clean, test-clean and test-ood, error for error." if same else
                     "DIFFERENT: " + "; ".join(f"{p} {100 * ref['wer'][p]['wer']:.2f}% here, {100 * recipe['wer'][p]['wer']:.2f}% there"
                                                for p in (DEV, TEST, OOD)) + " (a stage 3 of other code or settings).")]
    totals = [r["timings"]["total"] / 60 for r in results.values()]
    lines += ["", f"A triphone GMM stands in for the networks here ({min(totals):.1f} to {max(totals):.1f} minutes per variant "
              "above, against stages 4-7's teachers and students for a DNN): a variant that helps the GMM on unseen talkers is a "
              "candidate, not a proven default, for the DNNs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="a finished synthetic corpus (the recipe's data/corpus)")
    p.add_argument("--work", type=Path, required=True, help="where each variant's corpus, data and exp go")
    p.add_argument("--variant", action="append", required=True,
                   help="NAME:field=value;... of SynthConfig (lists comma-separated); the first is the baseline of the differences")
    p.add_argument("--null", action="append", default=[], metavar="NAME",
                   help="a variant that only draws the training audio again from the same distribution (e.g. speed_factors in "
                        "another order): its differences measure chance, reported as such (repeatable)")
    p.add_argument("--recipe-exp", type=Path, default=None, help="the recipe's exp folder of the same corpus: check the reference variant against its stage 3")
    p.add_argument("--gmm-config", type=Path, default=None, help="GmmConfig YAML (default: the reference preset's, conf/presets/<preset>.yaml)")
    p.add_argument("--decode-config", type=Path, default=None, help="DecodeConfig YAML (default: the reference preset's)")
    p.add_argument("--nj", type=int, default=2, help="parallel jobs (synthesis, features, GMM; with --dnn, DNNs trained at once)")
    p.add_argument("--dnn", action="store_true", help="also train and decode the demo's DNN on each variant's GMM alignments")
    p.add_argument("--dnn-train-config", type=Path, default=RECIPE / "conf" / "train_mini.yaml",
                   help="with --dnn: the DNN's TrainConfig YAML (default conf/train_mini.yaml: 10 epochs)")
    p.add_argument("--json", type=Path, default=None, help="all numbers (default: <work>/synth_ablation.json)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = p.parse_args(argv)

    import yaml

    from asr_kd.config import SynthConfig, config_from_dict
    from bench._results import write_section

    marker = args.reference / "SYNTHETIC.json"
    if not marker.is_file():
        print(f"{args.reference} holds no finished synthetic corpus ({marker.name} missing): run make demo (stage 0) first")
        return 0
    meta = json.loads(marker.read_text())
    if "only_parts" in meta:
        raise SystemExit(f"{args.reference} holds only {meta['only_parts']}: give a whole corpus")
    reference_config = config_from_dict(SynthConfig, meta["config"], str(marker))
    variants = [parse_variant(v) for v in args.variant]
    if len({n for n, _ in variants}) != len(variants):
        raise SystemExit("--variant names must differ")
    if variants[0][1]:
        raise SystemExit(f"the first --variant is the baseline of the differences: make it the reference (NAME:), got {args.variant[0]!r}")
    unknown = sorted(set(args.null) - {n for n, _ in variants[1:]})
    if unknown:
        raise SystemExit(f"--null {unknown}: not among the variants after the first")
    configs = {name: variant_config(reference_config, name, overrides, args.nj) for name, overrides in variants}
    preset = yaml.safe_load((RECIPE / "conf" / "presets" / f"{reference_config.preset}.yaml").read_text())
    args.gmm_config = args.gmm_config or RECIPE / preset["gmm_config"]
    args.decode_config = args.decode_config or RECIPE / preset["decode_config"]
    args.work = args.work.resolve()
    args.json = args.json or args.work / "synth_ablation.json"
    results = {}
    for name, overrides in variants:
        print(f"[synth_ablation] {name}: {overrides or 'the reference'}", flush=True)
        results[name] = build_variant(args, name, overrides, configs[name])
        print(f"[synth_ablation] {name}: tri WER test-clean {100 * results[name]['wer'][TEST]['wer']:.2f}%, "
              f"test-ood {100 * results[name]['wer'][OOD]['wer']:.2f}% ({results[name]['timings']['total']:.0f} s)", flush=True)
    if args.dnn:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(args.nj) as pool:  # each DNN is a process of its own
            list(pool.map(lambda name: run_dnn(args, name), list(results)))
        for name in results:
            results[name]["dnn"] = read_dnn_scores(args.work / name)
            print(f"[synth_ablation] {name}: DNN WER test-clean {100 * results[name]['dnn']['wer'][TEST]['wer']:.2f}%, "
                  f"test-ood {100 * results[name]['dnn']['wer'][OOD]['wer']:.2f}%", flush=True)
    command = "python bench/synth_ablation.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = report(args, results, command)
    sections = [(HEADING, text)]
    if args.dnn:
        view = dnn_view(results)
        sections.append((DNN_HEADING, report(args, view, command, dnn=True)))
        for name, r in view.items():
            results[name]["dnn"].update({k: r[k] for k in REPORT_KEYS if k in r})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": command, "variants": results}, indent=1))
    for heading, section in sections:
        print(section)
        write_section(args.results, heading, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
