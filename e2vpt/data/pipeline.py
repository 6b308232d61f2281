"""Batches ready for the model: uint8 images fetched in batches, augmented and normalised on the device.

Why: decoding, resizing and augmenting image by image in the training process starved the model (430
JPEGs/s on one core). Datasets that hold uint8 squares (the built-in tasks, and image files through
their decoded cache, `decoded.py`) hand out whole batches with `fetch(indices)`; the batch travels
as uint8 (a quarter of float32's bytes, pinned on CUDA), and the training augmentation (random
resized crop and horizontal flip) and normalisation run on the training device, batch by batch.

Reproducible: every crop and flip is drawn in the main process from a generator seeded by the
loader's seed, in batch order, so the same seed gives the same batches whatever the number of worker
processes. Other datasets (torchvision sets) go through a plain `DataLoader` with their per-image
transforms, as before.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

SCALE = (0.08, 1.0)  # timm's / torchvision's RandomResizedCrop defaults
RATIO = (3 / 4, 4 / 3)
TRIES = 10
MAX_AUTO_WORKERS = 8


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 `(..., 1|3, H, W)` to float32 `(..., 3, H, W)`: `(x / 255 - mean) / std`, the same
    operations as torchvision's `ToTensor` + `Normalize`, so results match them bit for bit."""
    x = images.float().div_(255.0)
    mean, std = mean.to(x.device).view(3, 1, 1), std.to(x.device).view(3, 1, 1)
    if x.shape[-3] == 1:  # grayscale: the same plane in all three channels (not in place: a view)
        return (x.expand(*x.shape[:-3], 3, *x.shape[-2:]) - mean) / std
    return x.sub_(mean).div_(std)


def random_resized_crops(n: int, height: int, width: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes `(n, 4)` as (top, left, h, w) and flips `(n,)`, by torchvision's RandomResizedCrop rule:
    up to ten draws of an area share in SCALE and a log-uniform aspect ratio in RATIO, the first that
    fits wins, else the whole image's centre at the closest allowed ratio; a flip with p = 0.5."""
    area = height * width
    scale = torch.empty(n, TRIES).uniform_(*SCALE, generator=generator) * area
    log_ratio = torch.empty(n, TRIES).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio).round().long()
    h = torch.sqrt(scale / ratio).round().long()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    u = torch.rand(n, TRIES, 2, generator=generator)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    boxes = torch.empty(n, 4, dtype=torch.long)
    for i in range(n):
        j = int(first[i])
        if j >= 0:
            hh, ww = int(h[i, j]), int(w[i, j])
            top = int(u[i, j, 0] * (height - hh + 1))
            left = int(u[i, j, 1] * (width - ww + 1))
        else:
            in_ratio = width / height
            ww, hh = (width, round(width / RATIO[0])) if in_ratio < RATIO[0] else \
                (round(height * RATIO[1]), height) if in_ratio > RATIO[1] else (width, height)
            hh, ww = min(hh, height), min(ww, width)
            top, left = (height - hh) // 2, (width - ww) // 2
        boxes[i] = torch.tensor([top, left, hh, ww])
    flips = torch.rand(n, generator=generator) < 0.5
    return boxes, flips


def crop_resize(source: torch.Tensor, rows: Sequence[int], boxes: torch.Tensor, flips: torch.Tensor,
                size: int) -> torch.Tensor:
    """`source[rows[i]]` cropped to `boxes[i]`, resized to `size` (bilinear), flipped where `flips[i]`.

    Works on uint8 (CPU: PyTorch's vectorised uint8 resize, fastest on channels-last images) or
    float (CUDA) images; the result keeps the source's dtype and device.
    """
    if source.dtype == torch.uint8 and source.device.type != "cpu":
        source = source.float()
    out = torch.empty((len(rows), source.shape[1], size, size), dtype=source.dtype, device=source.device)
    for i, row in enumerate(rows):
        top, left, h, w = (int(v) for v in boxes[i])
        crop = source[int(row):int(row) + 1, :, top:top + h, left:left + w]
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i] = resized[0].flip(-1) if flips[i] else resized[0]
    return out


def augment_one(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uint8 `(C, H, W)` image through the training augmentation (for per-image reads)."""
    generator = generator or torch.default_generator
    boxes, flips = random_resized_crops(1, image.shape[-2], image.shape[-1], generator)
    return crop_resize(image[None], [0], boxes, flips, image.shape[-1])[0]


@functools.cache
def large_buffers_from_heap() -> bool:
    """Serve large allocations from glibc's heap instead of fresh memory maps (Linux only).

    A float batch of 64 images at 224 is 38 MB, above glibc's largest mmap threshold (32 MB), so by
    default every batch is a new memory map that the kernel fills page by page: measured here, that
    made converting a batch to float 10x slower. Process-wide, once; returns whether it applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def resolve_workers(workers: str | int, dataset: Dataset, device: torch.device) -> int:
    """`auto`: no worker process for images already in memory or a decoded cache (a lookup is cheaper
    than sending it between processes); for images decoded as they are read, one per core up to 8
    (leaving a core to the training process), since decoding is what would make the model wait."""
    if str(workers) != "auto":
        return int(workers)
    if getattr(dataset, "in_memory", False):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cores - 1))


class _BatchFetch(Dataset):
    """`dataset.fetch(indices)` as a map-style dataset whose items are whole batches."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices):
        return self.dataset.fetch(indices)


class DeviceBatches:
    """Model-ready `(float32 images, int64 labels)` on `device`, one per list in `batches`.

    `dataset` either has `fetch(indices) -> (uint8 (B, C, S, S), labels)` (batched path: augmented
    when `dataset.augment`, with crops drawn from `seed`) or is any map-style dataset of normalised
    tensors (a plain DataLoader). `len()` is the number of batches.
    """

    def __init__(self, dataset, batches: list[list[int]], device: torch.device, seed: int = 0,
                 workers: str | int = "auto"):
        self.dataset, self.batches, self.device, self.seed = dataset, batches, device, seed
        self.workers = resolve_workers(workers, dataset, device)
        self.batched = hasattr(dataset, "fetch")

    def __len__(self) -> int:
        return len(self.batches)

    def _loader(self) -> DataLoader:
        pin = self.device.type == "cuda"
        extra = {"prefetch_factor": 4, "persistent_workers": False} if self.workers else {}
        generator = torch.Generator().manual_seed(self.seed)  # per-image transforms in workers
        if self.batched:
            return DataLoader(_BatchFetch(self.dataset), sampler=self.batches, batch_size=None,
                              num_workers=self.workers, pin_memory=pin, generator=generator, **extra)
        return DataLoader(self.dataset, batch_sampler=self.batches, num_workers=self.workers, pin_memory=pin,
                          generator=generator, **extra)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type == "cpu":
            large_buffers_from_heap()
        if not self.batched:
            for images, labels in self._loader():
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            return
        ds = self.dataset
        augment = getattr(ds, "augment", False)
        generator = torch.Generator().manual_seed(self.seed)
        mean, std = ds.mean.to(self.device), ds.std.to(self.device)
        for images, labels in self._loader():
            images = images.to(self.device, non_blocking=True)
            if augment:
                boxes, flips = random_resized_crops(len(images), images.shape[-2], images.shape[-1], generator)
                images = crop_resize(images, range(len(images)), boxes, flips, images.shape[-1])
            yield normalise(images, mean, std), labels.to(self.device, non_blocking=True)
