"""The hybrid decoding graph HCLG = H o C o L o G, built with kaldifst and kaldi-hmm-gmm.

The steps follow Kaldi's mkgraph.sh, with the operations these packages bind:

1. ``LG = min(det(L_disambig o G))``: L_disambig already carries the pronunciation
   disambiguation symbols and a ``#0:#0`` self-loop that lets G's back-off arcs through.
2. ``CLG = C o LG`` with ``compose_context`` for the tree's context width ``N`` and central
   position ``P`` (monophone trees: N=1, P=0), which also returns the ilabel table (phone
   windows) that H is built from.
3. ``Ha`` = the HMM transducer (``get_h_transducer``: transition-ids without self-loops, with
   transition probabilities scaled by ``transition_scale``) and the transition-ids it made for
   the disambiguation symbols.
4. ``HCLGa = min(rm_disambig(det(Ha o CLG)))``; then the self-loops are added
   (``self_loop_scale``, reordered as Kaldi does) and the graph is arc-sorted by input label.

Kaldi's mkgraph also runs ``fstrmepslocal`` and ``fstpushspecial``, which kaldifst does not
bind: graphs are somewhat larger without them, and their weights are not pushed. Pushing keeps
every best path but changes what a beam search prunes; bench/graph_push.py measures a tropical
push of HCLG against none (bench/RESULTS.md, "Pushing the decoding graph's weights").
The input labels of HCLG are transition-ids (1-based), the output labels word ids.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from asr_kd.config import GraphScales
from asr_kd.decode.fst_utils import input_labels, nondeterministic_states, num_arcs, read_fst, write_fst, zero_input_labels
from asr_kd.errors import ConfigError, DataError
from asr_kd.kaldi import kaldifst, khg
from asr_kd.lang.lang_dir import Lang
from asr_kd.utils import write_text_atomic

logger = logging.getLogger(__name__)

HCLG_FILE = "HCLG.fst"
INFO_FILE = "hclg.json"


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    """Sizes and build time of a decoding graph and its intermediate graphs (written as JSON)."""

    num_states: int
    num_arcs: int
    intermediate: dict[str, dict[str, int]]  # name -> {"states", "arcs"}
    seconds: float
    settings: dict[str, float | int]

    def to_json(self) -> str:
        """Return the info as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def _size(fst: kaldifst.StdVectorFst) -> dict[str, int]:
    return {"states": fst.num_states, "arcs": num_arcs(fst)}


def _determinize(fst: kaldifst.StdVectorFst, name: str) -> None:
    """Determinize ``fst`` in place (log semiring, epsilons removed); DataError if it cannot."""
    # determinize_star returns True only when it stopped early at max_states (never here).
    if kaldifst.determinize_star(fst, use_log=True):
        raise DataError(f"determinization of {name} stopped early; the lexicon probably lacks disambiguation symbols (rebuild the lang directory)")
    if fst.num_states == 0:
        raise DataError(f"{name} is empty after determinization: L and G share no word; check that G.fst was built from this lang's words.txt")


def compose_lg(L_disambig: kaldifst.StdVectorFst, G: kaldifst.StdVectorFst) -> kaldifst.StdVectorFst:
    """Return ``min(det(L_disambig o G))``, arc-sorted by input label. The inputs are not changed."""
    L = L_disambig.copy()
    kaldifst.arcsort(L, sort_type="olabel")
    G = G.copy()
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.compose(L, G)
    _determinize(LG, "L o G")
    kaldifst.minimize_encoded(LG)
    kaldifst.arcsort(LG, sort_type="ilabel")
    return LG


def compose_clg(LG: kaldifst.StdVectorFst, disambig_phones: Sequence[int], ctx_dep: khg.ContextDependency) -> tuple[kaldifst.StdVectorFst, list[list[int]]]:
    """Return ``CLG = C o LG`` for the tree's context width and central position, arc-sorted by
    input label, and its ilabel table (the phone window of each input label, what H is built from)."""
    N, P = ctx_dep.context_width, ctx_dep.central_position
    CLG, ilabel_info = kaldifst.compose_context(disambig_syms=list(disambig_phones), context_width=N, central_position=P, ifst=LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    return CLG, [list(window) for window in ilabel_info]


def make_ha(
    ilabel_info: Sequence[Sequence[int]], ctx_dep: khg.ContextDependency, trans_model: khg.TransitionModel, transition_scale: float = GraphScales.transition
) -> tuple[kaldifst.StdVectorFst, list[int]]:
    """Return ``Ha``, the HMM transducer without self-loops for CLG's ilabel table (arc-sorted by
    output label), and the transition-ids it made for the disambiguation symbols."""
    Ha, disambig_tids = khg.get_h_transducer(
        ilabel_info=[list(w) for w in ilabel_info], ctx_dep=ctx_dep, trans_model=trans_model,
        config=khg.HTransducerConfig(transition_scale=transition_scale),
    )
    kaldifst.arcsort(Ha, sort_type="olabel")
    return Ha, list(disambig_tids)


def compose_hclga(Ha: kaldifst.StdVectorFst, CLG: kaldifst.StdVectorFst, disambig_tids: Sequence[int]) -> tuple[kaldifst.StdVectorFst, int]:
    """Return ``HCLGa = min(rm_disambig(det(Ha o CLG)))`` and the number of disambiguation arcs
    replaced by epsilon. DataError when determinization fails or the graph is empty."""
    HCLGa = kaldifst.compose(Ha, CLG)
    _determinize(HCLGa, "H o C o L o G")
    removed = zero_input_labels(HCLGa, disambig_tids)
    kaldifst.minimize_encoded(HCLGa)
    return HCLGa, removed


def add_self_loops(HCLGa: kaldifst.StdVectorFst, trans_model: khg.TransitionModel, self_loop_scale: float = GraphScales.self_loop) -> kaldifst.StdVectorFst:
    """Return HCLG: ``HCLGa`` with the HMM self-loops added (reordered as Kaldi does), arc-sorted
    by input label."""
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True, trans_model=trans_model, ifst=HCLGa)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    return HCLG


def compile_hclg(
    L_disambig: kaldifst.StdVectorFst,
    G: kaldifst.StdVectorFst,
    disambig_phones: Sequence[int],
    ctx_dep: khg.ContextDependency,
    trans_model: khg.TransitionModel,
    scales: GraphScales = GraphScales(),
) -> tuple[kaldifst.StdVectorFst, GraphInfo]:
    """Build HCLG from a disambiguated lexicon, a grammar and an acoustic model's tree and
    transition model (any context width).

    ``disambig_phones`` are the ids of ``#0 .. #K`` in the phone table of L. Returns the graph
    (input labels transition-ids, output labels word ids, arc-sorted by input label) and its
    :class:`GraphInfo`. ``scales``: the transition and self-loop scales put on the HMM's
    probabilities (the acoustic scale plays no part in building). Raises DataError when a step
    produces an empty graph.
    """
    start = time.perf_counter()
    sizes: dict[str, dict[str, int]] = {}
    LG = compose_lg(L_disambig, G)
    sizes["LG"] = _size(LG)
    CLG, ilabel_info = compose_clg(LG, disambig_phones, ctx_dep)
    sizes["CLG"] = _size(CLG)
    Ha, disambig_tids = make_ha(ilabel_info, ctx_dep, trans_model, scales.transition)
    sizes["Ha"] = _size(Ha)
    HCLGa, removed = compose_hclga(Ha, CLG, disambig_tids)
    sizes["HCLGa"] = _size(HCLGa)
    HCLG = add_self_loops(HCLGa, trans_model, scales.self_loop)
    elapsed = time.perf_counter() - start
    info = GraphInfo(
        num_states=HCLG.num_states,
        num_arcs=num_arcs(HCLG),
        intermediate=sizes,
        seconds=round(elapsed, 3),
        settings={
            "context_width": ctx_dep.context_width,
            "central_position": ctx_dep.central_position,
            "num_pdfs": trans_model.num_pdfs,
            "num_transition_ids": trans_model.num_transition_ids,
            "transition_scale": scales.transition,
            "self_loop_scale": scales.self_loop,
            "disambig_arcs_removed": removed,
        },
    )
    logger.info("HCLG: %d states, %d arcs (LG %s, CLG %s) in %.1f s", info.num_states, info.num_arcs, sizes["LG"], sizes["CLG"], elapsed)
    return HCLG, info


def check_hclg(hclg: kaldifst.StdVectorFst, trans_model: khg.TransitionModel) -> None:
    """Raise DataError if ``hclg``'s input labels are not transition-ids of ``trans_model``
    (a graph built for another model, or one with disambiguation symbols left in)."""
    labels = input_labels(hclg) - {0}
    bad = sorted(i for i in labels if i > trans_model.num_transition_ids)
    if bad:
        raise DataError(
            f"HCLG has input labels {bad[:5]} beyond the model's {trans_model.num_transition_ids} transition-ids; "
            "rebuild the graph with this model (`asr-kd make-hclg`)"
        )


def make_hclg(
    lang: Lang,
    ctx_dep: khg.ContextDependency,
    trans_model: khg.TransitionModel,
    graph_dir: Path | str,
    scales: GraphScales = GraphScales(),
) -> GraphInfo:
    """Build HCLG for ``lang`` and the model, write ``graph_dir/HCLG.fst``, ``hclg.json`` (sizes,
    time, settings) and a copy of ``words.txt``; return the :class:`GraphInfo`."""
    graph_dir = Path(graph_dir)
    hclg, info = compile_hclg(
        lang.load_fst("L_disambig"),
        lang.load_fst("G"),
        lang.disambig_phone_ids,
        ctx_dep,
        trans_model,
        scales,
    )
    write_fst(hclg, graph_dir / HCLG_FILE)
    lang.words.to_file(graph_dir / "words.txt")
    write_text_atomic(graph_dir / INFO_FILE, info.to_json())
    return info


def load_hclg(graph_dir_or_file: Path | str, scales: GraphScales | None = None) -> kaldifst.StdVectorFst:
    """Read HCLG from a graph directory (``HCLG.fst`` inside) or an FST file. With ``scales`` (a
    decode config's :attr:`~asr_kd.config.DecodeConfig.graph_scales`), ConfigError when the graph's
    ``hclg.json`` says it was built with another transition or self-loop scale: those scales are
    baked into the graph when it is built, so a decode config asking for others would be silently
    ignored."""
    path = Path(graph_dir_or_file)
    if path.is_dir():
        path = path / HCLG_FILE
    if scales is not None:
        check_graph_scales(path.parent, scales)
    return read_fst(path, "decoding graph", "build it with `asr-kd make-hclg` (recipe stage 3)")


def check_graph_scales(graph_dir: Path | str, scales: GraphScales) -> None:
    """ConfigError when the HCLG in ``graph_dir`` was built (its ``hclg.json``) with another
    transition or self-loop scale than ``scales``; nothing to check without that file."""
    info = Path(graph_dir) / INFO_FILE
    try:
        settings = json.loads(info.read_text()).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return
    built = {"transition": settings.get("transition_scale"), "self_loop": settings.get("self_loop_scale")}
    wanted = {"transition": scales.transition, "self_loop": scales.self_loop}
    differ = [k for k in built if built[k] is not None and float(built[k]) != float(wanted[k])]
    if differ:
        said = ", ".join(f"{k.replace('_', '-')} scale {built[k]:g}" for k in differ)
        asked = ", ".join(f"decode.{k}_scale {wanted[k]:g}" for k in differ)
        raise ConfigError(f"{Path(graph_dir) / HCLG_FILE} was built with {said}, the decode config asks for {asked}; these scales are "
                          "applied when the graph is built (recipe stage 3, asr-kd make-hclg), not when decoding: use the graph's "
                          "values, or rebuild the graph with yours")


def is_deterministic_ish(hclg: kaldifst.StdVectorFst) -> bool:
    """Return True if no state of ``hclg`` has two arcs with the same non-epsilon input label.

    HCLGa is determinized before the self-loops are added; reordering the self-loops keeps
    every state's outgoing labels distinct, which is what makes the graph fast to decode.
    """
    return nondeterministic_states(hclg) == 0
