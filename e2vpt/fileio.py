"""Crash-safe files: every write lands whole or not at all.

A file is written to a temp file in the same folder, fsynced and moved into place with `os.replace`,
so a crash leaves either the old or the new file, never half of one. JSONL logs are append-only with
one whole line per write; a torn last line (a crash mid-append) is skipped on read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save


def json_safe(value: Any) -> Any:
    """JSON-safe copy: tensors to lists, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable: a power cut after `os.replace` must not bring the old name back."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, previous: str | Path | None = None) -> None:
    """Write `path` whole or not at all. With `previous`, the file it replaces is kept under that name
    (a crash between the two renames leaves only `previous`, never a half-written `path`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_json(path: str | Path, value: Any, compact: bool = False) -> None:
    """`value` as JSON, written like `atomic_write_bytes`; one item per line unless `compact` (records
    that are mostly long lists of numbers, such as pruning.json, are read by programs, not people)."""
    text = json.dumps(json_safe(value), separators=(",", ":")) if compact else json.dumps(json_safe(value), indent=1)
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None,
                            previous: str | Path | None = None) -> None:
    """A safetensors file written like `atomic_write_bytes` (fsynced, renamed into place)."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(path, data, previous)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: one digest of a state dict,
    however it was saved (a checkpoint's check on read, an adapter's record of its backbone)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the disk or quota is full, whichever library raised it:
    `OSError` carries errno ENOSPC/EDQUOT; safetensors' Rust writer and others only say it in words."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left on device" in text or "os error 28" in text or "disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one whole line; if a previous crash tore the last line, start on a fresh line."""
    line = json.dumps(json_safe(record)) + "\n"
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """All whole records; torn or corrupt lines are skipped, never fatal."""
    records = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
