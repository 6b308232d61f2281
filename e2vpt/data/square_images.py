"""A dataset of images resized whole to `size x size`, read through the decoded cache when there is one.

Image folders, VTAB-1k, FGVC (files) and torchvision sets (images inside a dataset object) share it:
what differs is only how one image is read (`read(item)`, a PIL image) and named in messages. One by
one it yields normalised float tensors, as every analysis expects; for training, `rows`/`fetch` hand
out uint8 batches to `pipeline.DeviceBatches`, which augments and normalises them on the device.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from e2vpt.data.decoded import DecodedImages, decode_square
from e2vpt.data.images import open_file


class SquareImages(Dataset):
    """`items` (what `read` opens) with int `labels`, as `img_size` squares normalised by `mean`/`std`.

    With `decoded` (the cache) and `rows_in_cache`, images come from the cache; without, each is
    decoded when read. `augment`: the training augmentation (random resized crop of the square and a
    horizontal flip), applied on the training device for batches, and with torch's global generator
    one by one.
    """

    def __init__(self, items: Sequence[Any], labels: Sequence[int], img_size: int, mean: Sequence[float],
                 std: Sequence[float], augment: bool = False, decoded: DecodedImages | None = None,
                 rows_in_cache: Sequence[int] | None = None, read: Callable[[Any], Image.Image] = open_file):
        self.items = list(items)
        self.labels = [int(label) for label in labels]
        self.img_size = int(img_size)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.augment = augment
        self.decoded = decoded
        self.read = read
        rows = range(len(self.items)) if rows_in_cache is None else list(rows_in_cache)
        self.rows_in_cache = torch.as_tensor(rows, dtype=torch.long)
        self._pixels = decoded.tensor() if decoded is not None else None

    @property
    def in_memory(self) -> bool:
        return self._pixels is not None

    def __len__(self) -> int:
        return len(self.items)

    def square(self, index: int) -> torch.Tensor:
        """Image `index` as uint8 `(3, size, size)`."""
        if self._pixels is not None:
            return self._pixels[int(self.rows_in_cache[index])]
        return torch.from_numpy(decode_square(self.items[index], self.img_size, self.read)).permute(2, 0, 1)

    def __getitem__(self, index: int):
        from e2vpt.data.pipeline import augment_one, normalise

        image = self.square(index)
        if self.augment:
            return augment_one(image, self.mean, self.std), self.labels[index]
        return normalise(image, self.mean, self.std), self.labels[index]

    def rows(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch as (uint8 store `(N, 3, size, size)`, the batch's rows in it, int64 labels): the
        decoded cache and rows into it, or the batch's images decoded now and `0..B-1`."""
        indices = [int(i) for i in indices]
        labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        if self._pixels is not None:
            return self._pixels, self.rows_in_cache[indices], labels
        return torch.stack([self.square(i) for i in indices]), torch.arange(len(indices)), labels

    def fetch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 `(B, 3, size, size)` images and int64 labels of a batch."""
        store, rows, labels = self.rows(indices)
        return (store[rows] if self._pixels is not None else store), labels

    @property
    def samples(self) -> list[tuple[Any, int]]:
        """`(item, label)` pairs: `(path, label)` for image files."""
        return list(zip(self.items, self.labels))

    def joined(self, other: "SquareImages") -> "SquareImages":
        """This split followed by `other` (same cache), with this split's augmentation."""
        return SquareImages(self.items + other.items, self.labels + other.labels, self.img_size, self.mean.tolist(),
                            self.std.tolist(), self.augment, self.decoded,
                            torch.cat([self.rows_in_cache, other.rows_in_cache]).tolist(), self.read)


def cached_splits(splits: dict[str, tuple[list, list[int]]], img_size: int, mean, std, train_augment: bool,
                  where: str, read: Callable[[Any], Image.Image] = open_file,
                  identity=None) -> tuple[dict[str, SquareImages], DecodedImages | None]:
    """One `cls` per split (`name -> (items, labels)`), all reading one decoded cache of every
    distinct item (an item in two splits is decoded once)."""
    from e2vpt.data.decoded import open_decoded

    distinct = list(dict.fromkeys(item for items, _ in splits.values() for item in items))
    position = {item: i for i, item in enumerate(distinct)}
    decoded = open_decoded(distinct, img_size, where=where, read=read, identity=identity)
    datasets = {name: SquareImages(items, labels, img_size, mean, std, train_augment and name == "train", decoded,
                                   [position[item] for item in items], read)
                for name, (items, labels) in splits.items()}
    return datasets, decoded
