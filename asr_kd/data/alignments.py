"""Frame-level integer labels (senone alignments) attached to lhotse cuts.

The contract between stage 3 (GMM-HMM alignments), the DNN training of stages 4 and 6, and any
later stage that needs a per-frame array on a cut:

- :func:`store_alignments` writes one integer array per cut and returns the cuts with a lhotse
  ``TemporalArray`` custom field (``cut.custom[name]``) pointing at it;
- :func:`load_alignment` reads it back (lazily: only when asked, one cut at a time).

Storage: one :mod:`asr_kd.data.array_archive` file per storage directory
(``<dir>/arrays.npa``, lhotse storage type ``npy_archive``) holding every cut's labels as its
exact ``.npy`` bytes. Labels must survive exactly, which rules out lilcom (lossy float
compression); ``.npy`` records are lossless and keep the integer dtype, one file instead of one
per cut spares network filesystems and inode quotas, no extra dependency is needed (HDF5 would
need h5py), and reads are safe in forked DataLoader workers and DDP ranks (``os.pread`` on
descriptors opened per process; a cached HDF5 handle inherited across ``fork`` is not).
Manifests written earlier with lhotse's ``NumpyFilesWriter`` (one ``.npy`` file per cut) still
load: lhotse picks the reader by each manifest's storage type.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from lhotse import CutSet
from lhotse.cut import Cut
from tqdm import tqdm

# Importing the archive module registers its lhotse storage type: every reader of these labels
# imports this module, so manifests that name ``npy_archive`` can always be loaded.
from asr_kd.config import SENONES_FIELD
from asr_kd.data.array_archive import ArchiveError, atomic_archive_dir
from asr_kd.errors import DataError
from asr_kd.utils import atomic_path

log = logging.getLogger(__name__)

LABEL_DTYPE = np.int32


def _check_length(cut: Cut, labels: np.ndarray, name: str) -> None:
    """Raise DataError unless ``labels`` has one entry per feature frame of ``cut``."""
    if cut.features is None:
        raise DataError(f"cut {cut.id} has no features; store {name} on the fbank cuts of stage 1 (cuts_<part>.jsonl.gz)")
    if labels.ndim != 1 or labels.shape[0] != cut.num_frames:
        raise DataError(
            f"cut {cut.id}: {name} has {labels.shape[0] if labels.ndim == 1 else labels.shape} labels but the cut has "
            f"{cut.num_frames} feature frames; realign with the same frame shift and edge convention as the features"
        )


def store_alignments(
    cuts: CutSet,
    alignments: Mapping[str, np.ndarray],
    storage_path: Path | str,
    name: str = SENONES_FIELD,
    frame_shift: float = 0.01,
) -> CutSet:
    """Write ``alignments[cut.id]`` (1-D integer arrays, one label per feature frame) for every
    cut into one archive, ``storage_path/arrays.npa``, and return a new CutSet whose cuts carry
    them as the custom field ``name``.

    Cuts without an entry in ``alignments`` are dropped, counted and logged (the aligner could
    not align them); a length mismatch or a non-integer array raises :class:`DataError`. The
    directory ``storage_path`` is written under a temporary name and renamed on success,
    replacing an older one (also one of per-cut ``.npy`` files); the manifests name the final
    path.
    """
    return store_alignment_chunks([(cuts, alignments)], storage_path, name, frame_shift)


def store_alignment_chunks(
    chunks: Iterable[tuple[Iterable[Cut], Mapping[str, np.ndarray]]],
    storage_path: Path | str,
    name: str = SENONES_FIELD,
    frame_shift: float = 0.01,
) -> CutSet:
    """:func:`store_alignments` for alignments that come a chunk of cuts at a time: ``chunks``
    yields ``(cuts, alignments)`` pairs (it may be a generator that computes each chunk when asked,
    so that only one chunk's alignments are in memory), all written into one archive in order.
    Returns every stored cut; the archive is the one :func:`store_alignments` writes for the
    concatenated cuts and alignments. :func:`write_alignment_chunks` writes the cuts to a manifest
    instead of returning them."""
    out: list[Cut] = []
    _store_chunks(chunks, storage_path, name, frame_shift, out.append)
    return CutSet.from_cuts(out)


def write_alignment_chunks(
    chunks: Iterable[tuple[Iterable[Cut], Mapping[str, np.ndarray]]],
    storage_path: Path | str,
    manifest_path: Path | str,
    name: str = SENONES_FIELD,
    frame_shift: float = 0.01,
) -> int:
    """:func:`store_alignment_chunks` that writes the stored cuts to the cut manifest
    ``manifest_path`` (atomically) a cut at a time as they are stored, so that no more than a
    chunk's Cuts are ever in memory (a part's would take about 5 KB each: bench/gmm_memory.py).
    The manifest holds what ``store_alignment_chunks(...).to_file(manifest_path)`` writes; returns
    the number of stored cuts."""
    stored = 0
    with atomic_path(manifest_path) as tmp, CutSet.open_writer(tmp) as writer:

        def write(cut: Cut) -> None:
            nonlocal stored
            writer.write(cut)
            stored += 1

        _store_chunks(chunks, storage_path, name, frame_shift, write)
    return stored


def _store_chunks(chunks: Iterable[tuple[Iterable[Cut], Mapping[str, np.ndarray]]], storage_path: Path | str, name: str, frame_shift: float,
                  stored: Callable[[Cut], None]) -> None:
    """Write the alignments of ``chunks`` into one archive and pass each stored cut (with its
    custom field ``name``) to ``stored``, in order."""
    missing: list[str] = []
    total = 0
    with atomic_archive_dir(storage_path) as writer:
        for cuts, alignments in chunks:
            for cut in tqdm(cuts, desc=f"store {name}", leave=False):
                total += 1
                labels = alignments.get(cut.id)
                if labels is None:
                    missing.append(cut.id)
                    continue
                labels = np.asarray(labels)
                if not np.issubdtype(labels.dtype, np.integer):
                    raise DataError(f"cut {cut.id}: {name} must be integers, got dtype {labels.dtype}; pass integer label ids")
                _check_length(cut, labels, name)
                if labels.size and (labels.min() < np.iinfo(LABEL_DTYPE).min or labels.max() > np.iinfo(LABEL_DTYPE).max):
                    raise DataError(f"cut {cut.id}: {name} values do not fit in int32; use label ids below 2**31")
                array = writer.store_array(cut.id, labels.astype(LABEL_DTYPE), frame_shift=frame_shift, temporal_dim=0, start=0.0)
                stored(cut.with_custom(name, array))
    if missing:
        log.warning("%s: %d of %d cuts have no alignment and were dropped (first: %s)", name, len(missing), total, missing[0])


def has_alignment(cut: Cut, name: str = SENONES_FIELD) -> bool:
    """Return whether ``cut`` carries the custom field ``name``."""
    return cut.custom is not None and name in cut.custom


def load_alignment(cut: Cut, name: str = SENONES_FIELD) -> np.ndarray:
    """Return the labels ``name`` of ``cut`` as a 1-D int64 array of ``cut.num_frames`` entries.

    Raises :class:`DataError` (one line naming the cut and the file) when the cut has no such
    field, its storage is missing, truncated or corrupt, or its length does not match the cut's
    features."""
    if not has_alignment(cut, name):
        raise DataError(f"cut {cut.id} has no {name!r} labels; attach them with store_alignments (stage 3 alignments)")
    try:
        labels = np.asarray(cut.load_custom(name))
    except ArchiveError as err:  # its message names the archive and the fix
        raise DataError(f"cut {cut.id}: cannot read its {name!r} labels: {err}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"cut {cut.id}: cannot read its {name!r} labels ({err}); rerun the stage that stored them") from None
    _check_length(cut, labels, name)
    return labels.astype(np.int64)
