"""What every data source shares: the `DatasetSplits` result, in-memory datasets, splits, transforms.

The split rules live here, once, so that every source (built-in, torchvision, folders) draws its
VTAB-1k-style 800/200 split the same way and a run's `source` sentence can name one protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

from e2vpt.errors import DataError

# The data never depend on the run's seed: every split permutation and every synthetic image is
# drawn from this fixed seed, so runs with different training seeds are compared on identical data
# (VTAB-1k ships fixed lists for the same reason).
DATA_SEED = 0
N_TRAIN = 800
N_VAL = 200
# Collections without an official test split keep this fraction of a fixed permutation as test
# (VTAB's own convention for EuroSAT/RESISC45-style sources).
TEST_FRACTION = 0.2


@dataclass
class DatasetSplits:
    """The three splits of one task plus what a run records about them.

    Attributes:
        train: Dataset yielding `(float32 tensor (3, H, W) normalised with mean/std, int label)`.
        val: Same, used for model selection.
        test: Same, reported once.
        num_classes: Number of classes; labels are `0 .. num_classes - 1`.
        class_names: One display name per class.
        source: One sentence: where the data came from and which split protocol was used.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]
    source: str


class MemoryDataset(Dataset):
    """Images held in memory as uint8 `(N, C, H, W)` (C = 1 or 3), normalised on access.

    uint8 rather than float32 because a built-in task at 224x224 would take about 1 GB as float;
    grayscale stays one channel and is replicated per item. `fetch` hands out whole uint8 batches
    for `pipeline.DeviceBatches`, which normalises them on the training device.
    """

    augment = False  # the built-in tasks' labels live in position and orientation: never augmented
    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float]):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from e2vpt.data.pipeline import normalise

        return normalise(self.images[index], self.mean, self.std), int(self.labels[index])

    def rows(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch as (all the uint8 images, the batch's rows among them, labels)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return self.images, indices, self.labels[indices]

    def fetch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of a batch, as they are stored."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return self.images[indices], self.labels[indices]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split at once: `(float32 (N, 3, H, W) normalised, int64 (N,))`."""
        from e2vpt.data.pipeline import normalise

        return normalise(self.images, self.mean, self.std), self.labels.clone()

    def joined(self, other: "MemoryDataset") -> "MemoryDataset":
        return MemoryDataset(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]),
                             self.mean.tolist(), self.std.tolist())


def with_val_in_train(splits: DatasetSplits) -> DatasetSplits:
    """The same splits with the val images added to train (VPT's final protocol: train800val200).

    Val images join train with train's treatment (its augmentation, if any). Val itself is kept,
    so curves still draw, but its accuracy is no longer held-out; `source` says so.
    """
    train, val = splits.train, splits.val
    joined = train.joined(val) if hasattr(train, "joined") else ConcatDataset([train, val])
    return dataclasses.replace(
        splits, train=joined,
        source=f"{splits.source} Trained on train + val ({len(splits.train)} + {len(splits.val)} images, VPT's final "
               "protocol): val accuracy is not held-out.")


def resize_to_uint8(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """Resize float images `(N, C, h, w)` in [0, 1] to `(N, C, size, size)` uint8.

    Bilinear with antialiasing, so downsampling a 64x64 render does not alias thin sprite edges.
    Works in chunks so a 224x224 float copy of the whole set never exists at once.
    """
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out


def permutation(n: int, seed: int = DATA_SEED) -> np.ndarray:
    """A fixed permutation of `range(n)` (numpy `default_rng(seed)`)."""
    return np.random.default_rng(seed).permutation(n)


def sample_indices(n: int, k: int, seed: int = DATA_SEED) -> np.ndarray:
    """The first `min(k, n)` entries of a fixed permutation: a split drawn from one official split."""
    return permutation(n, seed)[:k]


def _train_val_from(order: np.ndarray, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut an already permuted pool into train/val (the rule `split_train_val` documents)."""
    n = len(order)
    if n >= n_train + n_val:
        return order[:n_train], order[n_train:n_train + n_val]
    n_v = max(1, int(round(n * n_val / (n_train + n_val))))
    return order[:n - n_v], order[n - n_v:]


def split_train_val(n: int, what: str, n_train: int = N_TRAIN, n_val: int = N_VAL,
                    seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/val indices into a pool of `n` items, VTAB-1k style.

    With at least `n_train + n_val` items: the first 800 / next 200 of a fixed permutation. A smaller
    pool (a user's tiny folder) keeps 20% of it (at least one item) for val and the rest for train.
    """
    if n < 2:
        raise DataError(f"{what} has {n} image(s); at least 2 are needed to draw a train and a val split")
    return _train_val_from(permutation(n, seed), n_train, n_val)


def split_train_val_test(n: int, what: str, seed: int = DATA_SEED
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint train/val/test indices for a collection without an official split.

    The last `TEST_FRACTION` of a fixed permutation (at least one item) is test; train/val are cut
    from the front of the same permutation by `split_train_val`'s rule (800/200 when it is large).
    """
    if n < 3:
        raise DataError(f"{what} has {n} image(s); at least 3 are needed for train, val and test splits")
    order = permutation(n, seed)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    tr, va = _train_val_from(order[:n - n_test], N_TRAIN, N_VAL)
    return tr, va, order[n - n_test:]


def check_normalisation(img_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Reject an image size or mean/std that would silently produce garbage tensors."""
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size < 1:
        raise DataError(f"img_size must be a positive integer, got {img_size!r}")
    try:
        sizes = (len(mean), len(std))
    except TypeError:
        raise DataError(f"mean and std need 3 values (R, G, B), got mean={mean!r} std={std!r}") from None
    if sizes != (3, 3):
        raise DataError(f"mean and std need 3 values (R, G, B), got mean={tuple(mean)} std={tuple(std)}")
    if any(float(s) <= 0 for s in std):
        raise DataError(f"std values must be positive, got {tuple(std)}")


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]):
    """VTAB-style evaluation transform, one PIL image at a time: resize to a square, no crop.

    Bicubic, as the NOAH/VPT VTAB pipelines use; no centre crop because VTAB's images are resized
    whole. The decoded cache (`decoded.py`) plus `pipeline.normalise` give exactly these tensors, bit
    for bit, a batch at a time; this is the per-image reference they are tested against.
    """
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.ToTensor(),
        T.Normalize(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std)),
    ])
