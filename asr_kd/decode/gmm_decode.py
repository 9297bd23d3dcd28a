"""GMM-HMM decoding: features -> per-pdf GMM log-likelihoods (one matrix per utterance, computed
with numpy from the model's Gaussians) -> the decoder over HCLG.

The matrix path gives the same scores as Kaldi's ``DecodableAmDiagGmmScaled`` (checked by a test)
and decodes about 20% faster, because each frame's pdfs are scored once in one matrix product
instead of on demand per active token; it also lets GMMs and networks share one decodable."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import BatchResult, Decoded, UtteranceDecoder, decode_batch, decode_one, make_decoder
from asr_kd.decode.hybrid import tid_to_pdf
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst, khg


class GmmScorer:
    """The Gaussians of an ``AmDiagGmm`` as arrays, scoring a whole utterance at once:
    ``log p(x | pdf) = logsumexp_k (gconst_k + x . (mu/var)_k - 0.5 x^2 . (1/var)_k)`` over the
    components ``k`` of each pdf."""

    def __init__(self, am: khg.AmDiagGmm) -> None:
        pdfs = [am.get_pdf(i) for i in range(am.num_pdfs)]
        sizes = np.array([p.num_gauss for p in pdfs])
        self.dim = am.dim
        self.num_pdfs = am.num_pdfs
        self.gconsts = np.concatenate([np.asarray(p.gconsts, dtype=np.float64) for p in pdfs])
        self.means_invvars = np.concatenate([np.asarray(p.means_invvars, dtype=np.float64) for p in pdfs])
        self.inv_vars = np.concatenate([np.asarray(p.inv_vars, dtype=np.float64) for p in pdfs])
        self.sizes = sizes
        self.starts = np.r_[0, np.cumsum(sizes)[:-1]]

    def loglikes(self, feats: np.ndarray, utt_id: str = "utt") -> np.ndarray:
        """Return the (frames x pdfs) log-likelihoods of ``feats``; DataError naming the utterance
        for a wrong dimension, no frame, or a non-finite value."""
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"utterance {utt_id}: features have shape {x.shape}, the GMMs expect dimension {self.dim}; use the features the model was trained on (same deltas)")
        if x.shape[0] == 0:
            raise DataError(f"utterance {utt_id}: no frames to decode")
        if not np.all(np.isfinite(x)):
            raise DataError(f"utterance {utt_id}: features contain NaN or inf; recompute them")
        comp = self.gconsts[None, :] + x @ self.means_invvars.T - 0.5 * (x * x) @ self.inv_vars.T
        top = np.maximum.reduceat(comp, self.starts, axis=1)
        total = np.add.reduceat(np.exp(comp - np.repeat(top, self.sizes, axis=1)), self.starts, axis=1)
        return (top + np.log(total)).astype(np.float32)


def gmm_decodable(scorer: GmmScorer, trans_model: khg.TransitionModel, feats: np.ndarray, acoustic_scale: float, utt_id: str = "utt") -> khg.DecodableCtc:
    """Return the decodable scoring ``feats`` (frames x dim) with the GMMs of ``scorer``, scaled
    by ``acoustic_scale``; DataError naming the utterance for a wrong dimension or no frame."""
    return loglike_decodable(scorer.loglikes(feats, utt_id), tid_to_pdf(trans_model), acoustic_scale, utt_id)


def loglike_decodable(loglikes: np.ndarray, tid2pdf: np.ndarray, acoustic_scale: float, utt_id: str = "utt") -> khg.DecodableCtc:
    """Return the decodable of per-pdf log-likelihoods (frames x pdfs, e.g. :meth:`GmmScorer.loglikes`)
    scaled by ``acoustic_scale`` and expanded to transition-ids (``tid2pdf``, index 0 = id 1)."""
    x = np.asarray(loglikes, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] <= int(tid2pdf.max()):
        raise DataError(f"utterance {utt_id}: log-likelihoods have shape {x.shape}; the graph needs frames x {int(tid2pdf.max()) + 1} pdfs")
    return khg.DecodableCtc(np.ascontiguousarray(acoustic_scale * x[:, tid2pdf]))


def decode_gmm(
    hclg: kaldifst.StdVectorFst,
    am: khg.AmDiagGmm,
    trans_model: khg.TransitionModel,
    feats: np.ndarray,
    config: DecodeConfig,
    utt_id: str = "utt",
) -> Decoded:
    """Decode one utterance's GMM features; return ``(word_ids, alignment, score)``.

    Raises DataError for features that do not fit the model, DecodeFailure if no path survives.
    """
    decodable = gmm_decodable(GmmScorer(am), trans_model, feats, config.acoustic_scale, utt_id)
    return decode_one(make_decoder(hclg, config), decodable, trans_model, utt_id, config.allow_partial)


def decode_gmm_batch(
    hclg: kaldifst.StdVectorFst,
    am: khg.AmDiagGmm,
    trans_model: khg.TransitionModel,
    feats: Mapping[str, np.ndarray],
    config: DecodeConfig,
    utterance_decoder: UtteranceDecoder | None = None,
) -> BatchResult:
    """Decode ``{utt_id: features}`` with a progress bar (``config.num_jobs`` processes);
    failures are counted, logged and listed in the result. With ``utterance_decoder`` (a lattice
    rescorer) it decodes each utterance instead."""

    scorer = GmmScorer(am)
    tid2pdf = tid_to_pdf(trans_model)
    kind = khg.DecodableCtc if utterance_decoder is None else utterance_decoder.decodable_type

    def make(utt_id: str, x: np.ndarray) -> khg.DecodableCtc:
        loglikes = config.acoustic_scale * scorer.loglikes(x, utt_id)
        return kind(np.ascontiguousarray(loglikes[:, tid2pdf]))

    return decode_batch(hclg, trans_model, feats, make, config, desc="GMM decode", utterance_decoder=utterance_decoder)
