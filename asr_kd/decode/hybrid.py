"""Hybrid DNN-HMM decoding: senone log-posteriors -> scaled log-likelihoods -> HCLG -> words.

The network gives ``log p(pdf | x)`` per frame (T x num_pdfs). Dividing by the senone priors
gives scaled likelihoods ``log p(x | pdf) + const``, multiplied by the acoustic scale. HCLG's
input labels are transition-ids, so the (T x num_pdfs) matrix is expanded to (T x
num_transition_ids) with ``tid2pdf`` and read by ``DecodableCtc`` (column ``tid - 1``).

Why expand rather than relabel HCLG's input labels to ``pdf + 1``: the same HCLG then serves
GMM and hybrid decoding, and the decoder returns transition-id alignments (phones, HMM states
and senones all follow), which the lattice decoder's word/phone handling relies on. The
expansion costs one gather of a (T x num_tids) float32 matrix per utterance, small next to the
search.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import BatchResult, Decoded, UtteranceDecoder, decode_batch, decode_one, make_decoder
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst, khg


def tid_to_pdf(trans_model: khg.TransitionModel) -> np.ndarray:
    """Return ``tid2pdf`` (int64, length num_transition_ids): entry ``tid - 1`` is the pdf of
    transition-id ``tid``."""
    table = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    # The binding returns Kaldi's 1-based table with an unused entry 0 in front.
    if table.size == trans_model.num_transition_ids + 1:
        table = table[1:]
    assert table.size == trans_model.num_transition_ids
    return table


def check_log_posteriors(log_posteriors: np.ndarray, num_pdfs: int, utt_id: str = "utt") -> np.ndarray:
    """Return ``log_posteriors`` as float32 (T x num_pdfs); DataError naming the utterance if it
    has the wrong shape, no frame, or a NaN."""
    x = np.asarray(log_posteriors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != num_pdfs:
        raise DataError(f"utterance {utt_id}: log-posteriors have shape {x.shape}, expected (frames, {num_pdfs}); the network and the HMM model do not match")
    if x.shape[0] == 0:
        raise DataError(f"utterance {utt_id}: no frames to decode")
    if np.isnan(x).any():
        raise DataError(f"utterance {utt_id}: log-posteriors contain NaN; check the network's output")
    return x


def scaled_loglikes(log_posteriors: np.ndarray, log_priors: np.ndarray, acoustic_scale: float) -> np.ndarray:
    """Return ``acoustic_scale * (log_posteriors - log_priors)`` (float32, T x num_pdfs)."""
    return (acoustic_scale * (log_posteriors - log_priors[None, :])).astype(np.float32)


def hybrid_decodable(
    log_posteriors: np.ndarray, log_priors: np.ndarray, tid2pdf: np.ndarray, acoustic_scale: float, utt_id: str = "utt",
    decodable_type: type = khg.DecodableCtc,
) -> khg.DecodableCtc:
    """Return the decodable of one utterance: scaled log-likelihoods expanded to transition-ids
    (``decodable_type``: kaldi-hmm-gmm's, or kaldi-decoder's for its lattice decoder)."""
    return decodable_type(transition_loglikes(log_posteriors, log_priors, tid2pdf, acoustic_scale, utt_id))


def transition_loglikes(
    log_posteriors: np.ndarray, log_priors: np.ndarray, tid2pdf: np.ndarray, acoustic_scale: float, utt_id: str = "utt",
) -> np.ndarray:
    """Return the (T x num_transition_ids) matrix a hybrid decodable reads (column ``tid - 1``):
    the scaled log-likelihoods of :func:`scaled_loglikes`, floored at -1e10, per transition-id."""
    x = check_log_posteriors(log_posteriors, log_priors.shape[0], utt_id)
    loglikes = scaled_loglikes(x, log_priors, acoustic_scale)
    # -inf would survive as NaN after arithmetic in the decoder; a very low finite score is safe.
    loglikes = np.maximum(loglikes, -1e10)
    return np.ascontiguousarray(loglikes[:, tid2pdf])


def _check_priors(log_priors: np.ndarray, trans_model: khg.TransitionModel) -> np.ndarray:
    priors = np.asarray(log_priors, dtype=np.float32)
    if priors.shape != (trans_model.num_pdfs,):
        raise DataError(f"senone priors have shape {priors.shape} but the model has {trans_model.num_pdfs} pdfs; recompute them for this model")
    if not np.all(np.isfinite(priors)):
        raise DataError("senone priors contain -inf or NaN (a prior of zero); recompute them with smoothing or a positive floor")
    return priors


def decode_posteriors(
    hclg: kaldifst.StdVectorFst,
    trans_model: khg.TransitionModel,
    log_posteriors: np.ndarray,
    log_priors: np.ndarray,
    config: DecodeConfig,
    utt_id: str = "utt",
) -> Decoded:
    """Decode one (T x num_pdfs) log-posterior matrix with HCLG.

    Returns ``(word_ids, alignment, score)``: the alignment has one transition-id per frame.
    Raises DataError for inputs that do not match the model, DecodeFailure if no path survives.
    For many utterances use :func:`decode_posteriors_batch`, which reuses the decoder.
    """
    priors = _check_priors(log_priors, trans_model)
    decodable = hybrid_decodable(log_posteriors, priors, tid_to_pdf(trans_model), config.acoustic_scale, utt_id)
    return decode_one(make_decoder(hclg, config), decodable, trans_model, utt_id, config.allow_partial)


def decode_posteriors_batch(
    hclg: kaldifst.StdVectorFst,
    trans_model: khg.TransitionModel,
    log_posteriors: Mapping[str, np.ndarray],
    log_priors: np.ndarray,
    config: DecodeConfig,
    utterance_decoder: UtteranceDecoder | None = None,
) -> BatchResult:
    """Decode ``{utt_id: (T x num_pdfs) log-posteriors}`` with a progress bar (and
    ``config.num_jobs`` processes); utterances that fail are counted, logged and listed. With
    ``utterance_decoder`` (a lattice rescorer) it decodes each utterance instead."""
    priors = _check_priors(log_priors, trans_model)
    tid2pdf = tid_to_pdf(trans_model)
    kind = khg.DecodableCtc if utterance_decoder is None else utterance_decoder.decodable_type

    def make(utt_id: str, x: np.ndarray) -> khg.DecodableCtc:
        return hybrid_decodable(x, priors, tid2pdf, config.acoustic_scale, utt_id, kind)

    return decode_batch(hclg, trans_model, log_posteriors, make, config, desc="hybrid decode", utterance_decoder=utterance_decoder)
