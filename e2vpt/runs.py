"""The run directory: the contract between the trainer, the CLI, the app and the analyses.

Every file is written atomically (temp file in the same folder, fsync, `os.replace`), so a crash
leaves either the old or the new file, never half of one. `metrics.jsonl` is append-only with one
whole line per write; a torn last line (a crash mid-append) is skipped on read. A run that says
`running` but whose process is gone is reported as `interrupted`. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import RunDirError

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")


def _clean(value: Any) -> Any:
    """JSON-safe copy: tensors to lists, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(value), indent=1) + "\n").encode())


def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one whole line; if a previous crash tore the last line, start on a fresh line."""
    line = json.dumps(_clean(record)) + "\n"
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (finished child not yet reaped) is not running
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].startswith("Z") is False
    except OSError:
        return True


class RunDir:
    """One run's folder and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_file = None

    # files
    config_file = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    pruning_file = property(lambda self: self.path / "pruning.json")
    summary_file = property(lambda self: self.path / "summary.json")
    weights_file = property(lambda self: self.path / "weights.safetensors")
    checkpoint_file = property(lambda self: self.path / "checkpoint.safetensors")
    checkpoint_meta_file = property(lambda self: self.path / "checkpoint.json")
    init_file = property(lambda self: self.path / "init.safetensors")
    cancel_file = property(lambda self: self.path / "cancel.request")
    log_file = property(lambda self: self.path / "train.log")

    @property
    def id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.config_file.is_file()

    # lifecycle
    def prepare_new(self) -> bool:
        """Create the folder for a fresh run, refusing one that already holds a run.

        A folder the app queued (status `queued`, no checkpoint yet) is accepted. Returns True when
        this call created the folder, so a run that fails before it starts can remove it again.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a folder; pick another --run-dir")
        queued = (read_json(self.status_file, {}) or {}).get("state") == "queued"
        if self.exists() and not (queued and not self.checkpoint_meta_file.exists() and not self.is_locked()):
            state = self.status().get("state")
            if state == "done" or self.summary_file.is_file():
                raise RunDirError(f"{self.path} already holds a finished run; pick a new --run-dir or delete that folder")
            raise RunDirError(f"{self.path} already holds a run (state: {state}); continue it with "
                              f"`python -m e2vpt train --resume {self.path}` or pick a new --run-dir")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        return created

    def lock(self) -> None:
        """Hold an exclusive lock for the life of this process: a second trainer on the same folder is refused."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / "run.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunDirError(f"{self.path} is being trained by another process; wait for it or cancel it first") from None
        self._lock_file = f

    def is_locked(self) -> bool:
        lock = self.path / "run.lock"
        if not lock.exists():
            return False
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    # status
    def write_status(self, state: str, progress: float | None = None, message: str = "", **extra) -> None:
        assert state in STATES, state
        previous = read_json(self.status_file, {}) or {}
        status = {"state": state,
                  "progress": previous.get("progress", 0.0) if progress is None else round(float(progress), 4),
                  "message": message, "pid": os.getpid(), "updated": _now(), **extra}
        atomic_write_json(self.status_file, status)

    def status(self) -> dict:
        """The status, with a dead `running`/`queued` process reported as `interrupted`."""
        status = read_json(self.status_file)
        if not isinstance(status, dict):
            if self.exists():
                return {"state": "interrupted", "progress": 0.0, "message": "status file missing or unreadable"}
            return {"state": "missing", "progress": 0.0, "message": f"no run at {self.path}"}
        if status.get("state") in ACTIVE_STATES and not self.is_locked() and not _pid_alive(status.get("pid")):
            status = dict(status, state="interrupted",
                          message=f"the training process stopped unexpectedly (was: {status.get('message', '')}); "
                                  "resume it to continue from the last completed epoch")
        return status

    # records
    def config(self) -> dict:
        config = read_json(self.config_file)
        if not isinstance(config, dict):
            raise RunDirError(f"{self.path} has no readable config.json; it is not a run directory")
        return config

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_file)

    def pruning(self) -> dict | None:
        return read_json(self.pruning_file)

    def summary(self) -> dict | None:
        return read_json(self.summary_file)

    def load_weights(self) -> dict[str, torch.Tensor]:
        if not self.weights_file.is_file():
            raise RunDirError(f"{self.path} has no weights.safetensors yet; the run has not finished a phase")
        return load_file(str(self.weights_file))


def list_runs(root: str | Path) -> list[dict]:
    """Every run under `root`, newest first: id, path, status and the summary fields when done."""
    root = Path(root)
    rows = []
    if not root.is_dir():
        return rows
    for path in root.iterdir():
        run = RunDir(path)
        if not path.is_dir() or not run.exists():
            continue
        config = read_json(run.config_file, {}) or {}
        status = run.status()
        summary = run.summary() or {}
        rows.append({"id": run.id, "path": str(path), "state": status.get("state"),
                     "progress": status.get("progress"), "message": status.get("message", ""),
                     "method": config.get("method"), "dataset": config.get("dataset"),
                     "backbone": config.get("backbone"), "test_acc": summary.get("test_acc"),
                     "val_acc": summary.get("val_acc"), "tuned_pct": summary.get("tuned_pct"),
                     "tuned_params": summary.get("tuned_params"), "wall_s": summary.get("wall_s"),
                     "created": config.get("extra", {}).get("created") or status.get("updated")})
    rows.sort(key=lambda r: str(r.get("created") or ""), reverse=True)
    return rows
