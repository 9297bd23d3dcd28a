"""The one place that imports the k2-fsa Kaldi packages, in the only order that works.

Importing ``kaldilm`` (or, with mismatched versions, ``kaldifst``/``kaldi_decoder``) before
``kaldi_hmm_gmm`` deadlocks in a static initialiser, so every module of the project imports
these packages from here and never directly::

    from asr_kd.kaldi import kaldifst, khg, kaldi_decoder
    kaldilm = load_kaldilm()
"""

from __future__ import annotations

import kaldi_hmm_gmm as khg  # noqa: I001  (must come first)
import kaldifst
import kaldi_decoder

__all__ = ["khg", "kaldifst", "kaldi_decoder", "load_kaldilm"]


def load_kaldilm():
    """Return the ``kaldilm`` module, imported after the OpenFst-based packages above."""
    import kaldilm

    return kaldilm
