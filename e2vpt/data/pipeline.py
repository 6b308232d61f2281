"""Batches ready for the model: uint8 images fetched in batches, augmented and normalised on the device.

Why: decoding, resizing and augmenting image by image in the training process starved the model (430
JPEGs/s on one core). Datasets that hold uint8 squares (the built-in tasks, and image files and
torchvision sets through their decoded cache, `decoded.py`) hand out whole batches with
`fetch(indices)`; the batch travels as uint8 (a quarter of float32's bytes, pinned on CUDA), and the
training augmentation (random resized crop and horizontal flip) and normalisation run on the
training device, batch by batch.

Reproducible: every crop and flip is drawn in the main process from a generator seeded by the
loader's seed, in batch order, so the same seed gives the same batches whatever the number of worker
processes. Any other map-style dataset of normalised tensors goes through a plain `DataLoader`.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

SCALE = (0.08, 1.0)  # timm's / torchvision's RandomResizedCrop defaults
RATIO = (3 / 4, 4 / 3)
TRIES = 10
MAX_AUTO_WORKERS = 8


def _scale_(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float pixels in 0..255 to `(x / 255 - mean) / std`, in place: torchvision's `ToTensor` +
    `Normalize` operations, so results match theirs bit for bit."""
    mean, std = mean.to(x.device).view(3, 1, 1), std.to(x.device).view(3, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 `(..., 1|3, H, W)` to normalised float32 `(..., 3, H, W)`; grayscale fills all three."""
    x = images.float()
    if x.shape[-3] == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    return _scale_(x, mean, std)


def random_resized_crops(n: int, height: int, width: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes `(n, 4)` as (top, left, h, w) and flips `(n,)`, by torchvision's RandomResizedCrop rule:
    up to ten draws of an area share in SCALE and a log-uniform aspect ratio in RATIO, the first that
    fits wins, else the whole image's centre at the closest allowed ratio; a flip with p = 0.5."""
    scale = torch.empty(n, TRIES).uniform_(*SCALE, generator=generator) * (height * width)
    ratio = torch.exp(torch.empty(n, TRIES).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator))
    w = torch.sqrt(scale * ratio).round().long()
    h = torch.sqrt(scale / ratio).round().long()
    u = torch.rand(n, TRIES, 2, generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    pick = ok.float().argmax(1, keepdim=True)  # the first try that fits
    h, w, u = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0], u[torch.arange(n), pick[:, 0]]
    top = (u[:, 0] * (height - h + 1)).long()
    left = (u[:, 1] * (width - w + 1)).long()
    # no try fits (rare): the centre of the whole image at the closest allowed aspect ratio
    in_ratio = width / height
    fw, fh = (width, round(width / RATIO[0])) if in_ratio < RATIO[0] else \
        (round(height * RATIO[1]), height) if in_ratio > RATIO[1] else (width, height)
    fh, fw = min(fh, height), min(fw, width)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    boxes = torch.stack([top, left, h, w], dim=1)
    boxes[~ok.any(1)] = fallback
    return boxes, flips


def _crop_into(out: torch.Tensor, source: torch.Tensor, rows: list[int], boxes: list[list[int]], flips: list[bool],
               mean: torch.Tensor, std: torch.Tensor, items) -> None:
    """Crop, resize, flip and normalise `items` of a batch into `out`, one image at a time (each is
    normalised while it is still in the processor's cache)."""
    size = out.shape[-1]
    for i in items:
        top, left, h, w = boxes[i]
        crop = source[rows[i]:rows[i] + 1, :, top:top + h, left:left + w]
        if crop.device.type != "cpu":
            crop = crop.float()  # CUDA resizes floats only
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        _scale_(out[i].copy_(resized.flip(-1) if flips[i] else resized), mean, std)


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_AUTO_WORKERS))


@functools.cache
def _crop_threads(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="e2vpt-crop")


def augmented(source: torch.Tensor, rows, boxes: torch.Tensor, flips: torch.Tensor, mean: torch.Tensor,
              std: torch.Tensor) -> torch.Tensor:
    """Normalised float32 `(B, 3, S, S)`: `source[rows[i]]` (uint8, `(N, C, S, S)`) cropped to
    `boxes[i]`, resized back to `S` (bilinear), flipped where `flips[i]`, normalised.

    On the CPU the images are shared among threads (PyTorch's uint8 resize runs without the GIL, and
    fastest on channels-last images, the decoded cache's layout); on CUDA one resize per image.
    """
    size = source.shape[-1]
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.float32, device=source.device)
    mean, std = mean.to(source.device).view(3, 1, 1), std.to(source.device).view(3, 1, 1)
    if source.shape[1] == 1:
        source = source.expand(-1, 3, -1, -1)
    rows, boxes, flips = torch.as_tensor(rows).tolist(), boxes.tolist(), flips.tolist()
    threads = _cores() if source.device.type == "cpu" else 1
    if threads > 1 and len(boxes) > 1:
        parts = [range(k, len(boxes), threads) for k in range(threads)]
        list(_crop_threads(threads).map(lambda items: _crop_into(out, source, rows, boxes, flips, mean, std, items),
                                        parts))
    else:
        _crop_into(out, source, rows, boxes, flips, mean, std, range(len(boxes)))
    return out


def augment_one(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One uint8 `(C, H, W)` image through the training augmentation and normalisation."""
    boxes, flips = random_resized_crops(1, image.shape[-2], image.shape[-1], generator or torch.default_generator)
    return augmented(image[None], [0], boxes, flips, mean, std)[0]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library's malloc controls, or None where there is no glibc (not Linux)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@functools.cache
def large_buffers_from_heap() -> bool:
    """Serve large allocations from glibc's heap instead of fresh memory maps (Linux only).

    A float batch of 64 images at 224 is 38 MB, above glibc's largest mmap threshold (32 MB), so by
    default every batch is a new memory map that the kernel fills page by page: measured here, that
    made converting a batch to float 10x slower. Process-wide, once; returns whether it applied.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def return_free_memory() -> bool:
    """Hand the heap's free memory back to the system (glibc's `malloc_trim`, every arena); Linux only.

    Why: with `large_buffers_from_heap`, freed batches stay in the process for the next step. A process
    that trains one run after another in fresh threads (a Ray Tune worker reused across a sweep's
    trials) gets a new malloc arena per thread, each keeping its run's peak: measured on the demo, a
    worker grew by about 1 GB a trial until Ray killed it for want of memory. Returns whether it ran.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def resolve_workers(workers: str | int, dataset: Dataset) -> int:
    """`auto`: no worker process for images already in memory or a decoded cache (a lookup is cheaper
    than sending it between processes); for images decoded as they are read, one per core up to 8
    (leaving a core to the training process), since decoding is what would make the model wait."""
    if str(workers) != "auto":
        return int(workers)
    if getattr(dataset, "in_memory", False):
        return 0
    return max(0, _cores() - 1)


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

    `dataset` either has `rows(indices) -> (uint8 store (N, C, S, S), rows into it, labels)` and
    `fetch(indices) -> (uint8 images, labels)` (batched path: augmented when `dataset.augment`, with
    crops drawn from `seed`), or is any map-style dataset of normalised tensors (a plain DataLoader).
    On the CPU without workers, crops are cut straight from the store, with no copy of the batch.
    """

    def __init__(self, dataset, batches: list[list[int]], device: torch.device, seed: int = 0,
                 workers: str | int = "auto"):
        self.dataset, self.batches, self.device, self.seed = dataset, batches, device, seed
        self.workers = resolve_workers(workers, dataset)
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

    def _uint8_batches(self):
        """(uint8 store, rows, labels) per batch, the store on the device."""
        if self.device.type == "cpu" and self.workers == 0:
            for indices in self.batches:
                yield self.dataset.rows(indices)
            return
        for images, labels in self._loader():
            images = images.to(self.device, non_blocking=True)
            yield images, range(len(images)), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type == "cpu":
            large_buffers_from_heap()
        if not self.batched:
            for images, labels in self._loader():
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            return
        ds = self.dataset
        generator = torch.Generator().manual_seed(self.seed)
        mean, std = ds.mean.to(self.device), ds.std.to(self.device)
        for store, rows, labels in self._uint8_batches():
            labels = labels.to(self.device, non_blocking=True)
            if ds.augment:
                boxes, flips = random_resized_crops(len(rows), store.shape[-2], store.shape[-1], generator)
                yield augmented(store, rows, boxes, flips, mean, std), labels
            else:
                picked = store if isinstance(rows, range) and len(rows) == len(store) else store[torch.as_tensor(rows)]
                yield normalise(picked, mean, std), labels
