"""Running Kaldi's lattice decoder over HCLG, one utterance or a batch (optionally in processes).

Hybrid (DNN posteriors) and GMM decoding differ only in the *decodable* object that scores
frames; both go through :func:`decode_one` and :func:`decode_batch` here. Two kaldi-hmm-gmm
decoders are available (``DecodeConfig.decoder``): ``FasterDecoder`` keeps only what the best
path needs, ``LatticeFasterDecoder`` (through ``decode_utterance_lattice_faster``) also builds
the lattice. Both give the same best path: words, transition-id alignment and log-likelihood.
:func:`decode_batch` can instead hand each utterance to a lattice rescorer
(:class:`asr_kd.decode.rescore.LatticeRescorer`: a lattice, rescored with a larger LM).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Protocol, Sequence, TypeVar, Union

from tqdm import tqdm

from asr_kd.config import DecodeConfig
from asr_kd.errors import AsrKdError
from asr_kd.kaldi import kaldifst, khg
from asr_kd.lang.symbols import SymbolTable

logger = logging.getLogger(__name__)

X = TypeVar("X")


class Decoded(NamedTuple):
    """The best path of one utterance: word ids, per-frame transition-ids, and its score
    (total log-likelihood: scaled acoustic plus graph, as Kaldi reports it)."""

    word_ids: list[int]
    alignment: list[int]
    score: float
    first_pass: Optional[list[int]] = None  # the first pass's best words, when the utterance was rescored


class DecodeFailure(AsrKdError):
    """The decoder found no path for an utterance (all tokens pruned, or an empty input)."""


class UtteranceDecoder(Protocol):
    """Decodes one utterance by other means than :func:`decode_one` (e.g. a lattice rescorer):
    ``decodable_type`` is the decodable class it reads."""

    decodable_type: type

    def decode(self, decodable: Any, utt_id: str) -> Decoded: ...


def lattice_decoder_config(config: DecodeConfig) -> khg.LatticeFasterDecoderConfig:
    """Return the kaldi-hmm-gmm lattice decoder settings of ``config``."""
    return khg.LatticeFasterDecoderConfig(
        beam=config.beam, max_active=config.max_active, min_active=config.min_active, lattice_beam=config.lattice_beam
    )


Decoder = Union[khg.FasterDecoder, khg.LatticeFasterDecoder]


def make_decoder(hclg: kaldifst.StdVectorFst, config: DecodeConfig) -> Decoder:
    """Return the decoder ``config.decoder`` names, over ``hclg``; it can be reused for many
    utterances."""
    if config.decoder == "lattice":
        return khg.LatticeFasterDecoder(hclg, lattice_decoder_config(config))
    opts = khg.FasterDecoderOptions(beam=config.beam, max_active=config.max_active, min_active=config.min_active)
    return khg.FasterDecoder(hclg, opts)


def _no_path(utt_id: str) -> DecodeFailure:
    return DecodeFailure(f"utterance {utt_id}: the decoder found no path (try a larger beam, or check the inputs)")


def decode_one(
    decoder: Decoder,
    decodable: khg.DecodableInterface,
    trans_model: khg.TransitionModel,
    utt_id: str = "utt",
    allow_partial: bool = True,
) -> Decoded:
    """Decode one utterance; return its :class:`Decoded` best path.

    Raises DecodeFailure when the decoder produces no path. With ``allow_partial`` an utterance
    whose search ends in no final state still gets its best partial path (logged).
    """
    if isinstance(decoder, khg.LatticeFasterDecoder):
        ok, alignment, word_ids, loglike = khg.decode_utterance_lattice_faster(
            decoder=decoder, decodable=decodable, trans_model=trans_model, utt=utt_id, allow_partial=allow_partial
        )
        if not ok or not alignment:
            raise _no_path(utt_id)
        return Decoded(list(word_ids), list(alignment), float(loglike))
    decoder.decode(decodable)
    if not decoder.reached_final():
        if not allow_partial:
            raise _no_path(utt_id)
        logger.warning("utterance %s: no final state reached; using the best partial path", utt_id)
    ok, best = decoder.get_best_path()
    if not ok or best.num_states == 0:
        raise _no_path(utt_id)
    ok, alignment, word_ids, weight = kaldifst.get_linear_symbol_sequence(best)
    if not ok or not alignment:
        raise _no_path(utt_id)
    return Decoded(list(word_ids), list(alignment), -float(weight.value1 + weight.value2))


@dataclasses.dataclass
class BatchResult:
    """Decoded utterances and the ids of those that failed (each logged once)."""

    decoded: dict[str, Decoded]
    failed: list[str]

    def texts(self, words: SymbolTable) -> dict[str, str]:
        """Return ``{utt_id: transcript}`` of the decoded utterances (failed ones are absent,
        which :func:`asr_kd.metrics.wer.compute_wer` then scores as all deletions)."""
        return {u: ids_to_text(d.word_ids, words) for u, d in self.decoded.items()}

    def first_pass_texts(self, words: SymbolTable) -> dict[str, str]:
        """Return ``{utt_id: transcript}`` of the first pass of rescored utterances (the others:
        their only pass)."""
        return {u: ids_to_text(d.word_ids if d.first_pass is None else d.first_pass, words) for u, d in self.decoded.items()}


def ids_to_text(word_ids: Sequence[int], words: SymbolTable) -> str:
    """Return the words of ``word_ids`` joined by spaces (ids unknown to ``words`` are shown as
    ``<id>`` rather than dropped)."""
    out = []
    for i in word_ids:
        try:
            out.append(words.name(i))
        except KeyError:
            out.append(f"<{i}>")
    return " ".join(out)


# Per-process state for worker processes (inherited by fork, so graphs are never pickled).
_WORKER: dict[str, Any] = {}


def _decode_item(item: tuple[str, Any]) -> tuple[str, Decoded | None, str]:
    """Decode one ``(utt_id, input)`` with the process's decoder; return the result or the
    reason it failed."""
    utt_id, x = item
    st = _WORKER
    try:
        decodable = st["make_decodable"](utt_id, x)
        if st["utterance_decoder"] is not None:
            return utt_id, st["utterance_decoder"].decode(decodable, utt_id), ""
        if "decoder" not in st:
            st["decoder"] = make_decoder(st["hclg"], st["config"])
        return utt_id, decode_one(st["decoder"], decodable, st["trans_model"], utt_id, st["config"].allow_partial), ""
    except AsrKdError as err:
        return utt_id, None, str(err)


def _run(items: Sequence[tuple[str, Any]], num_jobs: int) -> Iterator[tuple[str, Decoded | None, str]]:
    if num_jobs <= 1 or len(items) <= 1:
        yield from map(_decode_item, items)
        return
    # fork: workers inherit HCLG, the model and the decodable factory without pickling them.
    with mp.get_context("fork").Pool(min(num_jobs, len(items))) as pool:
        yield from pool.imap(_decode_item, items, chunksize=1)


def decode_batch(
    hclg: kaldifst.StdVectorFst,
    trans_model: khg.TransitionModel,
    inputs: Mapping[str, X],
    make_decodable: Callable[[str, X], khg.DecodableInterface],
    config: DecodeConfig,
    desc: str = "decode",
    utterance_decoder: UtteranceDecoder | None = None,
) -> BatchResult:
    """Decode every utterance of ``inputs`` (``{utt_id: input}``) with a progress bar.

    ``make_decodable(utt_id, input)`` turns one input into a decodable (it may raise an
    AsrKdError for bad input, which is counted as a failure). With ``config.num_jobs > 1`` the
    utterances are shared among forked worker processes. Returns a :class:`BatchResult`; failures
    are logged and listed, never dropped silently. With ``utterance_decoder`` (e.g. a lattice
    rescorer) each utterance goes to its ``decode`` instead, and ``make_decodable`` must return
    its ``decodable_type``.
    """
    _WORKER.clear()
    _WORKER.update(hclg=hclg, trans_model=trans_model, make_decodable=make_decodable, config=config, utterance_decoder=utterance_decoder)
    decoded: dict[str, Decoded] = {}
    failed: list[str] = []
    try:
        items = list(inputs.items())
        for utt_id, result, reason in tqdm(_run(items, config.num_jobs), total=len(items), desc=desc, unit="utt", leave=False):
            if result is None:
                logger.warning("%s", reason)
                failed.append(utt_id)
            else:
                decoded[utt_id] = result
    finally:
        _WORKER.clear()
    if failed:
        logger.warning("%s: %d of %d utterances failed to decode, e.g. %s", desc, len(failed), len(inputs), failed[:5])
    return BatchResult(decoded, failed)
