"""From a network's per-frame log-probabilities to words with timings, for a model directory.

Hybrid models search HCLG (scaled likelihoods = log posteriors - log priors, through
:func:`asr_kd.decode.hybrid.hybrid_decodable`); CTC models search HLG, or take the greedy or
prefix-beam token sequence (phone units then give phones, BPE units words).

Word timings come from the best path: a word starts at the frame where the graph emits it and
runs to the next word's start, with filler frames (silence phones for hybrid, blanks for CTC)
trimmed from both ends. Without position-dependent phones this is an approximation of Kaldi's
``lattice-align-words`` (a word's boundary is where the graph emits its label), good to a few
frames; prefix beam search keeps no frame path and gives no timings.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import DecodeFailure
from asr_kd.decode.fst_utils import read_fst
from asr_kd.deploy.model_dir import (PRIORS_FILE, REBUILD, TID2PDF_FILE, TID2PHONE_FILE, WORDS_FILE, ModelSpec, load_int_array,
                                     require_files)
from asr_kd.errors import ConfigError, DataError
from asr_kd.lang.symbols import SymbolTable

log = logging.getLogger(__name__)

SEARCH_METHODS = {"hybrid": ("hclg",), "gmm": ("hclg",), "ctc": ("hlg", "greedy", "beam")}


class WordTiming(NamedTuple):
    """One word of a hypothesis: its start and duration in seconds."""

    word: str
    start: float
    duration: float


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """The words of one utterance, with timings when the search kept a frame path."""

    words: list[str]
    timings: list[WordTiming] | None

    @property
    def text(self) -> str:
        return " ".join(self.words)


def word_spans(num_frames: int, starts: Sequence[tuple[int, int]], filler: np.ndarray) -> list[tuple[int, int]]:
    """Return ``[(first_frame, end_frame)]`` per word: each word runs from its start frame to the
    next word's (the last one to ``num_frames``), with ``filler`` frames trimmed from both ends
    (a span of only filler frames is kept whole). ``starts`` holds ``(frame, word)`` in order."""
    spans = []
    bounds = [s for s, _ in starts] + [num_frames]
    for i in range(len(starts)):
        a, b = bounds[i], max(bounds[i + 1], bounds[i] + 1)
        lo, hi = a, min(b, num_frames)
        while lo < hi and filler[lo]:
            lo += 1
        while hi > lo and filler[hi - 1]:
            hi -= 1
        spans.append((lo, hi) if hi > lo else (a, max(min(b, num_frames), a + 1)))
    return spans


def _walk_best_path(decoder, decodable, utt_id: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Decode and return the best path as ``(input label per frame, [(frame, word id)])``."""
    decoder.decode(decodable)
    if not decoder.reached_final():
        log.warning("utterance %s: no final state reached; using the best partial path", utt_id)
    ok, best = decoder.get_best_path()
    if not ok or best.num_states == 0:
        raise DecodeFailure(f"utterance {utt_id}: the decoder found no path (try a larger beam)")
    # The best path is a linear Lattice (kaldifst iterates only Std FSTs): read its arcs from
    # the text form, one "src dst ilabel olabel weight" line per arc.
    arcs: dict[int, tuple[int, int, int]] = {}
    for line in best.to_str().splitlines():
        f = line.split()
        if len(f) >= 4:
            arcs[int(f[0])] = (int(f[1]), int(f[2]), int(f[3]))
    frames: list[int] = []
    words: list[tuple[int, int]] = []
    state = best.start
    while state in arcs:
        state, ilabel, olabel = arcs[state]
        if olabel != 0:
            words.append((len(frames), olabel))
        if ilabel != 0:
            frames.append(ilabel)
    return frames, words


def search_files(spec: ModelSpec, method: str) -> list[str]:
    """Return the files of a model directory that ``method`` reads to search (besides the network)."""
    if spec.kind in ("hybrid", "gmm"):
        return [WORDS_FILE, TID2PDF_FILE, TID2PHONE_FILE, "HCLG.fst"] + ([PRIORS_FILE] if spec.kind == "hybrid" else [])
    return [WORDS_FILE, "tokens.txt"] + (["bpe.model"] if spec.units == "bpe" else []) + (["HLG.fst"] if method == "hlg" else [])


def _load_priors(path: Path, tid2pdf: np.ndarray) -> np.ndarray:
    """Return the senone log priors of a model directory: one finite value per pdf the
    transition-id table reads (a truncated file would otherwise pass as a network-HMM mismatch)."""
    from asr_kd.decode.priors import load_priors

    try:
        priors = load_priors(path)
    except ValueError as err:
        raise DataError(f"{path} is not a list of numbers ({str(err).splitlines()[0][:120]}); {REBUILD}") from None
    except DataError:  # the file is there (checked): its values are not all finite
        raise DataError(f"{path} holds non-finite senone log priors; {REBUILD}") from None
    num_pdfs = int(tid2pdf.max()) + 1 if tid2pdf.size else 0
    if priors.shape != (num_pdfs,):
        raise DataError(f"{path} holds {priors.size} senone log priors but {TID2PDF_FILE} has {num_pdfs} pdfs; {REBUILD}")
    return priors


class Searcher:
    """Turns (T x V) log-probabilities of one utterance into a :class:`Hypothesis`."""

    def __init__(self, model_dir: Path | str, spec: ModelSpec, method: str | None = None, decode_config: DecodeConfig | None = None) -> None:
        model_dir = Path(model_dir)
        self.spec = spec
        self.method = method or SEARCH_METHODS[spec.kind][0]
        if self.method not in SEARCH_METHODS[spec.kind]:
            raise ConfigError(f"a {spec.kind} model decodes with {SEARCH_METHODS[spec.kind]}, not {self.method!r}")
        # The decoding the model directory records (the recipe's beam and tuned scale), unless overridden.
        self.config = decode_config or spec.decode_config()
        require_files(model_dir, search_files(spec, self.method))
        self.words = SymbolTable.from_file(model_dir / WORDS_FILE)
        if spec.kind in ("hybrid", "gmm"):
            from asr_kd.decode.decoder import make_decoder

            self.tid2pdf = load_int_array(model_dir / TID2PDF_FILE).astype(np.int64)
            # A GMM gives likelihoods already; a network's posteriors are divided by the priors.
            self.priors = _load_priors(model_dir / PRIORS_FILE, self.tid2pdf) if spec.kind == "hybrid" else None
            tid2phone = load_int_array(model_dir / TID2PHONE_FILE)
            # Filler per transition-id + 1 (index 0 unused): frames on silence phones.
            self.tid_is_silence = np.concatenate([[False], np.isin(tid2phone, list(spec.silence_phones))])
            # The decoder keeps a C++ reference to the graph: hold the Python object as long.
            self.graph = read_fst(model_dir / "HCLG.fst", "decoding graph", REBUILD)
            # Best path only: the lattice decoder would need the whole transition model.
            self.decoder = make_decoder(self.graph, dataclasses.replace(self.config, decoder="faster"))
        else:
            self.tokens = SymbolTable.from_file(model_dir / "tokens.txt")
            self.sp = None
            if spec.units == "bpe":
                import sentencepiece as spm

                self.sp = spm.SentencePieceProcessor(model_file=str(model_dir / "bpe.model"))
            if self.method == "hlg":
                from asr_kd.decode.ctc import make_ctc_decoder

                self.graph = read_fst(model_dir / "HLG.fst", "CTC decoding graph", REBUILD)
                self.decoder = make_ctc_decoder(self.graph, self.config)

    def __call__(self, log_probs: np.ndarray, utt_id: str = "utt") -> Hypothesis:
        """Return the hypothesis of one utterance; DecodeFailure if no path survives, DataError
        for a malformed matrix."""
        if self.spec.kind in ("hybrid", "gmm"):
            return self._hybrid(log_probs, utt_id)
        if self.method == "hlg":
            return self._hlg(log_probs, utt_id)
        return self._tokens(log_probs, utt_id)

    def _timed(self, num_frames: int, starts: list[tuple[int, int]], filler: np.ndarray) -> Hypothesis:
        sec = self.spec.frame_seconds
        names = [self.words.name(w) for _, w in starts]
        spans = word_spans(num_frames, starts, filler)
        timings = [WordTiming(n, round(a * sec, 3), round((b - a) * sec, 3)) for n, (a, b) in zip(names, spans)]
        return Hypothesis(names, timings)

    def _hybrid(self, log_probs: np.ndarray, utt_id: str) -> Hypothesis:
        from asr_kd.decode.hybrid import hybrid_decodable

        if self.priors is None:  # GMM log-likelihoods (frames x pdfs), scaled as stage 3 does
            from asr_kd.decode.gmm_decode import loglike_decodable

            decodable = loglike_decodable(log_probs, self.tid2pdf, self.config.acoustic_scale, utt_id)
        else:
            decodable = hybrid_decodable(log_probs, self.priors, self.tid2pdf, self.config.acoustic_scale, utt_id)
        frames, starts = _walk_best_path(self.decoder, decodable, utt_id)
        return self._timed(len(frames), starts, self.tid_is_silence[np.asarray(frames, dtype=np.int64)])

    def _hlg(self, log_probs: np.ndarray, utt_id: str) -> Hypothesis:
        from asr_kd.decode.ctc import ctc_decodable

        # The blank penalty and HLG scale CTC stage 7 chose on dev (the model directory's decoding).
        decodable = ctc_decodable(log_probs, self.config.ctc_acoustic_scale, self.config.ctc_blank_penalty, utt_id)
        frames, starts = _walk_best_path(self.decoder, decodable, utt_id)
        return self._timed(len(frames), starts, np.asarray(frames) == 1)  # label 1 = blank + 1

    def _tokens(self, log_probs: np.ndarray, utt_id: str) -> Hypothesis:
        from asr_kd.ctc.beam import prefix_beam_search
        from asr_kd.decode.ctc import check_log_probs

        x = check_log_probs(log_probs, utt_id)
        if self.method == "beam":
            ids = list(prefix_beam_search(x, beam_size=8)[0].tokens)
            return Hypothesis(self._token_words(ids), None)
        path = x.argmax(axis=1)
        emitted = [(t, int(k)) for t, k in enumerate(path) if k != 0 and (t == 0 or k != path[t - 1])]
        pieces = [self.tokens.name(k) for _, k in emitted]
        # A word starts at each phone (phone units) or at each piece that begins with "▁" (BPE).
        starts = [(t, i) for i, ((t, _), p) in enumerate(zip(emitted, pieces)) if self.sp is None or p.startswith("▁") or i == 0]
        words = self._token_words([k for _, k in emitted])
        if len(words) != len(starts):  # a piece that decodes to no word: timings cannot be paired
            return Hypothesis(words, None)
        sec = self.spec.frame_seconds
        spans = word_spans(len(path), starts, path == 0)
        return Hypothesis(words, [WordTiming(w, round(a * sec, 3), round((b - a) * sec, 3)) for w, (a, b) in zip(words, spans)])

    def _token_words(self, ids: Sequence[int]) -> list[str]:
        if self.sp is not None:
            return self.sp.decode([int(i) for i in ids]).split()
        return [self.tokens.name(int(i)) for i in ids]
