"""GMM-HMM decoding: features -> ``DecodableAmDiagGmmScaled`` -> lattice decoder over HCLG."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import BatchResult, Decoded, decode_batch, decode_one, make_decoder
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst, khg


def gmm_decodable(am: khg.AmDiagGmm, trans_model: khg.TransitionModel, feats: np.ndarray, acoustic_scale: float, utt_id: str = "utt") -> khg.DecodableAmDiagGmmScaled:
    """Return the decodable scoring ``feats`` (frames x dim) with the GMMs ``am``, scaled by
    ``acoustic_scale``; DataError naming the utterance for a wrong dimension or no frame."""
    x = np.ascontiguousarray(feats, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != am.dim:
        raise DataError(f"utterance {utt_id}: features have shape {x.shape}, the GMMs expect dimension {am.dim}; use the features the model was trained on (same deltas)")
    if x.shape[0] == 0:
        raise DataError(f"utterance {utt_id}: no frames to decode")
    if not np.all(np.isfinite(x)):
        raise DataError(f"utterance {utt_id}: features contain NaN or inf; recompute them")
    return khg.DecodableAmDiagGmmScaled(am=am, tm=trans_model, feats=x, scale=acoustic_scale)


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
    decodable = gmm_decodable(am, trans_model, feats, config.acoustic_scale, utt_id)
    return decode_one(make_decoder(hclg, config), decodable, trans_model, utt_id, config.allow_partial)


def decode_gmm_batch(
    hclg: kaldifst.StdVectorFst,
    am: khg.AmDiagGmm,
    trans_model: khg.TransitionModel,
    feats: Mapping[str, np.ndarray],
    config: DecodeConfig,
) -> BatchResult:
    """Decode ``{utt_id: features}`` with a progress bar (``config.num_jobs`` processes);
    failures are counted, logged and listed in the result."""

    def make(utt_id: str, x: np.ndarray) -> khg.DecodableAmDiagGmmScaled:
        return gmm_decodable(am, trans_model, x, config.acoustic_scale, utt_id)

    return decode_batch(hclg, trans_model, feats, make, config, desc="GMM decode")
