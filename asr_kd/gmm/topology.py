"""HMM topologies in Kaldi's conventions, written as the text ``HmmTopology.read`` accepts.

Non-silence phones: ``num_states`` emitting states left to right, each with a self-loop (0.75)
and a forward transition (0.25). Silence phones (Kaldi's silence topology): the first state may
jump to any of the next ``num_states - 2`` states, the middle states are fully connected among
themselves and to the last state, and the last state loops or exits. These are initial
probabilities; training re-estimates them. In both, pdf-class ``i`` is emitted by state ``i``.
"""

from __future__ import annotations

from typing import Sequence

from asr_kd.errors import ConfigError
from asr_kd.kaldi import khg


def _state(i: int, transitions: Sequence[tuple[int, float]]) -> str:
    arcs = " ".join(f"<Transition> {dst} {prob:.6g}" for dst, prob in transitions)
    return f"<State> {i} <PdfClass> {i} {arcs} </State>"


def left_to_right_entry(phones: Sequence[int], num_states: int = 3) -> str:
    """Return one ``<TopologyEntry>`` of a left-to-right HMM for ``phones``."""
    lines = [_state(i, [(i, 0.75), (i + 1, 0.25)]) for i in range(num_states)]
    return _entry(phones, lines, num_states)


def silence_entry(phones: Sequence[int], num_states: int = 5) -> str:
    """Return one ``<TopologyEntry>`` of Kaldi's silence HMM for ``phones``."""
    if num_states < 2:
        raise ConfigError(f"the silence topology needs >= 2 states, got {num_states}")
    last = num_states - 1
    if num_states == 2:
        lines = [_state(0, [(0, 0.75), (1, 0.25)]), _state(1, [(1, 0.75), (2, 0.25)])]
        return _entry(phones, lines, num_states)
    # State 0 -> states 0..last-1, equally likely (Kaldi's gen_topo convention).
    first = [(j, 1.0 / last) for j in range(last)]
    # Middle states -> any of 1..last, equally likely.
    middle = [(j, 1.0 / last) for j in range(1, num_states)]
    lines = [_state(0, first)] + [_state(i, middle) for i in range(1, last)]
    lines.append(_state(last, [(last, 0.75), (num_states, 0.25)]))
    return _entry(phones, lines, num_states)


def _entry(phones: Sequence[int], state_lines: list[str], num_states: int) -> str:
    if not phones:
        raise ConfigError("a topology entry needs at least one phone")
    head = "<TopologyEntry>\n<ForPhones>\n" + " ".join(str(p) for p in phones) + "\n</ForPhones>\n"
    return head + "\n".join(state_lines) + f"\n<State> {num_states} </State>\n</TopologyEntry>\n"


def topology_text(nonsilence_phones: Sequence[int], silence_phones: Sequence[int], num_nonsil_states: int = 3, num_sil_states: int = 5) -> str:
    """Return the Kaldi topology text for these phone ids (ids > 0, each listed once)."""
    phones = list(nonsilence_phones) + list(silence_phones)
    if any(p <= 0 for p in phones) or len(set(phones)) != len(phones):
        raise ConfigError(f"topology phone ids must be positive and distinct, got {phones}")
    entries = [left_to_right_entry(sorted(nonsilence_phones), num_nonsil_states)] if nonsilence_phones else []
    if silence_phones:
        entries.append(silence_entry(sorted(silence_phones), num_sil_states))
    return "<Topology>\n" + "".join(entries) + "</Topology>\n"


def make_topology(text: str) -> khg.HmmTopology:
    """Return the ``HmmTopology`` parsed from Kaldi topology text."""
    topo = khg.HmmTopology()
    topo.read(text)
    return topo


def pdf_class_to_hmm_state(topo: khg.HmmTopology, phone: int) -> dict[int, int]:
    """Return {pdf-class: HMM state} for ``phone``; raises if a pdf-class is on two states.

    Our topologies emit pdf-class i from state i (forward and self-loop alike), which is what
    alignment conversion and tree statistics rely on.
    """
    out: dict[int, int] = {}
    for i, st in enumerate(topo.topology_for_phone(phone)):
        if st.forward_pdf_class < 0:
            continue  # the final, non-emitting state
        if st.forward_pdf_class != st.self_loop_pdf_class or st.forward_pdf_class in out:
            raise ConfigError(f"phone {phone}: topology must give each emitting state its own pdf-class")
        out[st.forward_pdf_class] = i
    return out
