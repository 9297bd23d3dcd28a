"""Phonetic decision trees built in Python and handed to Kaldi as a ``ContextDependency``.

A :class:`Tree` maps a context window of phones (``context_width`` phones, the central one at
``central_position``; phone 0 stands for "no phone" beyond an utterance's edges) plus a
pdf-class to a pdf (senone). There is one root per (central phone, pdf-class); below it binary
questions "is the phone at position k in this set?" lead to leaves, each a pdf.

:func:`build_tree` grows the tree greedily from per-context single-Gaussian statistics: it
always splits the leaf whose best question gains the most log-likelihood, until the target
number of leaves is reached, no split keeps both sides above the minimum count, or the best
gain falls below a threshold.

:meth:`Tree.to_kaldi_bytes` writes Kaldi's binary ``ContextDependency`` serialisation (the
format of Kaldi's ``tree`` file: a ``TE`` table on the central phone, a ``TE`` table on the
pdf-class (key -1), then ``SE`` splits and ``CE`` leaves); :meth:`Tree.to_context_dependency`
loads it into ``kaldi_hmm_gmm`` so that Kaldi's TransitionModel, training-graph compiler and
H transducer use our tree.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import struct
from typing import Mapping, Sequence, Union

import numpy as np

from asr_kd.errors import ConfigError
from asr_kd.kaldi import khg

logger = logging.getLogger(__name__)

PDF_CLASS_KEY = -1  # Kaldi's EventMap key for the pdf-class


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A tree leaf: one pdf (senone)."""

    pdf: int


@dataclasses.dataclass(frozen=True)
class Split:
    """An internal node: "is the phone at window position ``key`` in ``yes_phones``?"."""

    key: int
    yes_phones: frozenset[int]
    yes: "Node"
    no: "Node"


Node = Union[Leaf, Split]


@dataclasses.dataclass(frozen=True)
class Tree:
    """A context-dependency tree: one subtree per (central phone, pdf-class) root."""

    context_width: int
    central_position: int
    num_pdf_classes: Mapping[int, int]  # phone -> number of pdf-classes in its HMM
    roots: Mapping[tuple[int, int], Node]  # (phone, pdf-class) -> subtree

    def __post_init__(self) -> None:
        if not 0 <= self.central_position < self.context_width:
            raise ConfigError(f"central position {self.central_position} outside a window of {self.context_width}")
        expected = {(p, c) for p, n in self.num_pdf_classes.items() for c in range(n)}
        if set(self.roots) != expected:
            raise ValueError("tree roots must be exactly the (phone, pdf-class) pairs of the topology")
        pdfs = sorted(leaf.pdf for root in self.roots.values() for leaf in _leaves(root))
        if pdfs != list(range(len(pdfs))):
            raise ValueError("tree leaves must be numbered 0..num_pdfs-1, each once")

    @property
    def num_pdfs(self) -> int:
        """The number of leaves (pdfs, senones)."""
        return sum(len(_leaves(root)) for root in self.roots.values())

    def pdf(self, window: Sequence[int], pdf_class: int) -> int:
        """Return the pdf for a phone context window and a pdf-class."""
        node = self.roots[(int(window[self.central_position]), int(pdf_class))]
        while isinstance(node, Split):
            node = node.yes if window[node.key] in node.yes_phones else node.no
        return node.pdf

    def pdf_info(self) -> list[tuple[int, int]]:
        """Return, for each pdf, the (phone, pdf-class) root that owns it."""
        info: list[tuple[int, int]] = [(-1, -1)] * self.num_pdfs
        for root_key, root in self.roots.items():
            for leaf in _leaves(root):
                info[leaf.pdf] = root_key
        return info

    def to_kaldi_bytes(self) -> bytes:
        """Return Kaldi's binary ``ContextDependency`` serialisation, with the ``\\0B`` header."""
        max_phone = max(self.num_pdf_classes)
        table: list[bytes | None] = [None] * (max_phone + 1)
        for phone, n in self.num_pdf_classes.items():
            table[phone] = _table(PDF_CLASS_KEY, [_node_bytes(self.roots[(phone, c)]) for c in range(n)])
        return (
            b"\0B"
            + _token("ContextDependency")
            + _int32(self.context_width)
            + _int32(self.central_position)
            + _token("ToPdf")
            + _table(self.central_position, table)
            + _token("EndContextDependency")
        )

    def to_context_dependency(self) -> khg.ContextDependency:
        """Return this tree as a ``kaldi_hmm_gmm.ContextDependency``.

        The binding has no ``read()``, but its pickle state is the binary serialisation after the
        two-byte header, as signed bytes; ``__setstate__`` runs Kaldi's reader on it.
        """
        data = self.to_kaldi_bytes()
        ctx_dep = khg.ContextDependency.__new__(khg.ContextDependency)
        ctx_dep.__setstate__((np.frombuffer(data[2:], dtype=np.int8).tolist(),))
        return ctx_dep


    def to_plain(self) -> dict:
        """Return the tree as JSON-ready plain values: its nodes in one flat list (children after
        their parent, so no recursion depth limits a deep tree) and the roots as indices into it."""
        nodes: list[dict] = []
        roots: list[list[int]] = []
        for (phone, pdf_class), root in sorted(self.roots.items()):
            roots.append([phone, pdf_class, len(nodes)])
            stack: list[tuple[Node, int, str]] = [(root, -1, "")]
            while stack:
                node, parent, side = stack.pop()
                if parent >= 0:
                    nodes[parent][side] = len(nodes)
                if isinstance(node, Leaf):
                    nodes.append({"pdf": node.pdf})
                else:
                    nodes.append({"key": node.key, "yes_phones": sorted(node.yes_phones)})
                    stack.extend(((node.no, len(nodes) - 1, "no"), (node.yes, len(nodes) - 1, "yes")))
        return {
            "context_width": self.context_width,
            "central_position": self.central_position,
            "num_pdf_classes": [[p, n] for p, n in sorted(self.num_pdf_classes.items())],
            "roots": roots,
            "nodes": nodes,
        }

    @staticmethod
    def from_plain(data: Mapping) -> "Tree":
        """Return the tree written by :meth:`to_plain`; malformed data raises ValueError (or
        KeyError/TypeError), which the caller turns into a one-line error naming its file."""
        raw = list(data["nodes"])
        built: list[Node | None] = [None] * len(raw)
        for i in range(len(raw) - 1, -1, -1):  # children come after their parent
            n = raw[i]
            if "pdf" in n:
                built[i] = Leaf(int(n["pdf"]))
                continue
            yes, no, key = int(n["yes"]), int(n["no"]), int(n["key"])
            if not 0 <= key < int(data["context_width"]):
                raise ValueError(f"tree node {i} asks about window position {key}, outside a window of {data['context_width']}")
            if not (i < yes < len(raw) and i < no < len(raw)) or built[yes] is None or built[no] is None:
                raise ValueError(f"tree node {i} points to children {yes}, {no} that do not follow it")
            built[i] = Split(key, frozenset(int(p) for p in n["yes_phones"]), built[yes], built[no])
        roots = {(int(p), int(c)): built[int(i)] for p, c, i in data["roots"]}
        return Tree(int(data["context_width"]), int(data["central_position"]), {int(p): int(n) for p, n in data["num_pdf_classes"]}, roots)


def _leaves(node: Node) -> list[Leaf]:
    out: list[Leaf] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Leaf):
            out.append(n)
        else:
            stack.extend((n.no, n.yes))
    return out


# Kaldi binary I/O: tokens are followed by a space; integers are a size byte (negative for
# unsigned types) and little-endian bytes; integer vectors are a size byte, a count, the values.
def _token(tok: str) -> bytes:
    return tok.encode() + b" "


def _int32(v: int) -> bytes:
    return b"\x04" + struct.pack("<i", v)


def _uint32(v: int) -> bytes:
    return b"\xfc" + struct.pack("<I", v)


def _int_vector(values: Sequence[int]) -> bytes:
    return b"\x04" + struct.pack("<i", len(values)) + struct.pack(f"<{len(values)}i", *values)


def _table(key: int, entries: Sequence[bytes | None]) -> bytes:
    body = b"".join(e if e is not None else _token("NULL") for e in entries)
    return _token("TE") + _int32(key) + _uint32(len(entries)) + _token("(") + body + _token(")")


def _node_bytes(node: Node) -> bytes:
    if isinstance(node, Leaf):
        return _token("CE") + _int32(node.pdf)
    return (
        _token("SE")
        + _int32(node.key)
        + _int_vector(sorted(node.yes_phones))
        + _token("{")
        + _node_bytes(node.yes)
        + _node_bytes(node.no)
        + _token("}")
    )


def monophone_tree(num_pdf_classes: Mapping[int, int]) -> Tree:
    """Return the context-independent tree (window of 1): pdfs numbered by phone, then pdf-class."""
    roots: dict[tuple[int, int], Node] = {}
    pdf = 0
    for phone in sorted(num_pdf_classes):
        for c in range(num_pdf_classes[phone]):
            roots[(phone, c)] = Leaf(pdf)
            pdf += 1
    return Tree(context_width=1, central_position=0, num_pdf_classes=dict(num_pdf_classes), roots=roots)


# --------------------------------------------------------------------------------------------
# Statistics and likelihoods
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TreeStats:
    """Single-Gaussian statistics per (context window, pdf-class) seen in the alignments.

    Row ``i`` holds ``[count, sum x (dim), sum x^2 (dim)]`` (float64) for the frames whose
    window was ``windows[i]`` and whose pdf-class was ``pdf_classes[i]``.
    """

    context_width: int
    central_position: int
    windows: np.ndarray  # (M, context_width) int32
    pdf_classes: np.ndarray  # (M,) int32
    stats: np.ndarray  # (M, 1 + 2 dim) float64

    @property
    def dim(self) -> int:
        """The feature dimension."""
        return (self.stats.shape[1] - 1) // 2

    @staticmethod
    def from_dict(context_width: int, central_position: int, table: Mapping[tuple[tuple[int, ...], int], np.ndarray], dim: int) -> "TreeStats":
        """Return TreeStats from {(window, pdf-class): stats row}."""
        keys = sorted(table)
        windows = np.array([k[0] for k in keys], dtype=np.int32).reshape(len(keys), context_width)
        classes = np.array([k[1] for k in keys], dtype=np.int32)
        stats = np.stack([table[k] for k in keys]) if keys else np.zeros((0, 1 + 2 * dim))
        return TreeStats(context_width, central_position, windows, classes, stats.astype(np.float64))


def gaussian_loglike(stats: np.ndarray, var_floor: float) -> np.ndarray:
    """Return the log-likelihood of each row's data under its own ML diagonal Gaussian.

    ``stats`` rows are ``[count, sum x, sum x^2]``; the value is
    ``-count/2 * (dim log 2 pi + sum log var + dim)`` with variances floored; 0 for empty rows.
    """
    stats = np.atleast_2d(stats)
    dim = (stats.shape[1] - 1) // 2
    n = stats[:, 0]
    safe = np.maximum(n, 1e-10)[:, None]
    mean = stats[:, 1 : 1 + dim] / safe
    var = np.maximum(stats[:, 1 + dim :] / safe - mean**2, var_floor)
    out = -0.5 * n * (dim * math.log(2 * math.pi) + np.log(var).sum(axis=1) + dim)
    return np.where(n > 0, out, 0.0)


def leaf_statistics(tree: Tree, stats: TreeStats) -> np.ndarray:
    """Return the summed statistics of each pdf: (num_pdfs, 1 + 2 dim)."""
    out = np.zeros((tree.num_pdfs, stats.stats.shape[1]))
    for window, c, row in zip(stats.windows, stats.pdf_classes, stats.stats):
        out[tree.pdf(window, c)] += row
    return out


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Candidate:
    rows: np.ndarray  # indices into TreeStats rows
    gain: float = -math.inf
    key: int = -1
    question: int = -1


def build_tree(
    stats: TreeStats,
    questions: Sequence[frozenset[int]],
    num_pdf_classes: Mapping[int, int],
    num_leaves: int,
    min_count: float,
    min_gain: float = 0.0,
    var_floor: float = 0.01,
    no_split_phones: Sequence[int] = (),
) -> Tree:
    """Return a tree with at most ``num_leaves`` leaves grown greedily from ``stats``.

    ``questions`` are phone sets (phone 0 allowed, meaning the utterance edge) asked about every
    non-central window position; each split keeps ``min_count`` frames on both sides and gains
    more than ``min_gain`` log-likelihood. Roots without statistics stay single leaves (logged).
    """
    roots = sorted((p, c) for p, n in num_pdf_classes.items() for c in range(n))
    if num_leaves < len(roots):
        raise ConfigError(f"gmm.num_leaves={num_leaves} is below the number of (phone, pdf-class) roots ({len(roots)}); raise it")
    num_ids = max(max(num_pdf_classes), int(stats.windows.max(initial=0))) + 1
    qmat = np.zeros((len(questions), num_ids))
    for i, q in enumerate(questions):
        qmat[i, [p for p in q if p < num_ids]] = 1.0
    qbool = qmat.astype(bool)
    keys = [k for k in range(stats.context_width) if k != stats.central_position]
    centre = stats.windows[:, stats.central_position] if len(stats.pdf_classes) else np.zeros(0, int)
    frozen = set(no_split_phones)

    def best_split(cand: _Candidate, phone: int) -> _Candidate:
        if phone in frozen or not len(questions) or not keys:
            return cand
        rows = stats.stats[cand.rows]
        total = rows.sum(axis=0)
        if total[0] < 2 * min_count:
            return cand
        base = gaussian_loglike(total, var_floor)[0]
        for key in keys:
            per_phone = np.zeros((num_ids, rows.shape[1]))
            np.add.at(per_phone, stats.windows[cand.rows, key], rows)
            yes = qmat @ per_phone
            no = total[None, :] - yes
            gains = gaussian_loglike(yes, var_floor) + gaussian_loglike(no, var_floor) - base
            gains[(yes[:, 0] < min_count) | (no[:, 0] < min_count)] = -math.inf
            q = int(np.argmax(gains))
            if gains[q] > cand.gain:
                cand.gain, cand.key, cand.question = float(gains[q]), key, q
        return cand

    # Grow: every candidate is a leaf; the heap orders the splittable ones by gain.
    cands: list[_Candidate] = []
    owner: list[tuple[int, int]] = []
    children: dict[int, tuple[int, int, int, int]] = {}  # cand -> (key, question, yes, no)
    root_cand: dict[tuple[int, int], int] = {}
    heap: list[tuple[float, int]] = []
    unseen = []
    for root in roots:
        rows = np.nonzero((centre == root[0]) & (stats.pdf_classes == root[1]))[0]
        if len(rows) == 0:
            unseen.append(root)
        root_cand[root] = len(cands)
        cands.append(best_split(_Candidate(rows), root[0]))
        owner.append(root)
        if cands[-1].gain > min_gain:
            heapq.heappush(heap, (-cands[-1].gain, len(cands) - 1))
    if unseen:
        logger.warning("%d of %d (phone, pdf-class) roots have no statistics and get one untrained leaf each: %s", len(unseen), len(roots), unseen[:20])
    num = len(roots)
    total_gain = 0.0
    while heap and num < num_leaves:
        neg_gain, i = heapq.heappop(heap)
        cand = cands[i]
        mask = qbool[cand.question][stats.windows[cand.rows, cand.key]]
        kids = []
        for rows in (cand.rows[mask], cand.rows[~mask]):
            kids.append(len(cands))
            cands.append(best_split(_Candidate(rows), owner[i][0]))
            owner.append(owner[i])
            if cands[-1].gain > min_gain:
                heapq.heappush(heap, (-cands[-1].gain, len(cands) - 1))
        children[i] = (cand.key, cand.question, kids[0], kids[1])
        total_gain += -neg_gain
        num += 1
    logger.info("tree: %d leaves from %d roots; log-likelihood gain %.1f over %.0f frames", num, len(roots), total_gain, stats.stats[:, 0].sum())

    counter = iter(range(num))

    def make(i: int) -> Node:
        if i not in children:
            return Leaf(next(counter))
        key, q, yes, no = children[i]
        yes_node = make(yes)  # number the yes side first, depth first
        return Split(key, frozenset(questions[q]), yes_node, make(no))

    return Tree(stats.context_width, stats.central_position, dict(num_pdf_classes), {r: make(root_cand[r]) for r in roots})
