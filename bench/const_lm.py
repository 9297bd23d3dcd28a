"""A large rescoring LM read two ways: kaldingram's in-memory ARPA model against the memory-mapped
const LM (asr_kd.lang.const_lm, Kaldi's const-ARPA idea), side by side in one run.

Each size trains a Kneser-Ney LM (kaldingram) on synthetic text over a seeded subset of CMUdict's
words (asr_kd.lang.synthetic_text: the size of a real LM of those n-gram counts, not its
statistics), then, each step in a forked child process of its own (peak memory = the child's
``ru_maxrss``): loads the ARPA with kaldingram and scores ``--sentences`` held-out sentences;
builds the const LM; loads it and scores the same sentences. Checks that both give the same costs
and writes its section of bench/RESULTS.md: time, peak memory, bytes on disk and per n-gram.

    python bench/const_lm.py [--sizes 20000:100000 60000:400000] [--order 3] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from asr_kd.decode.graph_build import choose_words
from asr_kd.lang.const_lm import LN10, ConstArpaLm, build_const_lm
from asr_kd.lang.lexicon import cmudict_words
from asr_kd.lang.lm import BOS, EOS, arpa_ngram_counts, load_arpa, sentence_logprob10, train_ngram_lm
from asr_kd.lang.symbols import SymbolTable
from asr_kd.lang.synthetic_text import SyntheticTextConfig, synthetic_sentences
from asr_kd.resource_usage import run_measured
from asr_kd.stages.provenance import code_version, environment, environment_text

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## A large rescoring LM: in-memory ARPA against the const LM (bench/const_lm.py)"


def _score_arpa(arpa: str, sentences: list[list[str]]) -> list[float]:
    lm = load_arpa(arpa)
    return [sentence_logprob10(lm, s)[0] for s in sentences]


def _score_const(folder: str, words_txt: str, sentences: list[list[str]]) -> list[float]:
    words = SymbolTable.from_file(words_txt)
    lm = ConstArpaLm(folder, words)
    return [-lm.cost([words.id(w) for w in s]) / LN10 for s in sentences]


def _build(arpa: str, words_txt: str, folder: str) -> dict:
    return build_const_lm(arpa, words_txt, folder).kept


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


def _make_lm(num_words: int, num_sentences: int, order: int, num_test: int, work: str) -> int:
    """Write ``lm.arpa``, ``words.txt`` and the held-out ``test.txt`` to ``work``; return the words."""
    words = choose_words(cmudict_words(), num_words)
    text = list(synthetic_sentences(words, SyntheticTextConfig(num_sentences + num_test, seed=1)))
    train_ngram_lm(text[:num_sentences], order, Path(work) / "lm.arpa")
    SymbolTable.from_names(["<eps>", *words, BOS, EOS, "#0"]).to_file(Path(work) / "words.txt")
    (Path(work) / "test.txt").write_text("".join(f"{s}\n" for s in text[num_sentences:]))
    return len(words)


def measure(num_words: int, num_sentences: int, order: int, num_test: int, work: Path) -> dict:
    """Train (in a child, so that this process stays small and every step's peak is its own),
    build, load and score one LM size; return the row's numbers."""
    work.mkdir(parents=True, exist_ok=True)
    arpa, words_txt = work / "lm.arpa", work / "words.txt"
    num_words, _ = run_measured(_make_lm, num_words, num_sentences, order, num_test, str(work))
    test = [line.split() for line in (work / "test.txt").read_text().splitlines()]
    floor = run_measured(lambda: None)[1].peak_rss_mb  # what a step that does nothing peaks at, now
    arpa_scores, arpa_use = run_measured(_score_arpa, str(arpa), test)
    kept, build_use = run_measured(_build, str(arpa), str(words_txt), str(work / "const"))
    const_scores, const_use = run_measured(_score_const, str(work / "const"), str(words_txt), test)
    worst = max(abs(a - b) for a, b in zip(arpa_scores, const_scores))
    counts = arpa_ngram_counts(arpa)
    return {"words": num_words, "sentences": num_sentences, "ngrams": counts, "total": sum(counts.values()),
            "arpa_bytes": _du(arpa), "const_bytes": _du(work / "const"), "arpa": arpa_use, "build": build_use, "const": const_use,
            "max_diff_log10": worst, "test": len(test), "kept": kept, "floor": floor}


def format_section(command: str, rows: list[dict]) -> str:
    lines = [HEADING, "", f"Produced by `{command}`. Each step ran in a forked child process (peak = its `ru_maxrss`, which "
             "includes the parent's memory the child shares: the last column is what a step that does nothing peaks at). The LMs "
             "are trained on synthetic text over CMUdict words: real sizes, not real statistics.", "",
             "| LM | n-grams | ARPA on disk | kaldingram: load + score, wall s / peak MiB | const: build, wall s / peak MiB | "
             "const on disk (bytes / n-gram) | const: load + score, wall s / peak MiB | largest score difference, log10 | "
             "do-nothing step, peak MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
        lines.append(f"| {r['words']:,} words, {r['sentences']:,} sentences | {r['total']:,} ({', '.join(f'{n}: {c:,}' for n, c in r['ngrams'].items())}) | "
                     f"{mb(r['arpa_bytes'])} | {r['arpa'].wall_s:.1f} / {r['arpa'].peak_rss_mb:.0f} | {r['build'].wall_s:.1f} / {r['build'].peak_rss_mb:.0f} | "
                     f"{mb(r['const_bytes'])} ({r['const_bytes'] / r['total']:.1f}) | {r['const'].wall_s:.1f} / {r['const'].peak_rss_mb:.0f} | "
                     f"{r['max_diff_log10']:.1e} | {r['floor']:.0f} |")
    lines += ["", f"Scores: the log10 probability of each of {rows[-1]['test'] if rows else 0} held-out sentences of the same synthetic "
              "text, both ways. The const LM stores float32 (Kaldi's const-ARPA does too), hence differences of order 1e-6 per word. "
              "Memory of the const LM is the pages the scoring touches: its arrays are memory-mapped, not read. "
              "`asr-kd arpa-to-const` builds it; `asr-kd decode-part --rescore-method const` rescores with it.",
              "", environment_text(environment(), code_version()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["20000:100000", "60000:400000"], help="WORDS:SENTENCES per LM")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--test-sentences", type=int, default=2000)
    p.add_argument("--work-dir", type=Path, default=None, help="where the LMs go (default: a temporary folder)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = p.parse_args(argv)
    command = "python bench/const_lm.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        rows = []
        for size in args.sizes:
            num_words, num_sentences = (int(x) for x in size.split(":"))
            rows.append(measure(num_words, num_sentences, args.order, args.test_sentences, work / size.replace(":", "_")))
            r = rows[-1]
            print(f"{size}: {r['total']:,} n-grams; kaldingram {r['arpa'].wall_s:.1f} s / {r['arpa'].peak_rss_mb:.0f} MiB; "
                  f"const {r['const'].wall_s:.1f} s / {r['const'].peak_rss_mb:.0f} MiB; max diff {r['max_diff_log10']:.1e}", flush=True)
            write_section(args.results, HEADING, format_section(command, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
