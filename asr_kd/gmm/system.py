"""A trained GMM-HMM system and its file format: arrays and JSON in one ``.npz``, no pickle.

Users download and share models, so reading one must never run code. The file holds only what
numpy reads with ``allow_pickle=False``:

* ``meta``: UTF-8 JSON (as uint8) with the format name and version, the HMM topology text and
  the decision tree (:meth:`Tree.to_plain`);
* ``tm_log_probs``, ``tm_non_self_loop_log_probs``: the trained transition probabilities;
* ``am_gauss_per_pdf``, ``am_weights``, ``am_inv_vars``, ``am_means_invvars``: every pdf's
  Gaussians, stacked in pdf order, in the representation Kaldi's DiagGmm keeps (so a round trip
  gives bit-identical log-likelihoods).

Loading rebuilds the transition model from the tree and topology with Kaldi's own constructor
(which checks that they agree) and only then puts the trained values in, after checking every
array's shape: malformed input never reaches Kaldi's unchecked state setters.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from asr_kd.errors import ConfigError, DataError
from asr_kd.gmm.topology import make_topology
from asr_kd.gmm.tree import Tree
from asr_kd.kaldi import khg
from asr_kd.utils import atomic_path

FORMAT = "asr-kd-gmm-system"
FORMAT_VERSION = 1
_ARRAYS = ("meta", "tm_log_probs", "tm_non_self_loop_log_probs", "am_gauss_per_pdf", "am_weights", "am_inv_vars", "am_means_invvars")


@dataclasses.dataclass
class GmmSystem:
    """A trained GMM-HMM: topology, tree (ours and Kaldi's), transition model and GMMs."""

    topology_text: str
    tree: Tree
    tm: khg.TransitionModel
    am: khg.AmDiagGmm

    @property
    def topo(self) -> khg.HmmTopology:
        """The HMM topology (parsed from ``topology_text``)."""
        return make_topology(self.topology_text)

    @property
    def ctx_dep(self) -> khg.ContextDependency:
        """The tree as Kaldi's ``ContextDependency``."""
        return self.tree.to_context_dependency()

    @property
    def num_pdfs(self) -> int:
        """The number of pdfs (senones)."""
        return self.am.num_pdfs

    def save(self, path: Path | str) -> None:
        """Write the system to ``path`` (an ``.npz`` of arrays and JSON) atomically."""
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "topology": self.topology_text, "tree": self.tree.to_plain()}
        tm_state = self.tm.__getstate__()
        am_state = self.am.__getstate__()  # (weights, inv_vars, means_invvars) per pdf
        weights, inv_vars, means_invvars = am_state[0::3], am_state[1::3], am_state[2::3]
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "tm_log_probs": np.asarray(tm_state[6], dtype=np.float64),
            "tm_non_self_loop_log_probs": np.asarray(tm_state[7], dtype=np.float64),
            "am_gauss_per_pdf": np.array([len(w) for w in weights], dtype=np.int64),
            "am_weights": np.concatenate(weights).astype(np.float32),
            "am_inv_vars": np.concatenate(inv_vars).astype(np.float32),
            "am_means_invvars": np.concatenate(means_invvars).astype(np.float32),
        }
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())

    @staticmethod
    def load(path: Path | str) -> "GmmSystem":
        """Return the system written to ``path`` by :meth:`save`; a missing, foreign or malformed
        file raises a one-line :class:`DataError` (nothing in it is ever executed)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"GMM system {path} does not exist; run GMM training (recipe stage 3) first")
        arrays = _read_arrays(path)
        try:
            return _system_from_arrays(arrays)
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise DataError(f"GMM system {path} is malformed ({reason}); retrain it (recipe stage 3) or use a file written by asr-kd") from None


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Return the named arrays of a system file (no pickled object is ever read)."""
    fix = "use a GMM system (final.mdl) written by this version of asr-kd (older versions wrote pickles, which are not loaded) or retrain with recipe stage 3"
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in _ARRAYS if name not in npz.files]
            if missing:
                raise DataError(f"GMM system {path} lacks {missing}; {fix}")
            return {name: npz[name] for name in _ARRAYS}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        # numpy refuses object arrays inside an .npz ("Object arrays ...") and reads any other
        # file that is no .npz/.npy as a pickle, which allow_pickle=False refuses before unpickling.
        kind = "holds pickled objects, which are never loaded" if "Object arrays" in str(err) else "is not a GMM system file (an .npz of arrays; pickles are never loaded)"
        raise DataError(f"GMM system {path} {kind}; {fix}") from None


def _system_from_arrays(arrays: dict[str, np.ndarray]) -> GmmSystem:
    meta: dict[str, Any] = json.loads(arrays["meta"].astype(np.uint8).tobytes().decode("utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}")
    topology_text = str(meta["topology"])
    tree = Tree.from_plain(meta["tree"])
    # Kaldi's constructor checks that the tree and the topology agree and fixes the transition
    # ids; only the trained probabilities come from the file, after their lengths are checked.
    built = khg.TransitionModel(tree.to_context_dependency(), make_topology(topology_text)).__getstate__()
    state = list(built)
    for index, name in ((6, "tm_log_probs"), (7, "tm_non_self_loop_log_probs")):
        values = np.asarray(arrays[name], dtype=np.float64)
        if values.shape != (len(built[index]),) or not np.all(np.isfinite(values) | (values == -np.inf)):
            raise ValueError(f"{name} has shape {values.shape}, expected ({len(built[index])},) finite values")
        state[index] = values.tolist()
    tm = khg.TransitionModel.__new__(khg.TransitionModel)
    tm.__setstate__(tuple(state))
    am = khg.AmDiagGmm.__new__(khg.AmDiagGmm)
    am.__setstate__(_gaussians(arrays, tree.num_pdfs))
    return GmmSystem(topology_text, tree, tm, am)


def _gaussians(arrays: dict[str, np.ndarray], num_pdfs: int) -> tuple[np.ndarray, ...]:
    """Return AmDiagGmm's state (weights, inv_vars, means_invvars per pdf) after checking shapes."""
    counts = np.asarray(arrays["am_gauss_per_pdf"])
    weights, inv_vars, means_invvars = (np.ascontiguousarray(arrays[k], dtype=np.float32) for k in ("am_weights", "am_inv_vars", "am_means_invvars"))
    total = int(counts.sum()) if counts.ndim == 1 else -1
    if counts.shape != (num_pdfs,) or np.any(counts < 1):
        raise ValueError(f"am_gauss_per_pdf has shape {counts.shape}, expected ({num_pdfs},) positive counts (one per tree leaf)")
    if weights.shape != (total,) or inv_vars.ndim != 2 or inv_vars.shape[0] != total or means_invvars.shape != inv_vars.shape or inv_vars.shape[1] < 1:
        raise ValueError(f"Gaussian arrays have shapes {weights.shape}, {inv_vars.shape}, {means_invvars.shape}, expected ({total},) and two ({total}, dim)")
    if not (np.all(np.isfinite(inv_vars)) and np.all(inv_vars > 0) and np.all(np.isfinite(means_invvars)) and np.all(weights > 0)):
        raise ValueError("Gaussian weights and inverse variances must be positive and every value finite")
    state: list[np.ndarray] = []
    for start, end in zip(np.cumsum(counts) - counts, np.cumsum(counts)):
        state += [weights[start:end].copy(), inv_vars[start:end].copy(), means_invvars[start:end].copy()]
    return tuple(state)
