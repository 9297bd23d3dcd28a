"""Decoding graphs at LibriSpeech size: time, CPU time, peak memory and size of every step of
HCLG (hybrid, the recipe's triphone tree) and HLG (phone CTC), at growing vocabulary and LM sizes.

Each size is a seeded random subset of CMUdict (0 = all of it, about 126k words, the size of
LibriSpeech's lexicon without its G2P words) and a trigram Kneser-Ney LM trained with kaldingram on
synthetic text over those words (asr_kd.lang.synthetic_text: the right size of LM, not realistic
statistics). Every step runs in a forked child process of its own, reading its inputs from the
work folder and writing its output there (asr_kd.decode.graph_build); peak memory is the child's
``ru_maxrss``. Writes its section of bench/RESULTS.md after every size.

    python bench/graph_build.py [--data recipes/librispeech/data --exp recipes/librispeech/exp] \
        [--sizes 10000:20000 40000:70000 0:220000] [--work-dir DIR] [--no-hlg]

``--sizes`` takes WORDS:SENTENCES pairs. With the real LM at hand, ``--lm-arpa
3-gram.pruned.1e-7.arpa.gz [--lexicon librispeech-lexicon.txt]`` measures one build with its words
and n-grams instead. Needs the triphone GMM of stage 3 (``make demo``); without
it, says so and exits 0 (so that ``make bench`` on a fresh clone skips it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from asr_kd.config import LangConfig, config_from_dict
from asr_kd.decode.graph_build import GraphBuild, StepRecord, build_graphs, choose_words, random_split_tree, system_with_tree
from asr_kd.errors import DataError
from asr_kd.gmm.system import GmmSystem
from asr_kd.gmm.topology import make_topology
from asr_kd.lang.lexicon import cmudict_words, normalize_word
from asr_kd.lang.lm import arpa_unigrams
from asr_kd.lang.symbols import SymbolTable
from asr_kd.lang.synthetic_text import SyntheticTextConfig
from asr_kd.resource_usage import StepFailed, run_measured
from asr_kd.stages.layout import RecipeLayout
from asr_kd.utils import read_json, write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

HEADING = "## Decoding graphs at LibriSpeech size (bench/graph_build.py)"
DEFAULT_SIZES = ("10000:20000", "40000:70000", "0:220000")
DEFAULT_TREE_SIZE = "5000:10000"
TREE_HEADING = "## HCLG size against the tree (bench/graph_build.py)"
MIB = 2**20


def recipe_inputs(data: Path, exp: Path) -> tuple[Path, LangConfig, SymbolTable]:
    """Return the stage-3 triphone model, the lang config it was trained with and its phone table;
    DataError naming what is missing."""
    layout = RecipeLayout(data, exp)
    model = layout.gmm_model("tri")
    if not model.is_file():
        raise DataError(f"the triphone model {model} does not exist; run `make demo` first (or pass --data/--exp of a recipe run)")
    lang_json = layout.lang / "lang.json"
    if not lang_json.is_file():
        raise DataError(f"{lang_json} does not exist; run `make demo` first (or pass --data of a recipe run)")
    config = dict(read_json(lang_json)["config"])
    known = {f.name for f in dataclasses.fields(LangConfig)}
    lang_config = config_from_dict(LangConfig, {k: v for k, v in config.items() if k in known}, str(lang_json))
    return model, lang_config, SymbolTable.from_file(layout.lang / "phones.txt")


def check_same_phones(reference: SymbolTable, built: SymbolTable, where: Path) -> None:
    """DataError unless every phone of ``reference`` (but ``#k``) has the same id in ``built``."""
    ref = {n: reference.id(n) for n in reference.names() if not n.startswith("#")}
    new = {n: built.id(n) for n in built.names() if not n.startswith("#")}
    if ref != new:
        raise DataError(f"{where}/phones.txt numbers the phones differently from the model's lang; the graphs would not fit the model")


def _mb(n: int) -> str:
    return f"{n / MIB:.1f}"


def format_section(command: str, runs: list[dict], floor_mb: float) -> str:
    """Return the RESULTS.md section for the measured ``runs`` (one dict per size)."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [HEADING, "", f"`{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB; "
             "one step at a time, each in a forked child process that reads its inputs from disk and writes its output "
             "(as Kaldi's tools do). Wall and CPU seconds are the step's own; peak memory is the child's `ru_maxrss` "
             f"(a step that does nothing peaks at {floor_mb:.0f} MiB: the parent's memory the child shares). "
             + ("The LM is trained on **synthetic** "
                "text over the lexicon (asr_kd.lang.synthetic_text): G has the size of a real LM of those n-gram counts, "
                "not realistic statistics, so LG/HCLG sizes are indicative only. "
                if all("sentences" in r["facts"] for r in runs) else
                "The LM is the given ARPA file restricted to the words with a pronunciation (no G2P). ")
             + "For scale: LibriSpeech's tgsmall "
             "(`3-gram.pruned.1e-7.arpa`) has 200k unigrams and about 3.8M n-grams in all (a comment in a public NeMo "
             "diarization script), and icefall's LibriSpeech BPE-500 HLG.fst built with OpenFst from its 3-gram is 334 MB "
             "(k2-fsa/icefall PR #1275). Not done here, as in asr_kd.decode.hclg: Kaldi's `fstrmepslocal` and "
             "`fstpushspecial` (not bound in kaldifst).", ""]
    for run in runs:
        facts = run["facts"]
        f = {k: facts.get(k, "?") for k in ("words", "prons", "disambig", "sentences", "tokens", "ngrams", "pdfs", "context_width")}
        lines += [f"**{f['words']} words** ({f['prons']} pronunciations, {f['disambig']} disambiguation symbols); LM: "
                  + (f"{f['sentences']} sentences, {f['tokens']} words of text, " if "sentences" in facts else "")
                  + f"n-grams per order {f['ngrams']}; "
                  f"tree: {f['pdfs']} senones, context width {f['context_width']}.", "",
                  "| step | wall s | CPU s | peak MiB | states | arcs | MiB on disk |", "|---|---|---|---|---|---|---|"]
        for step in run["steps"]:
            out = step["output"]
            sizes = [str(out.get("states", "")), str(out.get("arcs", "")), _mb(out["bytes"]) if "bytes" in out else ""]
            lines.append(f"| {step['name']} | {step['wall_s']:.1f} | {step['cpu_s']:.1f} | {step['peak_rss_mb']:.0f} | " + " | ".join(sizes) + " |")
        total_wall = sum(s["wall_s"] for s in run["steps"])
        total_cpu = sum(s["cpu_s"] for s in run["steps"])
        peak = max(s["peak_rss_mb"] for s in run["steps"])
        lines += ["", f"All steps: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU, peak {peak:.0f} MiB."
                  + (f" **Stopped:** {run['failure']} (cap {run['max_memory_gb']:g} GB per step)." if run.get("failure") else ""), ""]
    lines += growth_lines(runs)
    return "\n".join(lines)


def _total_ngrams(run: dict) -> int:
    return sum(run["facts"].get("ngrams", {}).values())


def growth_lines(runs: list[dict]) -> list[str]:
    """Return lines saying how each size's HCLG, HLG and their largest step grew over the
    previous size's, against the growth of the LM's n-grams (for sizes whose steps all ran)."""
    done = [r for r in runs if not r.get("failure")]
    out = []
    for prev, cur in zip(done, done[1:]):
        a = {s["name"]: s for s in prev["steps"]}
        b = {s["name"]: s for s in cur["steps"]}
        parts = [f"n-grams x{_total_ngrams(cur) / max(_total_ngrams(prev), 1):.1f}"]
        for name in ("HLG", "HCLG (self-loops)"):
            if name in a and name in b:
                parts.append(f"{name.split()[0]} arcs x{b[name]['output']['arcs'] / a[name]['output']['arcs']:.1f}")
        for name in ("HLG", "HCLGa"):
            if name in a and name in b:
                parts.append(f"{name} CPU x{b[name]['cpu_s'] / max(a[name]['cpu_s'], 1e-9):.1f}, peak x{b[name]['peak_rss_mb'] / a[name]['peak_rss_mb']:.1f}")
        out.append(f"From {prev['facts'].get('words', '?')} to {cur['facts'].get('words', '?')} words: " + "; ".join(parts) + ".")
    return (["Growth between sizes (ratios of the measurements above):", ""] + [f"- {line}" for line in out] + [""]) if out else []


def _run_record(records: list[StepRecord]) -> dict:
    """Return one size's JSON record: the steps and the facts their outputs reported."""
    facts: dict = {}
    for r in records:
        for key in ("words", "prons", "disambig", "sentences", "tokens", "ngrams", "pdfs", "context_width"):
            if key in r.output:
                facts[key] = r.output[key]
    steps = [{"name": r.name, **dataclasses.asdict(r.usage), "output": r.output} for r in records]
    return {"facts": facts, "steps": steps}


HCLG_ONLY = ("CLG", "Ha", "HCLGa", "HCLG (self-loops)")


def compare_trees(build: GraphBuild, exp: Path, depth: int, max_data_mb: float) -> list[tuple[str, dict, list[StepRecord]]]:
    """Build HCLG for one lexicon and G with the recipe's monophone and triphone models and a
    random triphone tree of ``depth`` splits per root; return ``(tree, facts, records)`` per tree."""
    layout = RecipeLayout(Path("."), exp)
    tri = GmmSystem.load(build.model)
    topo = make_topology(tri.topology_text)
    num_classes = {p: topo.num_pdf_classes(p) for p in topo.phones}
    big = build.work_dir / f"random-depth{depth}.npz"
    build.work_dir.mkdir(parents=True, exist_ok=True)
    system_with_tree(tri.topology_text, random_split_tree(num_classes, topo.phones, depth)).save(big)
    models = [("monophone (recipe)", layout.gmm_model("mono")), ("triphone (recipe)", build.model), (f"triphone, random splits (depth {depth})", big)]
    print(f"== trees: {len(build.words)} words, {build.text.num_sentences} sentences in {build.work_dir}", flush=True)
    build_graphs(build, hlg=False, max_data_mb=max_data_mb, only=("lexicon + L_disambig", "LM (synthetic text + KN)", "G", "LG"))
    rows = []
    for name, model in models:
        if not model.is_file():
            print(f"  {name}: {model} missing, skipped", flush=True)
            continue
        system = GmmSystem.load(model)
        records = build_graphs(dataclasses.replace(build, model=model), hlg=False, max_data_mb=max_data_mb, only=HCLG_ONLY)
        facts = {"pdfs": system.tm.num_pdfs, "tids": system.tm.num_transition_ids, "context_width": system.ctx_dep.context_width}
        print(f"  {name}: {facts}; HCLG {records[-1].output}", flush=True)
        rows.append((name, facts, records))
    return rows


def format_tree_section(command: str, build: GraphBuild, rows: list[tuple[str, dict, list[StepRecord]]]) -> str:
    """Return the RESULTS.md section comparing HCLG across trees (same lexicon and G)."""
    lines = [TREE_HEADING, "", f"`{command}`: one lexicon ({len(build.words)} CMUdict words) and one synthetic-text trigram G, "
             "HCLG built with each tree (steps as in the section above; CPU s and peak of the HCLGa step, the largest).", "",
             "| tree | context width | senones | transition-ids | CLG arcs | HCLGa arcs | HCLG states | HCLG arcs | HCLG MiB | HCLGa CPU s | HCLGa peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, facts, records in rows:
        by = {r.name: r for r in records}
        clg, hclga, hclg = by["CLG"].output, by["HCLGa"], by["HCLG (self-loops)"].output
        lines.append(f"| {name} | {facts['context_width']} | {facts['pdfs']} | {facts['tids']} | {clg['arcs']} | {hclga.output['arcs']} | "
                     f"{hclg['states']} | {hclg['arcs']} | {_mb(hclg['bytes'])} | {hclga.usage.cpu_s:.1f} | {hclga.usage.peak_rss_mb:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder (for data/lang's phones)")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stage 3's tri model)")
    p.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES), help="WORDS:SENTENCES pairs; WORDS 0 = all of CMUdict (none: skip)")
    p.add_argument("--tree-size", default=DEFAULT_TREE_SIZE, help="WORDS:SENTENCES of the HCLG-against-tree comparison ('none': skip)")
    p.add_argument("--tree-depth", type=int, default=5, help="splits per root of the random tree (5: about 4,000 senones, like tri4b)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the graphs are written and kept (default: a temporary folder, removed)")
    p.add_argument("--no-hlg", action="store_true", help="build HCLG only")
    p.add_argument("--lm-arpa", type=Path, default=None,
                   help="an existing ARPA LM (e.g. LibriSpeech's 3-gram.pruned.1e-7.arpa.gz): one build with its words and n-grams instead of --sizes")
    p.add_argument("--lexicon", type=Path, default=None, help="a LibriSpeech-format lexicon extending CMUdict (with --lm-arpa)")
    p.add_argument("--max-memory-gb", type=float, default=16.0, help="data memory cap of each step (RLIMIT_DATA); a step beyond it fails and is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--from-json", type=Path, default=None,
                   help="write the section again from the graph_build.json of an earlier run (its measurements and command), measuring nothing")
    args = p.parse_args(argv)
    if args.from_json is not None:
        saved = read_json(args.from_json)
        write_section(args.results, HEADING, format_section(saved["command"], saved["runs"], saved["floor_mb"]) + "\n")
        return 0
    try:
        model, lang_config, phones = recipe_inputs(args.data, args.exp)
    except DataError as err:
        print(f"graph_build: {err}. Skipped.")
        return 0
    sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes] if args.lm_arpa is None else [(0, 0)]
    command = "python bench/graph_build.py " + " ".join(
        [f"--data {args.data}", f"--exp {args.exp}"]
        + ([f"--lm-arpa {args.lm_arpa}"] + ([f"--lexicon {args.lexicon}"] if args.lexicon else []) if args.lm_arpa else ["--sizes " + " ".join(args.sizes)])
        + ["--tree-size none"] + (["--no-hlg"] if args.no_hlg else []))
    vocabulary = cmudict_words()
    work_root = args.work_dir or Path(tempfile.mkdtemp(prefix="graph_build-"))
    runs = []
    floor_mb = run_measured(lambda: None)[1].peak_rss_mb
    try:
        if args.tree_size != "none" and args.lm_arpa is None:
            num_words, num_sentences = (int(x) for x in args.tree_size.split(":"))
            words = choose_words(vocabulary, num_words, seed=args.seed)
            build = GraphBuild(work_root / "trees", words, SyntheticTextConfig(num_sentences=num_sentences, seed=args.seed), model, lang_config)
            rows = compare_trees(build, args.exp, args.tree_depth, args.max_memory_gb * 1024)
            tree_command = f"python bench/graph_build.py --data {args.data} --exp {args.exp} --sizes --tree-size {args.tree_size} --tree-depth {args.tree_depth}"
            write_section(args.results, TREE_HEADING, format_tree_section(tree_command, build, rows) + "\n")
        for num_words, num_sentences in sizes:
            if args.lm_arpa is not None:
                words = tuple(w for w in arpa_unigrams(args.lm_arpa, normalize_word) if w != lang_config.oov_word)
                work = work_root / "arpa"
                build = GraphBuild(work, words, None, model, lang_config, arpa=args.lm_arpa, lexicon_file=args.lexicon)
            else:
                words = choose_words(vocabulary, num_words, seed=args.seed)
                work = work_root / f"{len(words)}w-{num_sentences}s"
                build = GraphBuild(work, words, SyntheticTextConfig(num_sentences=num_sentences, seed=args.seed), model, lang_config)
            print(f"== {len(words)} words, {num_sentences or args.lm_arpa} sentences in {work}", flush=True)

            def show(record: StepRecord, work: Path = work) -> None:
                u = record.usage
                print(f"  {record.name}: {u.wall_s:.1f} s wall, {u.cpu_s:.1f} s CPU, peak {u.peak_rss_mb:.0f} MiB; {record.output}", flush=True)
                if record.name.startswith("lexicon"):
                    check_same_phones(phones, SymbolTable.from_file(work / "lang" / "phones.txt"), work / "lang")

            done: list[StepRecord] = []
            failure = None
            try:
                build_graphs(build, hlg=not args.no_hlg, max_data_mb=args.max_memory_gb * 1024, on_step=lambda r: (show(r), done.append(r)))
            except StepFailed as err:
                failure = str(err)
                print(f"  FAILED: {failure}", flush=True)
            runs.append({**_run_record(done), "failure": failure, "max_memory_gb": args.max_memory_gb})
            write_json_atomic(work_root / "graph_build.json", {"command": command, "floor_mb": floor_mb, "runs": runs})
            write_section(args.results, HEADING, format_section(command, runs, floor_mb) + "\n")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
