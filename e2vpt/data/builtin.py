"""Datasets that need no download: sklearn digits, Debian's Fashion-MNIST, the synthetic tasks.

They exist so that the CLI, the app and the tests can train something real on a laptop CPU within
minutes. Each is materialised once per process as uint8 tensors at the requested size (see
`MemoryDataset`) and cached, so a second `load_splits` call costs nothing. All use VTAB-1k-style
splits (800 train / 200 val) drawn with the fixed `DATA_SEED`, independent of the run's seed.
Built-in tasks are never augmented: the structured ones encode their label in position and
orientation, which crops and flips would destroy.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from e2vpt.data import synthetic
from e2vpt.data.common import (DATA_SEED, N_TRAIN, N_VAL, DatasetSplits, MemoryDataset, permutation,
                               resize_to_uint8)
from e2vpt.errors import DataError

BUILTIN_DESCRIPTIONS = {
    "digits": "scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); no download",
    "fashion-mnist": "Fashion-MNIST clothing (10 classes) from Debian's dataset-fashion-mnist or a torchvision copy",
    **synthetic.SYNTHETIC_TASKS,
}

# Where Debian's `dataset-fashion-mnist` package installs the gzipped IDX files.
FASHION_MNIST_SYSTEM_DIRS = ["/usr/share/datasets/fashion-mnist"]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_TEST_SIZE = 2000  # a fixed subset of the official 10k test set: quick to score on CPU
_FASHION_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                  "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
SYNTHETIC_TEST_SIZE = 1000


@functools.lru_cache(maxsize=6)  # all five built-ins at one size; about 1 GB at 224x224
def _materialise(name: str, img_size: int, root: str | None, download: bool):
    """uint8 tensors per split, class names and source sentence; cached per process.

    Normalisation is applied per item by `MemoryDataset`, so mean/std are not part of the key.
    """
    if name == "digits":
        return _digits(img_size)
    if name == "fashion-mnist":
        return _fashion_mnist(img_size, root, download)
    return _synthetic(name, img_size)


def clear_cache() -> None:
    """Drop the cached tensors (the app calls this to free memory)."""
    _materialise.cache_clear()


def load_builtin(name: str, root: str | None, img_size: int, mean, std, download: bool) -> DatasetSplits:
    """Build `DatasetSplits` for a built-in task from the cached tensors."""
    root_key = str(Path(root).expanduser().resolve()) if (root and name == "fashion-mnist") else None
    arrays, class_names, source = _materialise(name, img_size, root_key, bool(download and root_key))
    train, val, test = (MemoryDataset(x, y, mean, std) for x, y in arrays)
    return DatasetSplits(train=train, val=val, test=test, num_classes=len(class_names),
                         class_names=list(class_names), source=source)


def _to_uint8(gray01: np.ndarray, img_size: int) -> torch.Tensor:
    """(N, h, w) floats in [0, 1] -> (N, 1, img_size, img_size) uint8; replicated to RGB on access."""
    return resize_to_uint8(torch.from_numpy(gray01.astype(np.float32)).unsqueeze(1), img_size)


def _digits(img_size: int):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images / 16.0  # (1797, 8, 8), values 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = permutation(len(images), DATA_SEED)
    parts = (order[:N_TRAIN], order[N_TRAIN:N_TRAIN + N_VAL], order[N_TRAIN + N_VAL:])
    arrays = tuple((_to_uint8(images[idx], img_size), labels[idx]) for idx in parts)
    source = (f"scikit-learn's bundled UCI handwritten digits (1797 8x8 images, no download), split "
              f"{len(parts[0])} train / {len(parts[1])} val / {len(parts[2])} test by a fixed permutation "
              f"(seed {DATA_SEED}), upsampled to {img_size}x{img_size} (bilinear) and replicated to 3 channels.")
    return arrays, [str(i) for i in range(10)], source


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): the format MNIST-like datasets ship in."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = int.from_bytes(data[:4], "big")
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):  # 0x08 = unsigned byte
            raise ValueError(f"bad IDX magic number {magic:#x}")
        shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read Fashion-MNIST file {path}: {exc}; reinstall or re-download it") from None


def _find_fashion_files(root: str | None) -> dict[str, Path] | None:
    """The four IDX files from the first directory that has them all (gz or plain)."""
    dirs = []
    if root:
        dirs += [Path(root), Path(root) / "FashionMNIST" / "raw", Path(root) / "fashion-mnist"]
    dirs += [Path(d) for d in FASHION_MNIST_SYSTEM_DIRS]
    for d in dirs:
        found = {}
        for key, stem in _FASHION_FILES.items():
            for candidate in (d / f"{stem}.gz", d / stem):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(_FASHION_FILES):
            return found
    return None


def fashion_mnist_available(root: str | None = None) -> bool:
    """Whether Fashion-MNIST can be loaded without a download (tests and the app's picker ask)."""
    return _find_fashion_files(root) is not None


def _fashion_mnist(img_size: int, root: str | None, download: bool):
    files = _find_fashion_files(root)
    if files is None and download:
        from torchvision.datasets import FashionMNIST

        try:
            for train in (True, False):
                FashionMNIST(root, train=train, download=True)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"could not download Fashion-MNIST into {root}: {exc}; check the connection "
                            "or install Debian's dataset-fashion-mnist") from None
        files = _find_fashion_files(root)
    if files is None:
        searched = ", ".join([*([root] if root else []), *FASHION_MNIST_SYSTEM_DIRS])
        raise DataError(f"Fashion-MNIST not found under {searched}; install Debian's dataset-fashion-mnist "
                        "or run with --download --data-root DIR")
    arrays_np = {key: _read_idx(path) for key, path in files.items()}
    train_order = permutation(len(arrays_np["train_images"]), DATA_SEED)
    test_order = permutation(len(arrays_np["test_images"]), DATA_SEED)[:FASHION_MNIST_TEST_SIZE]
    parts = (("train", train_order[:N_TRAIN]), ("train", train_order[N_TRAIN:N_TRAIN + N_VAL]),
             ("test", np.sort(test_order)))
    arrays = tuple(
        (_to_uint8(arrays_np[f"{split}_images"][idx] / 255.0, img_size),
         torch.from_numpy(arrays_np[f"{split}_labels"][idx].astype(np.int64)))
        for split, idx in parts
    )
    where = os.path.dirname(files["train_images"])
    source = (f"Fashion-MNIST from {where}: {N_TRAIN} train / {N_VAL} val drawn from the official 60k training "
              f"set and a fixed {FASHION_MNIST_TEST_SIZE}-image subset of the official 10k test set "
              f"(seed {DATA_SEED}), 28x28 grayscale resized to {img_size}x{img_size} (bilinear) and "
              "replicated to 3 channels.")
    return arrays, FASHION_MNIST_CLASSES, source


def _synthetic(name: str, img_size: int):
    total = N_TRAIN + N_VAL + SYNTHETIC_TEST_SIZE
    rendered = synthetic.generate(name, total, DATA_SEED)
    images = torch.from_numpy(rendered.images).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, S, S)
    images = resize_to_uint8(images, img_size)
    labels = torch.from_numpy(rendered.labels)
    cuts = ((0, N_TRAIN), (N_TRAIN, N_TRAIN + N_VAL), (N_TRAIN + N_VAL, total))
    arrays = tuple((images[a:b].clone(), labels[a:b].clone()) for a, b in cuts)
    size = synthetic.RENDER_SIZE[name]
    source = (f"Procedurally generated {name} ({synthetic.SYNTHETIC_TASKS[name]}), rendered at {size}x{size} "
              f"with numpy from generation seed {DATA_SEED}: {N_TRAIN} train / {N_VAL} val / "
              f"{SYNTHETIC_TEST_SIZE} test, resized to {img_size}x{img_size} (bilinear).")
    return arrays, synthetic.class_names(name), source
