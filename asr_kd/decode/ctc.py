"""CTC decoding: greedy (best token per frame) and with the HLG graph (kaldi-decoder).

Inputs are (T x num_tokens) log-probabilities with the blank at column 0. HLG decoding uses
``kaldi_decoder.FasterDecoder`` and ``kaldi_decoder.DecodableCtc``, which reads column
``ilabel - 1`` (HLG's labels are ``token + 1``).
"""

from __future__ import annotations

import logging
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import BatchResult, DecodeFailure
from asr_kd.errors import AsrKdError, DataError
from asr_kd.kaldi import kaldi_decoder, kaldifst

logger = logging.getLogger(__name__)


class CtcDecoded(NamedTuple):
    """The best HLG path: word ids, the token read at each frame (blank = 0), and its score
    (total log-probability: scaled acoustic plus graph)."""

    word_ids: list[int]
    frame_tokens: list[int]
    score: float


def check_log_probs(log_probs: np.ndarray, utt_id: str = "utt") -> np.ndarray:
    """Return ``log_probs`` as C-contiguous float32 (T x V); DataError naming the utterance if it
    is not a non-empty matrix or contains NaN."""
    x = np.ascontiguousarray(log_probs, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise DataError(f"utterance {utt_id}: CTC log-probs have shape {x.shape}, expected (frames > 0, tokens incl. blank)")
    if np.isnan(x).any():
        raise DataError(f"utterance {utt_id}: CTC log-probs contain NaN; check the network's output")
    return x


def collapse_ctc(frame_tokens: Sequence[int], blank: int = 0) -> list[int]:
    """Return the label sequence of a CTC frame path: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for t in frame_tokens:
        if t != prev and t != blank:
            out.append(int(t))
        prev = t
    return out


def greedy_ctc(log_probs: np.ndarray, blank: int = 0) -> list[int]:
    """Return the greedy CTC token sequence: the arg-max token of each frame, collapsed."""
    return collapse_ctc(np.asarray(log_probs).argmax(axis=-1).tolist(), blank)


def make_ctc_decoder(hlg: kaldifst.StdVectorFst, config: DecodeConfig) -> kaldi_decoder.FasterDecoder:
    """Return a FasterDecoder over ``hlg``; it can be reused for many utterances."""
    opts = kaldi_decoder.FasterDecoderOptions(beam=config.beam, max_active=config.max_active, min_active=min(config.min_active, config.max_active))
    return kaldi_decoder.FasterDecoder(hlg, opts)


def ctc_decodable(log_probs: np.ndarray, acoustic_scale: float = 1.0, blank_penalty: float = 0.0, utt_id: str = "utt"):
    """The kaldi-decoder decodable of one utterance's (T x V) log-probabilities for an HLG search:
    ``blank_penalty`` taken off the blank's (column 0) on every frame, then everything times
    ``acoustic_scale`` (-inf clipped to -1e10). DataError for a malformed matrix."""
    x = check_log_probs(log_probs, utt_id)
    if blank_penalty:
        x = x.copy()
        x[:, 0] -= blank_penalty
    if acoustic_scale != 1.0:
        x = np.ascontiguousarray(x * acoustic_scale)
    return kaldi_decoder.DecodableCtc(np.maximum(x, -1e10))


def decode_ctc_with(decoder: kaldi_decoder.FasterDecoder, log_probs: np.ndarray, acoustic_scale: float = 1.0, utt_id: str = "utt",
                    blank_penalty: float = 0.0) -> CtcDecoded:
    """Decode one utterance with an existing decoder; return its :class:`CtcDecoded`. The log-probs
    are scaled by ``acoustic_scale`` after ``blank_penalty`` is taken off the blank's (column 0).

    Raises DataError for a malformed input and DecodeFailure if no path survives.
    """
    decoder.decode(ctc_decodable(log_probs, acoustic_scale, blank_penalty, utt_id))
    ok, best = decoder.get_best_path()
    if not ok or best.num_states == 0:
        raise DecodeFailure(f"utterance {utt_id}: the CTC decoder found no path (try a larger beam, or check the inputs)")
    ok, ilabels, olabels, weight = kaldifst.get_linear_symbol_sequence(best)
    if not ok:
        raise DecodeFailure(f"utterance {utt_id}: the CTC decoder's best path is not linear")
    return CtcDecoded(list(olabels), [i - 1 for i in ilabels], -float(weight.value1 + weight.value2))


def decode_ctc(hlg: kaldifst.StdVectorFst, log_probs: np.ndarray, config: DecodeConfig, utt_id: str = "utt") -> CtcDecoded:
    """Decode one (T x num_tokens) log-prob matrix with HLG; return ``(word_ids, frame_tokens,
    score)``. Use :func:`decode_ctc_batch` for many utterances (it reuses the decoder)."""
    return decode_ctc_with(make_ctc_decoder(hlg, config), log_probs, config.ctc_acoustic_scale, utt_id, config.ctc_blank_penalty)


def decode_ctc_batch(hlg: kaldifst.StdVectorFst, log_probs: Mapping[str, np.ndarray], config: DecodeConfig) -> BatchResult:
    """Decode ``{utt_id: log-probs}`` with a progress bar. Returns a BatchResult whose
    ``decoded`` values are :class:`CtcDecoded`; failures are counted, logged and listed."""
    decoder = make_ctc_decoder(hlg, config)
    decoded: dict[str, CtcDecoded] = {}
    failed: list[str] = []
    for utt_id, x in tqdm(log_probs.items(), total=len(log_probs), desc="CTC decode", unit="utt", leave=False):
        try:
            decoded[utt_id] = decode_ctc_with(decoder, x, config.ctc_acoustic_scale, utt_id, config.ctc_blank_penalty)
        except AsrKdError as err:
            logger.warning("%s", err)
            failed.append(utt_id)
    if failed:
        logger.warning("CTC decode: %d of %d utterances failed, e.g. %s", len(failed), len(log_probs), failed[:5])
    return BatchResult(decoded, failed)  # type: ignore[arg-type]
