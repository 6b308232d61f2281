"""Decode every image of a dataset (files, or a torchvision set's items) once, at the run's image size,
into a uint8 cache.

Why: a VTAB-1k run reads the same 1,000 JPEGs for 100 epochs, and decoding plus resizing a 500x375
JPEG costs about 2 ms of one core; a GPU consumes images far faster than that. The cache holds each
image already resized to `size x size` (bicubic, exactly as the evaluation transform would resize
it), as `(N, size, size, 3)` uint8, so an epoch becomes an array lookup.

Where it lives: one `.npy` file per (image list, size) under `cache_dir()`, named by a hash of every
path with its byte size and modification time, so an edited folder or another size is a different
file (rebuilt, and the stale one removed). It is written to a temporary name, fsynced and renamed,
so a kill leaves no half-written cache and two runs building it at once each produce the whole file.
Loaded into memory when it fits in a quarter of the available memory, memory-mapped otherwise. When
the file cannot be written (a full disk, a read-only cache folder) the images stay in memory if they
fit, with a one-line warning; otherwise there is no cache and images are decoded as they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from e2vpt.data.images import image_problem, open_file, refuse_unreadable
from e2vpt.errors import DataError
from e2vpt.fileio import _fsync_folder, is_disk_full

CACHE_ENV = "E2VPT_CACHE_DIR"
FORMAT_VERSION = 1  # bump when what a cache holds changes (resize rule, layout)
CHUNK = 128  # images decoded between two writes: the memory a streamed build holds at once


def cache_dir() -> Path | None:
    """`$E2VPT_CACHE_DIR` (`off` disables the file cache), else `$XDG_CACHE_HOME/e2vpt/decoded`."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "e2vpt" / "decoded"


def _decode(item, size: int, read: Callable[[Any], Image.Image]) -> np.ndarray | str:
    """`(size, size, 3)` uint8 pixels of `read(item)` (RGB, resized whole with PIL's bicubic filter,
    which is what torchvision's `Resize((size, size), BICUBIC)` does to a PIL image), or why it
    cannot be read."""
    try:
        rgb = read(item)
        rgb = rgb.convert("RGB") if rgb.mode != "RGB" else rgb
    except Exception as exc:  # PIL and torchvision raise many kinds for a bad image
        if read is open_file:
            return image_problem(item) or "cannot be decoded"
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return np.array(rgb, dtype=np.uint8)  # writable: tensors made from it may be written


def decode_square(item, size: int, read: Callable[[Any], Image.Image] = open_file) -> np.ndarray:
    """One image as `(size, size, 3)` uint8, or a `DataError` naming it and its problem."""
    pixels = _decode(item, size, read)
    if isinstance(pixels, str):
        raise DataError(f"cannot read image {_name(item)}: {pixels}; delete or replace it")
    return pixels


def _name(item) -> str:
    """How a message names an image: its path, or `dataset[index]` for an image inside a dataset."""
    if isinstance(item, tuple) and len(item) == 2:
        return f"{type(item[0]).__name__}[{item[1]}]"
    return str(item)


def _hash(value: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:length]


def file_identity(paths: Sequence[str]) -> tuple[Any, Any]:
    """(what, version) of an image-file list: the folder holding them, and every file's size and
    modification time, so any file added, removed, rewritten or touched changes the version."""
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            raise DataError(f"image {p} is missing; the folder changed while it was being read") from None
        stats.append((p, st.st_size, st.st_mtime_ns))
    top = os.path.commonpath([os.path.realpath(p) for p in paths]) if paths else ""
    return top, stats


def _fits_in_memory(nbytes: int) -> bool:
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return nbytes <= 1 << 30
    return nbytes <= available // 4


def _decode_into(out, items: Sequence, size: int, start: int, pool: ThreadPoolExecutor,
                 problems: list[tuple[str, str]], read: Callable[[Any], Image.Image]) -> None:
    """Decode `items` into `out[start:]`, adding `(name, reason)` to `problems` for unreadable ones;
    PIL releases the GIL while decoding and resizing, so threads use every core."""
    for i, (item, pixels) in enumerate(zip(items, pool.map(lambda it: _decode(it, size, read), items))):
        if isinstance(pixels, str):
            problems.append((_name(item), pixels))
        else:
            out[start + i] = pixels


def _remove_stale(folder: Path, stem: str, keep: str) -> None:
    """Older caches of the same folder and size, and temporary files whose writer is dead."""
    for old in folder.glob(f"{stem}-*.npy"):
        if old.name != keep:
            old.unlink(missing_ok=True)
    for tmp in folder.glob(f".{stem}-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass


def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cache at `path` (in memory or memory-mapped), or None when it is absent or not whole."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if mapped.shape != shape or mapped.dtype != np.uint8:
        return None
    return np.ascontiguousarray(mapped) if _fits_in_memory(mapped.nbytes) else mapped


def _write_header(f, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})


class DecodedImages:
    """The decoded images of one image list: `pixels` `(N, size, size, 3)` uint8 and where they live.

    `where` is "memory", "memory-mapped file" or "memory (not saved: REASON)"; `build_s` is the time
    this process spent decoding (0 when the cache was found on disk).
    """

    def __init__(self, pixels: np.ndarray, where: str, file: Path | None, build_s: float):
        self.pixels = pixels
        self.where = where
        self.file = file
        self.build_s = build_s

    def __len__(self) -> int:
        return len(self.pixels)

    def tensor(self) -> torch.Tensor:
        """`(N, 3, size, size)` uint8 in channels-last memory (a view, no copy)."""
        with warnings.catch_warnings():  # a read-only memory map: the tensor is never written
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.pixels).permute(0, 3, 1, 2)


def open_decoded(items: Sequence, size: int, where: str = "the dataset", folder: Path | None = None,
                 threads: int | None = None, read: Callable[[Any], Image.Image] = open_file,
                 identity: tuple[Any, Any] | None = None) -> DecodedImages | None:
    """The decoded cache of `items` at `size`, built if it is missing or stale.

    `items` are image file paths (read with `open_file`, identified by `file_identity`), or anything
    `read(item)` turns into a PIL image, identified by `identity` = (what, version): what the list is
    (older caches of it are removed when a new version is written) and a version that changes
    whenever its images may have.

    Returns None when the images neither fit in memory nor can be written to disk (the caller then
    decodes images as they are read). Raises `DataError` naming the unreadable images (`where`: the
    dataset, for the message); a failed build leaves no file behind.
    """
    import time

    folder = cache_dir() if folder is None else folder
    shape = (len(items), size, size, 3)
    nbytes = int(np.prod(shape))
    what, version = identity if identity is not None else file_identity(items)
    stem, key = _hash([what, size], 12), _hash([FORMAT_VERSION, size, what, version], 20)
    final = folder / f"{stem}-{key}.npy" if folder is not None else None
    if final is not None and final.is_file():
        pixels = _load(final, shape)
        if pixels is not None:
            where = "memory-mapped file" if isinstance(pixels, np.memmap) else "memory"
            return DecodedImages(pixels, where, final, 0.0)
        final.unlink(missing_ok=True)  # not whole (edited by hand): rebuilt below
    started = time.perf_counter()
    threads = threads or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        if _fits_in_memory(nbytes):
            pixels, problems = np.empty(shape, dtype=np.uint8), []
            for start in range(0, len(items), CHUNK):
                _decode_into(pixels, items[start:start + CHUNK], size, start, pool, problems, read)
            refuse_unreadable(problems, where)
            problem = _save(pixels, folder, stem, key) if folder is not None else "no cache folder"
            build_s = time.perf_counter() - started
            if problem is None:
                return DecodedImages(pixels, "memory", final, build_s)
            warnings.warn(f"decoded-image cache kept in memory only, not saved for the next run: {problem}",
                          stacklevel=2)
            return DecodedImages(pixels, f"memory (not saved: {problem})", None, build_s)
        if folder is None:
            return None
        problem = _stream(items, size, shape, folder, stem, key, pool, where, read)
    if problem is not None:
        warnings.warn(f"decoded-image cache not written ({problem}); {len(items)} images do not fit in memory, so "
                      "they are decoded as they are read (slower)", stacklevel=2)
        return None
    return DecodedImages(np.load(final, mmap_mode="r", allow_pickle=False), "memory-mapped file", final,
                         time.perf_counter() - started)


def _tmp_path(folder: Path, stem: str, key: str) -> Path:
    return folder / f".{stem}-{key}.{os.getpid()}.tmp"


def _publish(tmp: Path, folder: Path, stem: str, key: str) -> None:
    os.replace(tmp, folder / f"{stem}-{key}.npy")
    _fsync_folder(folder)
    _remove_stale(folder, stem, f"{stem}-{key}.npy")


def _save(pixels: np.ndarray, folder: Path, stem: str, key: str) -> str | None:
    """Write decoded images whole or not at all; the reason (a sentence) when it could not be."""
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(folder, stem, key)
        with open(tmp, "wb") as f:
            _write_header(f, pixels.shape)
            for start in range(0, len(pixels), CHUNK):
                f.write(pixels[start:start + CHUNK].tobytes())
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, folder, stem, key)
        return None
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return _reason(exc, folder)


def _stream(items, size, shape, folder: Path, stem: str, key: str, pool, where: str, read) -> str | None:
    """Decode and write chunk by chunk (for caches larger than memory); the reason when it failed."""
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(folder, stem, key)
        with open(tmp, "wb") as f:
            _write_header(f, shape)
            chunk, problems = np.empty((CHUNK, size, size, 3), dtype=np.uint8), []
            for start in range(0, len(items), CHUNK):
                part = items[start:start + CHUNK]
                _decode_into(chunk, part, size, 0, pool, problems, read)
                f.write(chunk[:len(part)].tobytes())
            refuse_unreadable(problems, where)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, folder, stem, key)
        return None
    except OSError as exc:
        return _reason(exc, folder)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink(missing_ok=True)


def _reason(exc: OSError, folder: Path) -> str:
    if is_disk_full(exc):
        return f"the disk holding {folder} is full; free space or set {CACHE_ENV} to another folder"
    return f"cannot write to {folder}: {exc.strerror or exc}; set {CACHE_ENV} to a writable folder"
