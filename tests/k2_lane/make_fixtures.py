"""Fixtures for the k2 lane (``make test-k2``): our HLG, log-prob matrices and OUR decodings of them.

Runs in the main environment (Python 3.11, kaldifst, kaldi-decoder); the k2 test runs it as a
subprocess, then decodes the same matrices with k2 and compares. It writes under ``OUT_DIR``:

* ``HLG.txt``: the phone-CTC HLG of the toy lang of ``tests/unit/decode_toy.py`` (optional silence
  between words, so the graph has weighted optional paths and many epsilon arcs), in OpenFst text
  form (:func:`asr_kd.decode.fst_utils.fst_to_text`, lossless float32 costs);
* ``<name>.npy``: (T x V) float32 log-softmax matrices, blank at column 0;
* ``ours.json``: for each matrix its file, frames, the transcript it was made from (oracle ones
  only), and our exact decoding (kaldi-decoder's FasterDecoder with a beam too wide to prune):
  word ids, words and the total score (graph plus acoustic log-probs).

Usage: ``.venv/bin/python tests/k2_lane/make_fixtures.py OUT_DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

UNIT_TESTS = Path(__file__).resolve().parents[1] / "unit"
if str(UNIT_TESTS) not in sys.path:  # decode_toy lives beside the unit tests
    sys.path.insert(0, str(UNIT_TESTS))

from decode_toy import DEV, UNSEEN, make_lang  # noqa: E402

from asr_kd.config import DecodeConfig  # noqa: E402
from asr_kd.decode.ctc import decode_ctc  # noqa: E402
from asr_kd.decode.fst_utils import fst_to_text  # noqa: E402
from asr_kd.decode.hlg import load_hlg, make_phone_hlg, phone_tokens  # noqa: E402
from asr_kd.lang.lang_dir import Lang  # noqa: E402
from asr_kd.lang.symbols import SymbolTable  # noqa: E402
from asr_kd.utils import write_text_atomic  # noqa: E402

logger = logging.getLogger(__name__)

HLG_TEXT = "HLG.txt"
RESULTS = "ours.json"
# Wide enough that FasterDecoder prunes nothing on these short matrices: its result is the exact
# Viterbi best path, the same thing k2's intersect_dense + shortest_path compute.
EXACT = DecodeConfig(beam=1e4, max_active=1_000_000, min_active=1)
SILENCE_PROB = 0.5
# (name, sentence, margin of the path's tokens over the noise, silence frames between words)
ORACLES = [
    ("oracle_the_cat_sat", "the cat sat", 8.0, False),
    ("oracle_dev", DEV[0], 8.0, False),
    ("oracle_unseen", UNSEEN, 8.0, True),
    ("oracle_red_dog", "the red dog sat", 8.0, True),
]
# Weak oracles: the path barely wins, so the LM and the noise decide some words.
WEAK = [("weak_dev", DEV[0], 1.0, False), ("weak_unseen", UNSEEN, 1.5, True)]
RANDOM_FRAMES = [12, 25, 40, 60]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Return the row-wise log-softmax of ``logits`` as float32."""
    return (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32)


def oracle_log_probs(lang: Lang, tokens: SymbolTable, sentence: str, margin: float, silence: bool, rng: np.random.Generator) -> np.ndarray:
    """Return noisy log-probs whose best frame path is the CTC path of ``sentence``: the first
    pronunciation of each word, two frames per phone and a blank after each, plus three frames of
    the optional silence between words when ``silence``."""
    frames = [0]
    words = sentence.upper().split()
    for i, w in enumerate(words):
        for p in lang.lexicon[w][0]:
            frames += [tokens.id(p)] * 2 + [0]
        if silence and i + 1 < len(words):
            frames += [tokens.id(lang.optional_silence)] * 3
    logits = rng.normal(size=(len(frames), max(tokens.ids()) + 1))
    logits[np.arange(len(frames)), frames] += margin
    return log_softmax(logits)


def build_fixtures(out_dir: Path | str, seed: int = 0) -> dict:
    """Write the HLG text, the matrices and ``ours.json`` under ``out_dir``; return the JSON dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        lang = make_lang(Path(tmp) / "toy")
        make_phone_hlg(lang, Path(tmp) / "graph", silence_prob=SILENCE_PROB)
        hlg = load_hlg(Path(tmp) / "graph")
    write_text_atomic(out / HLG_TEXT, fst_to_text(hlg))
    tokens = phone_tokens(lang)
    num_tokens = max(tokens.ids()) + 1

    matrices: list[tuple[str, np.ndarray, str | None]] = []
    for name, sentence, margin, silence in ORACLES + WEAK:
        x = oracle_log_probs(lang, tokens, sentence, margin, silence, rng)
        matrices.append((name, x, sentence if margin >= 8.0 else None))
    for frames in RANDOM_FRAMES:
        # Peaky random outputs (scale 3) look more like a trained network's than N(0, 1) noise.
        matrices.append((f"random_{frames}", log_softmax(3.0 * rng.normal(size=(frames, num_tokens))), None))

    entries = []
    for name, x, sentence in matrices:
        np.save(out / f"{name}.npy", x)
        result = decode_ctc(hlg, x, EXACT, utt_id=name)
        entries.append(
            {
                "name": name,
                "file": f"{name}.npy",
                "frames": int(x.shape[0]),
                "transcript_ids": lang.word_ids(sentence.upper().split()) if sentence else None,
                "word_ids": [int(w) for w in result.word_ids],
                "words": [lang.words.name(w) for w in result.word_ids],
                "score": float(result.score),
            }
        )
        logger.info("%s: %d frames -> %s (score %.4f)", name, x.shape[0], " ".join(entries[-1]["words"]), result.score)
    summary = {"seed": seed, "num_tokens": num_tokens, "silence_prob": SILENCE_PROB, "hlg": HLG_TEXT, "matrices": entries}
    write_text_atomic(out / RESULTS, json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Write the k2 lane's fixtures: our HLG as OpenFst text, log-prob matrices and our decodings of them.")
    parser.add_argument("out_dir", type=Path, help="folder to write HLG.txt, *.npy and ours.json into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrices' noise (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")
    build_fixtures(args.out_dir, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
