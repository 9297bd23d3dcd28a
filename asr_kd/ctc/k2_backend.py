"""k2 as an optional backend: CTC loss and exact HLG best-path decoding with k2.

k2 1.23.4 is the only k2 on PyPI and exists only for Python 3.9 with torch 1.13.1; it cannot be
imported beside the project's torch 2.11. So this module runs in two worlds: in the main
environment it imports (``k2_available()`` is False and every k2 function raises a one-line
:class:`~asr_kd.errors.ConfigError`), and in the k2 environment that ``make test-k2`` builds it
needs only torch, numpy, k2 and :mod:`asr_kd.errors` (which is plain Python 3.9). Hence no other
``asr_kd`` import here, ``from __future__ import annotations``, and no 3.10+ syntax at run time.

Label conventions bridged by :func:`hlg_from_openfst_text`:

* our HLG (``asr_kd.decode.hlg``): input label ``token + 1``, 0 = epsilon, costs (-log weights);
* k2's ``intersect_dense``: label ``l`` reads column ``l`` of the log-probs, so 0 is the blank
  and there is no epsilon; -1 marks the arcs into the final state; arcs carry scores (log weights).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from asr_kd.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover - k2 exists only in the Python 3.9 environment
    import k2

K2_MISSING = "k2 is not importable here: it needs the Python 3.9 + torch 1.13.1 environment that `make test-k2` builds (.venv-k2)"


def k2_available() -> bool:
    """Return True when ``import k2`` works in this interpreter."""
    try:
        importlib.import_module("k2")
    except Exception:  # ImportError, or an OSError/RuntimeError from a k2 built for another torch
        return False
    return True


def _k2() -> ModuleType:
    """Return the k2 module; ConfigError (one line, naming the fix) where it cannot be imported."""
    try:
        import k2
    except Exception as err:
        raise ConfigError(f"{K2_MISSING} ({type(err).__name__}: {err})".splitlines()[0]) from None
    return k2


def ctc_loss_k2(log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int], targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Return the per-utterance CTC negative log-likelihoods (shape ``[B]``, float32) computed by k2.

    ``log_probs`` is ``[B, T, V]`` (float32: k2's dense scores are float32 only) with the blank at
    column 0; ``lengths[b]`` frames of row ``b`` are used; ``targets[b]`` holds token ids in
    ``1..V-1``. Gradients flow back into ``log_probs``. The graph is the standard (not k2's
    "modified") CTC topology, so the loss equals ``torch.nn.functional.ctc_loss(reduction="none")``.
    """
    k2 = _k2()
    if log_probs.dim() != 3:
        raise DataError(f"ctc_loss_k2: log_probs must be [batch, frames, tokens], got shape {tuple(log_probs.shape)}")
    batch, frames, vocab = log_probs.shape
    lengths = torch.as_tensor(lengths, dtype=torch.int64).reshape(-1)
    if lengths.numel() != batch or len(targets) != batch:
        raise DataError(f"ctc_loss_k2: {batch} utterances but {lengths.numel()} lengths and {len(targets)} targets")
    if bool((lengths < 1).any()) or bool((lengths > frames).any()):
        raise DataError(f"ctc_loss_k2: lengths must be in 1..{frames}, got {lengths.tolist()}")
    bad = [t for seq in targets for t in seq if not 0 < t < vocab]
    if bad:
        raise DataError(f"ctc_loss_k2: target ids must be in 1..{vocab - 1} (0 is the blank), got {bad[:5]}")
    # k2 wants the supervision segments in decreasing length; the graphs follow the same order,
    # and the losses are put back in the caller's order at the end.
    order = sorted(range(batch), key=lambda b: -int(lengths[b]))
    supervision = torch.tensor([[b, 0, int(lengths[b])] for b in order], dtype=torch.int32)
    graphs = k2.ctc_graph([list(targets[b]) for b in order], modified=False)
    dense = k2.DenseFsaVec(log_probs, supervision)
    # The beam prunes only the output of the full intersection; 1e4 keeps every path that adds
    # anything to the log-sum (k2 sums in float64 with use_double_scores, returns float32).
    sorted_loss = k2.ctc_loss(graphs, dense, output_beam=1e4, reduction="none", use_double_scores=True)
    loss = torch.empty_like(sorted_loss)
    loss[torch.tensor(order)] = sorted_loss
    return loss


def hlg_from_openfst_text(text: str) -> "k2.Fsa":
    """Return our HLG (OpenFst text from ``asr_kd.decode.fst_utils.fst_to_text``) as a k2
    decoding graph: epsilon-free, labels = token ids (0 = blank), word ids in the ragged
    ``aux_labels``, scores = -costs, arc-sorted. DataError for an empty text."""
    k2 = _k2()
    if not text.strip():
        raise DataError("hlg_from_openfst_text: the HLG text is empty; export a non-empty HLG with fst_to_text")
    # from_openfst negates each cost into a score (score = -cost) and turns every final state's
    # cost into an arc labelled -1 into one new super-final state (k2's only kind of final state);
    # it also renumbers the states so that the start state (first line's source) is 0.
    fsa = k2.Fsa.from_openfst(text, acceptor=False)
    # Our label 0 is an epsilon (disambiguation symbols zeroed after determinization). k2 would
    # read it as the blank column, so the epsilons are removed here, in k2, because k2's
    # remove_epsilon handles a transducer's input epsilons that carry words (it moves the word
    # ids onto the following arcs as ragged aux_labels); OpenFst's RmEpsilon removes only arcs
    # whose input and output are both epsilon. The result is equivalent in the tropical semiring,
    # which is the one Viterbi decoding uses (log-semiring totals are not preserved).
    fsa = k2.connect(k2.remove_epsilon(fsa))
    labels = fsa.labels.clone()
    if bool((labels == 0).any()):
        raise DataError("hlg_from_openfst_text: epsilon arcs remain after remove_epsilon; is the HLG text an epsilon loop?")
    # Our token + 1 -> k2's column = token id; the -1 arcs into the final state stay.
    fsa.labels = torch.where(labels > 0, labels - 1, labels)
    return k2.arc_sort(fsa)


def decode_hlg_k2(hlg: "k2.Fsa", log_probs: torch.Tensor | np.ndarray, output_beam: float = 8.0) -> tuple[list[int], float]:
    """Return ``(word_ids, score)`` of the best path of ``hlg`` over one ``[T, V]`` log-prob matrix
    (blank at column 0): the word ids on the path (0s dropped) and its total score, graph scores
    plus the log-probs of the frames it reads. DataError for a malformed matrix or no path.

    ``k2.intersect_dense`` builds the full intersection and prunes only its output, keeping arcs
    on paths within ``output_beam`` of the best, so the best path is exact for any beam > 0 (the
    beam only bounds the lattice size); ``k2.shortest_path`` then takes the Viterbi best path.
    """
    k2 = _k2()
    if isinstance(log_probs, torch.Tensor):
        x = log_probs.detach().to("cpu", torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(log_probs, dtype=np.float32))
    if x.dim() != 2 or x.shape[0] < 1:
        raise DataError(f"decode_hlg_k2: log_probs must be [frames > 0, tokens], got shape {tuple(x.shape)}")
    if bool(torch.isnan(x).any()):
        raise DataError("decode_hlg_k2: log_probs contain NaN; check the network's output")
    max_label = int(hlg.labels.max())
    if max_label >= x.shape[1]:
        raise DataError(f"decode_hlg_k2: HLG reads token {max_label} but log_probs have only {x.shape[1]} columns; use the HLG built for this model's tokens")
    supervision = torch.tensor([[0, 0, x.shape[0]]], dtype=torch.int32)
    dense = k2.DenseFsaVec(x.unsqueeze(0), supervision)
    lattice = k2.intersect_dense(k2.create_fsa_vec([hlg]), dense, output_beam=output_beam)
    if lattice.num_arcs == 0:
        raise DataError(f"decode_hlg_k2: no path of HLG reads exactly {x.shape[0]} frames")
    best = k2.shortest_path(lattice, use_double_scores=True)
    score = float(best.get_tot_scores(use_double_scores=True, log_semiring=False)[0])
    aux = best.aux_labels
    values = aux.values if hasattr(aux, "values") else aux  # ragged after remove_epsilon
    return [int(w) for w in values.tolist() if w > 0], score
