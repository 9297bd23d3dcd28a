"""Weight pushing of the decoding graph: what pushing HCLG's weights toward its start does to a
beam search, on a recipe run's triphone GMM (stage 3) and dev part, in one process.

Kaldi's mkgraph.sh pushes LG's weights (``fstpushspecial``, log semiring); kaldifst binds no push,
so asr-kd's graphs are not pushed (asr_kd/decode/hclg.py). Here HCLG is pushed in the tropical
semiring: with ``V(s)`` the cheapest cost from state ``s`` to the end, each arc's weight becomes
``w + V(next) - V(s)`` and each final weight ``f - V(s)``. Every complete path then costs
``V(start)`` less, so the best path is the same, but a beam search sees the cheapest graph
continuation of each partial path at once (a look-ahead on the grammar and HMM costs).

Both graphs decode the dev part at each beam, and a *search error* is an utterance whose best path
costs more than a wide reference search over the unpushed graph found (costs compared after adding
``V(start)`` back; more by over 0.001 + 1e-6 a frame: float32 sums of the pushed weights round
differently, 5e-4 at 700 frames on mini). An utterance whose search reaches no final state is
compared by its best partial path, as the recipe decodes it. CPU time is this process's, the
graphs alternating, the least of ``--repeats`` runs. The section ends with what the table says:
whether, for each pushed row, an unpushed one at a narrower beam is as fast with fewer search errors.

    python bench/graph_push.py --data recipes/librispeech/data --exp recipes/librispeech/exp \
        [--beams 9 10 11 12] [--max-active 2000] [--reference 14:10000] [--max-utts N]

Needs stage 3 of a recipe run; without one it says so and exits 0 (``make bench`` on a fresh clone
skips it).
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig, GmmConfig, config_from_dict
from asr_kd.decode.decoder import decode_one, ids_to_text, make_decoder
from asr_kd.decode.gmm_decode import GmmScorer
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import tid_to_pdf
from asr_kd.gmm.train import GmmSystem
from asr_kd.kaldi import kaldifst, khg
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.wer import compute_wer
from asr_kd.stages.decode_part import tuned_scale
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import read_record
from asr_kd.stages.s3_gmm import load_part

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

HEADING = "## Pushing the decoding graph's weights"


def costs_to_end(fst: kaldifst.StdVectorFst) -> np.ndarray:
    """Return ``V`` (float64, one per state): the cheapest cost from each state to a final state
    (inf where none is reachable). Label-correcting search from the final states over the reversed
    arcs: a state is expanded again whenever its cost drops, so the few negative weights that
    determinization leaves are handled; a negative cycle (which no decodable graph has) raises."""
    n = fst.num_states
    incoming: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for s in range(n):
        for arc in kaldifst.ArcIterator(fst, s):
            incoming[arc.nextstate].append((s, arc.weight.value))
    cost = [float("inf")] * n
    heap = []
    for s in range(n):
        final = fst.final(s).value
        if final != float("inf"):
            cost[s] = final
            heap.append((final, s))
    heapq.heapify(heap)
    budget = 50 * (n + sum(len(a) for a in incoming))
    while heap:
        c, s = heapq.heappop(heap)
        if c > cost[s]:
            continue
        budget -= 1 + len(incoming[s])
        if budget < 0:
            raise RuntimeError("costs_to_end: no convergence; the graph has a negative-cost cycle")
        for prev, w in incoming[s]:
            if c + w < cost[prev]:
                cost[prev] = c + w
                heapq.heappush(heap, (c + w, prev))
    return np.array(cost)


def push_to_start(fst: kaldifst.StdVectorFst) -> float:
    """Push ``fst``'s weights toward its start state in the tropical semiring, in place; return
    ``V(start)``, the cost every complete path lost. Arcs from or into states that reach no final
    state keep their weights (a trimmed HCLG has none). ValueError when the start state reaches no
    final state."""
    cost = costs_to_end(fst).tolist()
    if cost[fst.start] == float("inf"):
        raise ValueError("push_to_start: the start state reaches no final state; the graph accepts nothing")
    for s in range(fst.num_states):
        if cost[s] == float("inf"):
            continue
        for arc in kaldifst.ArcIterator(fst, s):
            if cost[arc.nextstate] != float("inf"):
                arc.weight = kaldifst.TropicalWeight(arc.weight.value + cost[arc.nextstate] - cost[s])
        final = fst.final(s).value
        if final != float("inf"):
            fst.set_final(s, kaldifst.TropicalWeight(final - cost[s]))
    return float(cost[fst.start])


def search_errors(costs: dict[str, float], best: dict[str, float], frames: dict[str, int], shift: float = 0.0) -> tuple[int, int]:
    """The utterances whose ``costs`` (plus ``shift``) exceed the reference ``best`` by more than
    float32 rounding (0.001 + 1e-6 a frame), and those below it by as much (a check: a narrower
    search rarely beats a wider one, and a wrong ``shift`` would make every one of them cheaper)."""
    tolerance = {u: 1e-3 + 1e-6 * frames[u] for u in best}
    return (sum(costs[u] + shift > best[u] + tolerance[u] for u in best), sum(costs[u] + shift < best[u] - tolerance[u] for u in best))


def verdict(rows: list[tuple[float, dict[str, tuple[float, int, int]]]]) -> str:
    """One sentence per pushed row: the fastest unpushed row with fewer search errors at no more
    than 5% more CPU time (timing noise), if any (``rows``: beam, {"plain"|"pushed": (CPU s,
    search errors, word errors)})."""
    out = []
    for beam, cells in rows:
        cpu, errors, _ = cells["pushed"]
        better = [(b, c["plain"]) for b, c in rows if c["plain"][0] <= 1.05 * cpu and c["plain"][1] < errors]
        if better:
            b, (pc, pe, _) = min(better, key=lambda r: r[1][0])
            out.append(f"pushed at beam {beam:g} ({errors} search errors) loses to unpushed at beam {b:g} ({pe} errors, {pc / cpu:.2f} of its CPU time)")
        else:
            out.append(f"pushed at beam {beam:g} ({errors} search errors): no unpushed row here is as fast with fewer errors")
    return "At equal CPU time (within 5%): " + "; ".join(out) + "."


def decode_all(hclg, tm, matrices: dict[str, np.ndarray], config: DecodeConfig) -> tuple[dict[str, list[int]], dict[str, float], float]:
    """Decode every utterance; return word ids, best-path costs (minus log-likelihoods) and CPU seconds."""
    decoder = make_decoder(hclg, config)
    words, costs = {}, {}
    start = time.process_time()
    for utt, m in matrices.items():
        d = decode_one(decoder, khg.DecodableCtc(m), tm, utt)
        words[utt], costs[utt] = d.word_ids, -d.score
    return words, costs, time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stage 3 done)")
    p.add_argument("--system", default="tri", choices=["tri", "mono"], help="the GMM whose graph and scores are used (default tri)")
    p.add_argument("--beams", nargs="+", type=float, default=[9.0, 10.0, 11.0, 12.0], help="beams to compare (default 9 10 11 12)")
    p.add_argument("--max-active", type=int, default=2000, help="max-active of those searches (default 2000, the recipe's)")
    p.add_argument("--reference", default="14:10000", help="beam:max_active of the reference search (default 14:10000)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the least CPU time is kept (default 2)")
    p.add_argument("--max-utts", type=int, default=None, help="the first N dev utterances only")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = p.parse_args(argv)
    layout = RecipeLayout(args.data, args.exp)
    if read_record(layout.gmm) is None:
        print(f"graph_push: no finished stage 3 under {args.exp}; run `make demo` first. Skipped.")
        return 0
    lang = Lang.load(layout.lang)
    system = GmmSystem.load(layout.gmm_model(args.system))
    data = load_part(layout.data_dir, layout.dev_part, lang, config_from_dict(GmmConfig, read_record(layout.gmm).config["gmm"]))
    utts = data.utterances[: args.max_utts]
    scale = tuned_scale(layout, args.system) or 0.1
    scorer, tid2pdf = GmmScorer(system.am), tid_to_pdf(system.tm)
    matrices = {u.id: np.ascontiguousarray(scale * scorer.loglikes(u.feats, u.id)[:, tid2pdf]) for u in utts}
    frames = {u: m.shape[0] for u, m in matrices.items()}
    seconds = sum(frames.values()) / 100.0
    refs = {u.id: data.refs[u.id] for u in utts}

    plain = load_hclg(layout.gmm_graph(args.system))
    pushed = load_hclg(layout.gmm_graph(args.system))
    start = time.process_time()
    offset = push_to_start(pushed)
    push_seconds = time.process_time() - start
    print(f"pushed {plain.num_states} states in {push_seconds:.1f} s CPU; every path {offset:.3f} cheaper", flush=True)

    ref_beam, ref_active = args.reference.split(":")
    _, best, ref_cpu = decode_all(plain, system.tm, matrices, DecodeConfig(beam=float(ref_beam), max_active=int(ref_active), acoustic_scale=scale))
    print(f"reference beam {ref_beam} / {ref_active}: {ref_cpu:.1f} s CPU", flush=True)
    rows, below = [], {"plain": 0, "pushed": 0}
    for beam in args.beams:
        config = DecodeConfig(beam=beam, max_active=args.max_active, acoustic_scale=scale)
        cells = {}
        for _ in range(args.repeats):
            for name, graph, shift in (("plain", plain, 0.0), ("pushed", pushed, offset)):
                words, costs, cpu = decode_all(graph, system.tm, matrices, config)
                errors, cheaper = search_errors(costs, best, frames, shift)
                below[name] = max(below[name], cheaper)
                wer = compute_wer(refs, {u: ids_to_text(w, lang.words) for u, w in words.items()})
                previous = cells.get(name)
                cells[name] = (min(cpu, previous[0]) if previous else cpu, errors, wer.errors)
        for name in ("plain", "pushed"):
            cpu, errors, word_errors = cells[name]
            print(f"beam {beam:g} {name}: RTF {cpu / seconds:.4f}, {errors} search errors, {word_errors} word errors", flush=True)
        rows.append((beam, cells))

    lines = [f"{HEADING} (bench/graph_push.py)", "",
             f"`python bench/graph_push.py --data {args.data} --exp {args.exp} --system {args.system} --beams {' '.join(f'{b:g}' for b in args.beams)} "
             f"--max-active {args.max_active} --reference {args.reference} --repeats {args.repeats}" + (f" --max-utts {args.max_utts}" if args.max_utts else "")
             + f"`: {len(matrices)} dev utterances ({seconds:.0f} s of audio, {sum(len(r.split()) for r in refs.values())} words), "
             f"the {args.system} GMM at its tuned acoustic scale {scale:g}; HCLG of {plain.num_states:,} states pushed in {push_seconds:.1f} s "
             f"(every path {offset:.3f} cheaper). Search errors: utterances whose best path costs more than the reference search "
             f"(beam {ref_beam}, max-active {ref_active}, unpushed; {ref_cpu / seconds:.4f} RTF) found. RTF: CPU seconds of one thread per second of audio.", "",
             "| beam | RTF, plain | RTF, pushed | pushed / plain | search errors, plain | search errors, pushed | word errors, plain | word errors, pushed |",
             "|---|---|---|---|---|---|---|---|"]
    for beam, cells in rows:
        (pc, pe, pw), (qc, qe, qw) = cells["plain"], cells["pushed"]
        lines.append(f"| {beam:g} | {pc / seconds:.4f} | {qc / seconds:.4f} | {qc / pc:.2f} | {pe} | {qe} | {pw} | {qw} |")
    lines += ["", f"Utterances cheaper than the reference found (at most, over the beams; expected 0 or nearly): unpushed {below['plain']}, "
              f"pushed {below['pushed']}.", "", verdict(rows)]
    print(lines[-1])
    write_section(args.results, HEADING, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
