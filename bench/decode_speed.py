"""HCLG decoding speed: real-time factor per core at two beams, on synthetic posteriors.

A lang directory is prepared from the synthetic corpus's text generator (CMUdict lexicon,
trigram LM on the training sentences), HCLG is built for a small triphone tree (each phone's
first and last states split on whether the neighbouring phone is silence), and held-out test
sentences are turned into noisy senone posteriors along an alignment of their transcript:
log-softmax of N(0, 1) logits with ``--margin`` added at the aligned senone. Each beam decodes
the same matrices on one core, with the best-path decoder and with the lattice decoder; RTF = decoding seconds / audio seconds (10 ms frames), lower is
faster (CPU time of the process, so other load on the machine does not count). Writes its section of bench/RESULTS.md.

    python bench/decode_speed.py [--beams 8 13] [--vocab 2000] [--num-test 20]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig, LangConfig
from asr_kd.data.synth_text import split_sentences
from asr_kd.decode.hclg import compile_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch, tid_to_pdf
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.tree import Leaf, Split, Tree
from asr_kd.kaldi import kaldifst, khg
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.prepare import prepare_lang
from asr_kd.metrics.wer import compute_wer

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

FRAME_SHIFT = 0.01
FRAMES_PER_PHONE = 8
DECODERS = ("faster", "lattice")  # DecodeConfig.decoder: best path only, or with lattices


def silence_context_tree(lang: Lang, topo: khg.HmmTopology) -> Tree:
    """Return a triphone tree: non-silence states 0 and 2 split on a silence neighbour."""
    num_classes = dict(zip(topo.phones, (topo.num_pdf_classes(p) for p in topo.phones)))
    silence = frozenset(lang.silence_phone_ids)
    roots, pdf = {}, 0
    for phone in sorted(num_classes):
        for c in range(num_classes[phone]):
            key = {0: 0, 2: 2}.get(c) if phone not in silence else None
            if key is None:
                roots[(phone, c)] = Leaf(pdf)
                pdf += 1
            else:
                roots[(phone, c)] = Split(key=key, yes_phones=silence, yes=Leaf(pdf), no=Leaf(pdf + 1))
                pdf += 2
    return Tree(context_width=3, central_position=1, num_pdf_classes=num_classes, roots=roots)


def noisy_posteriors(lang: Lang, ctx_dep, tm, sentences: list[str], margin: float, seed: int) -> dict[str, np.ndarray]:
    """Return {utt_id: T x num_pdfs log-posteriors} favouring an alignment of each sentence."""
    L = lang.load_fst("L")
    kaldifst.arcsort(L, sort_type="olabel")
    opts = khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0)
    compiler = khg.TrainingGraphCompiler(trans_model=tm, ctx_dep=ctx_dep, lex_fst=L, disambig_syms=lang.disambig_phone_ids, opts=opts)
    table = tid_to_pdf(tm)
    rng = np.random.default_rng(seed)
    out = {}
    for i, sentence in enumerate(sentences):
        words = sentence.split()
        num_phones = sum(len(lang.lexicon[w][0]) for w in words)
        graph = compiler.compile_graph_from_text(lang.word_ids(words))
        ok, path = kaldifst.equal_align(ifst=graph, length=FRAMES_PER_PHONE * num_phones + 30, rand_seed=seed + i, num_retries=10)
        ok, tids, _, _ = kaldifst.get_linear_symbol_sequence(path)
        pdfs = table[np.asarray(tids) - 1]
        logits = rng.normal(0.0, 1.0, size=(len(pdfs), tm.num_pdfs))
        logits[np.arange(len(pdfs)), pdfs] += margin
        out[f"test{i:03d}"] = (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32)
    return out


def main(argv: list[str] | None = None) -> dict[tuple[float, str], dict[str, float]]:
    """Run the benchmark; return ``{(beam, decoder): {"rtf": ..., "wer": ..., "failed": ...}}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beams", type=float, nargs=2, default=[8.0, 13.0])
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-test", type=int, default=20)
    parser.add_argument("--margin", type=float, default=6.0, help="logit bonus of the aligned senone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)

    split = split_sentences(args.num_train, 0, args.num_test, seed=args.seed, vocab_size=args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_lang({"train": list(split.train), "test": list(split.test)}, Path(tmp) / "lang", LangConfig(), train_split="train", dev_split=None)
        lang = Lang.load(Path(tmp) / "lang")
        test = [s for s in split.test if all(w in lang.lexicon for w in s.split())]
        topo = make_topology(topology_text(lang.nonsilence_phone_ids, lang.silence_phone_ids))
        ctx_dep = silence_context_tree(lang, topo).to_context_dependency()
        tm = khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)
        hclg, info = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
        posts = noisy_posteriors(lang, ctx_dep, tm, test, args.margin, args.seed)
    priors = np.full(tm.num_pdfs, -np.log(tm.num_pdfs), dtype=np.float32)
    audio_seconds = sum(x.shape[0] for x in posts.values()) * FRAME_SHIFT
    refs = {f"test{i:03d}": s for i, s in enumerate(test)}
    results = {}
    for beam in args.beams:
        for decoder in DECODERS:
            config = DecodeConfig(beam=beam, decoder=decoder, num_jobs=1)
            # CPU time of this process: the decoder is single-threaded, and wall time would also
            # count waiting for other processes on a shared machine.
            start = time.process_time()
            batch = decode_posteriors_batch(hclg, tm, posts, priors, config)
            elapsed = time.process_time() - start
            wer = compute_wer(refs, batch.texts(lang.words)).wer
            results[(beam, decoder)] = {"rtf": elapsed / audio_seconds, "wer": wer, "failed": len(batch.failed)}

    lines = [
        "## HCLG decoding speed (bench/decode_speed.py)",
        "",
        f"`{' '.join(['python', 'bench/decode_speed.py', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{platform.processor() or platform.machine()}, one core. Vocabulary {len(lang.words) - 4} words (CMUdict), "
        f"trigram LM on {len(split.train)} sentences; triphone tree with {tm.num_pdfs} senones; "
        f"HCLG {info.num_states} states / {info.num_arcs} arcs, built in {info.seconds:.1f} s. "
        f"{len(posts)} test utterances ({audio_seconds:.0f} s at 10 ms frames), noisy posteriors "
        f"(aligned senone +{args.margin} logits over N(0, 1)), acoustic scale {DecodeConfig().acoustic_scale}, "
        f"max_active {DecodeConfig().max_active}, lattice beam {DecodeConfig().lattice_beam}. RTF = decoding CPU time / audio time.",
        "",
        "| beam | decoder | RTF (per core) | x real time | WER % | failed |",
        "|---|---|---|---|---|---|",
    ]
    for (beam, decoder), r in results.items():
        lines.append(f"| {beam:g} | {decoder} | {r['rtf']:.4f} | {1 / r['rtf']:.1f} | {100 * r['wer']:.2f} | {r['failed']} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    write_section(args.results, "## HCLG decoding speed", text)
    return results


if __name__ == "__main__":
    main()
