"""Runs: the run directory (the contract between the trainer, the CLI, the app and the analyses),
where runs live, their ids and the listing. The one runs API every entry point uses.

Every run file is written with `e2vpt.fileio` (whole or not at all). A run that says `running` but
whose process is gone is reported as `interrupted`. See docs/ARCHITECTURE.md.

Roots, honoured by the app, the CLI and notebooks alike:

- runs root: `$E2VPT_RUNS_ROOT`, else `./runs`;
- data root: `$E2VPT_DATA_ROOT`, else `./data`.

Everything a user names (a run id from the URL, a data folder, a weights file) is resolved and
checked to stay inside those roots, so nothing outside them is read, listed or deleted.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import run_schema as schema
from .errors import RunDirError
from .fileio import atomic_write_json, read_json, read_jsonl
from .roots import (DATA_ROOT_ENV, RUNS_ROOT_ENV, data_folders, data_root, inside, root_or_default,  # noqa: F401
                    runs_root, with_data_root)  # where runs and data live: part of the runs API

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# a run's id is its folder's name under the runs root, or `<sweep>/<trial>` for a sweep's trial
RUN_ID_PATTERN = re.compile(rf"{NAME_PATTERN.pattern}(/{NAME_PATTERN.pattern})?")
SWEEP_FILE = "sweep.json"  # what tells a sweep folder (whose sub-folders are runs) from a run
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
LOCK_PATIENCE_S = 2.0
MARKER = "e2vpt-run.json"  # written when a run folder is created: what tells a run from any other folder
RUN_FILES = {MARKER, "config.json", "status.json", "metrics.jsonl", "pruning.json", "summary.json",
             "weights.safetensors", "checkpoint.safetensors", "checkpoint.prev.safetensors", "checkpoint.json",
             "init.safetensors", "cancel.request", "train.log", "run.lock", "analysis"}
OWNED_PATTERN = re.compile(r"round_\d+\.safetensors|\..+\.tmp")  # round states, crash-safe writes' temp files


def lock_is_held(path: Path) -> bool:
    """True while some process holds an exclusive flock on `path` (a shared probe: pollers never block
    one another, and a killed holder's lock is gone with it)."""
    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


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


# what every reader of a summary uses (older runs lack some of the keys added since)
SUMMARY_NEEDS = ("method", "test_acc", "val_acc", "tuned_params", "tuned_pct", "backbone_params", "wall_s")


def _read_object(path: Path) -> dict | None:
    """The JSON object in a run file; None when the file does not exist; `RunDirError` naming the
    file and the problem when it is not a JSON object (damaged, truncated, or edited by hand)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path.name} of {path.parent.name} cannot be read ({exc})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path.name} of {path.parent.name} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path.name} of {path.parent.name} holds a {type(value).__name__}, not a JSON object")
    return value


METRIC_LINES = {"epoch": (schema.EPOCH, ("kind", "round", "epoch")), "prune": (schema.PRUNE, ("kind", "round"))}


def _is_metric(record) -> bool:
    """A metrics.jsonl line that readers can use: an epoch or prune record (`run_schema`) with its round
    (and epoch), every key it has of its declared type."""
    line = METRIC_LINES.get(record.get("kind")) if isinstance(record, dict) else None
    try:
        return line is not None and bool(line[0].check(record, "a metrics line", needs=line[1]))
    except RunDirError:
        return False


class RunDir:
    """One run's folder and the files in it."""

    def __init__(self, path: str | Path, run_id: str | None = None) -> None:
        self.path = Path(path)
        self._id = run_id
        self._lock_file = None

    # files: a run file that is a link is refused, so nothing is read or written outside the run
    def _file(self, name: str) -> Path:
        path = self.path / name
        if path.is_symlink():
            raise RunDirError(f"{name} of {self.id} is a link; run files must be plain files inside the run "
                              "folder, so it is not used")
        return path

    marker_file = property(lambda self: self._file(MARKER))
    config_file = property(lambda self: self._file("config.json"))
    status_file = property(lambda self: self._file("status.json"))
    metrics_file = property(lambda self: self._file("metrics.jsonl"))
    pruning_file = property(lambda self: self._file("pruning.json"))
    summary_file = property(lambda self: self._file("summary.json"))
    weights_file = property(lambda self: self._file("weights.safetensors"))
    checkpoint_file = property(lambda self: self._file("checkpoint.safetensors"))
    checkpoint_prev_file = property(lambda self: self._file("checkpoint.prev.safetensors"))
    checkpoint_meta_file = property(lambda self: self._file("checkpoint.json"))  # older versions' layout
    init_file = property(lambda self: self._file("init.safetensors"))
    # importance scored once after phase 0, for a pruning search whose trials all start from this run
    search_importance_file = property(lambda self: self._file("search_importance.safetensors"))
    cancel_file = property(lambda self: self._file("cancel.request"))
    log_file = property(lambda self: self._file("train.log"))
    lock_file = property(lambda self: self._file("run.lock"))

    def round_file(self, index: int) -> Path:
        return self._file(f"round_{int(index)}.safetensors")

    @property
    def analysis_dir(self) -> Path:
        """The folder analyses cache their results in (created on first use)."""
        path = self._file("analysis")
        path.mkdir(exist_ok=True)
        return path

    def remove_temp_files(self) -> None:
        """Delete the temp files of writes a crash interrupted (call only while holding the lock)."""
        for entry in self.path.glob(".*.tmp"):
            if entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)

    @staticmethod
    def owns(name: str) -> bool:
        """True for the names a run writes (what Delete may remove); anything else is the user's."""
        return name in RUN_FILES or bool(OWNED_PATTERN.fullmatch(name))

    def has_checkpoint(self) -> bool:
        """A checkpoint to resume from (either generation, or the two-file layout of older versions)."""
        return any(p.is_file() for p in (self.checkpoint_file, self.checkpoint_prev_file, self.checkpoint_meta_file))

    @property
    def id(self) -> str:
        """The id the app and the CLI know the run by (`<sweep>/<trial>` for a sweep's trial)."""
        return self._id or self.path.name

    def exists(self) -> bool:
        """A run's config is there (a link in its place counts, so that the run shows as unreadable)."""
        config = self.path / "config.json"
        return config.is_file() or config.is_symlink()

    def is_run_folder(self) -> bool:
        """A folder e2vpt made for a run: it has the marker (or, made by older versions, a config.json)."""
        return self.path.is_dir() and ((self.path / MARKER).is_file() or self.exists())

    def mark(self) -> None:
        """Write the marker of a freshly created run folder."""
        atomic_write_json(self.marker_file, schema.MARKER.make(format=1, created=_now()))

    # lifecycle
    def prepare_new(self) -> bool:
        """Create the folder for a fresh run, refusing one that already holds a run.

        A folder the app queued (status `queued`, no checkpoint yet) is accepted. Returns True when
        this call created the folder, so a run that fails before it starts can remove it again.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a folder; pick another --run-dir")
        if self.path.is_dir() and not self.is_run_folder() and any(self.path.iterdir()):
            names = sorted(p.name for p in self.path.iterdir())
            raise RunDirError(f"{self.path} is a folder that is not an e2vpt run and is not empty (it holds "
                              f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); nothing was written "
                              "to it: pick a new or empty --run-dir")
        queued = (read_json(self.status_file, {}) or {}).get("state") == "queued"
        if self.exists() and not (queued and not self.has_checkpoint() and not self.is_locked()):
            state = self.status().get("state")
            if state == "done" or self.summary_file.is_file():
                raise RunDirError(f"{self.path} already holds a finished run; pick a new --run-dir or delete that folder")
            raise RunDirError(f"{self.path} already holds a run (state: {state}); continue it with "
                              f"`python -m e2vpt train --resume {self.path}` or pick a new --run-dir")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker_file.is_file():
            self.mark()
        return created

    def lock(self) -> None:
        """Hold an exclusive lock for the life of this process: a second trainer on the same folder is refused."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.lock_file, "a+")
        # `is_locked` (a status poll) holds the lock for an instant: only a holder that keeps it for
        # LOCK_PATIENCE_S is a trainer
        deadline = time.monotonic() + LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.close()
                    raise RunDirError(f"{self.path} is being trained by another process; wait for it or cancel "
                                      "it first") from None
                time.sleep(0.02)
        self._lock_file = f

    def is_locked(self) -> bool:
        """True while a trainer holds the run."""
        return lock_is_held(self.lock_file)

    # status
    def write_status(self, state: str, progress: float | None = None, message: str = "", **extra) -> None:
        assert state in STATES, state
        previous = read_json(self.status_file, {})
        kept = previous.get("progress") if isinstance(previous, dict) else None  # a damaged file keeps nothing
        kept = kept if isinstance(kept, (int, float)) and not isinstance(kept, bool) else 0.0
        values = {"state": state, "progress": kept if progress is None else round(float(progress), 4), "message": message, "pid": os.getpid(), "updated": _now()}
        status = schema.STATUS.make(**{**values, **extra})  # `extra` may name the process (`pid`) too
        atomic_write_json(self.status_file, status)

    def status(self) -> dict:
        """The status, with a dead `running`/`queued` process reported as `interrupted`.

        A run with a readable summary is `done` whatever status.json says: the summary is written
        last, so a crash between the two (or a damaged status file) never hides a finished run.
        """
        try:
            status = _read_object(self.status_file)
        except RunDirError as exc:
            status, damaged = None, str(exc)
        else:
            damaged = None
            if status is not None and status.get("state") not in STATES:
                status, damaged = None, f"status.json has no valid state ({status.get('state')!r})"
        if self._summary_or_none() is not None:
            if status is None or status.get("state") != "done":
                return {"state": "done", "progress": 1.0, "message": "finished (its summary is complete)",
                        "updated": (status or {}).get("updated")}
            return status
        if status is None:
            if self.exists():
                return {"state": "interrupted", "progress": 0.0,
                        "message": damaged or "status file missing; resume the run to continue it"}
            return {"state": "missing", "progress": 0.0, "message": f"no run at {self.path}"}
        if status.get("state") in ACTIVE_STATES and not self.is_locked() and not _pid_alive(status.get("pid")):
            status = dict(status, state="interrupted",
                          message=f"the training process stopped unexpectedly (was: {status.get('message', '')}); "
                                  "resume it to continue from the last completed epoch")
        return status

    # records: each reader checks what it returns, and names the file when it cannot be used
    def config(self) -> dict:
        """The run's settings (a valid `TrainConfig` as a dict); `RunDirError` saying why otherwise."""
        from .config import TrainConfig
        from .errors import ConfigError
        from .recipes import SAVED_BEFORE_SETTING

        config = _read_object(self.config_file)
        if config is None:
            raise RunDirError(f"{self.path} has no config.json; it is not a run directory")
        config = {**SAVED_BEFORE_SETTING, **config}  # a run saved before a setting existed behaved as its old value
        try:
            TrainConfig.from_dict(config)
        except ConfigError as exc:
            raise RunDirError(f"config.json of {self.id} is not a valid configuration: {exc}") from None
        return config

    def metrics(self) -> list[dict]:
        """Epoch and prune records; lines that are torn or not such records are skipped."""
        return [r for r in read_jsonl(self.metrics_file) if _is_metric(r)]

    def pruning(self) -> dict | None:
        """pruning.json (None before the first round ends); `RunDirError` if it is damaged."""
        record = _read_object(self.pruning_file)
        if record is not None:
            where = f"pruning.json of {self.id}"
            for entry in schema.PRUNING.check(record, where, needs=("rounds",))["rounds"]:
                schema.ROUND.check(entry, f"a round of {where}", needs=("round",))
        return record

    def summary(self) -> dict | None:
        """summary.json (None until the run is done); `RunDirError` if it is damaged."""
        summary = _read_object(self.summary_file)
        if summary is not None:
            schema.SUMMARY.check(summary, f"summary.json of {self.id}", needs=SUMMARY_NEEDS)
        return summary

    def _summary_or_none(self) -> dict | None:
        try:
            return self.summary()
        except RunDirError:
            return None

    def load_weights(self) -> dict[str, torch.Tensor]:
        if not self.weights_file.is_file():
            raise RunDirError(f"{self.path} has no weights.safetensors yet; the run has not finished a phase")
        return read_tensors(self.weights_file)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A run's safetensors file; `RunDirError` naming it when it is truncated or not safetensors."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{path.name} of {path.parent.name} cannot be read ({exc}); it is damaged or "
                          "truncated") from None


# --------------------------------------------------------------------------------------------------
# ids and the listing (what the app, the CLI and notebooks all use; the roots are `roots.py`'s)
def check_run_id(run_id: str) -> str:
    run_id = str(run_id or "").strip()
    if not RUN_ID_PATTERN.fullmatch(run_id) or run_id in (".", ".."):
        raise RunDirError(f"{run_id!r} is not a run id (letters, digits, '.', '_' and '-' only); "
                          "pick a run from the list")
    return run_id


def run_path(run_id: str, root: str | Path | None = None) -> Path:
    """The folder of `run_id` under the runs root (it need not exist yet)."""
    root = root_or_default(root, runs_root)
    path = inside(root / check_run_id(run_id), root, "run folder")
    if path == root:
        raise RunDirError("the runs root itself is not a run")
    return path


def open_run(run_id: str, root: str | Path | None = None) -> RunDir:
    """The existing run `run_id`; `RunDirError` with a clear message if it is gone or was never a run."""
    path = run_path(run_id, root)
    base = root_or_default(root, runs_root)
    parts = run_id.strip().split("/")
    if any((base.joinpath(*parts[: i + 1])).is_symlink() for i in range(len(parts))):
        raise RunDirError(f"{run_id} is a link, not a run folder; it is not opened")
    run = RunDir(path, run_id.strip())
    if not path.is_dir():
        raise RunDirError(f"run {run_id} no longer exists under {root_or_default(root, runs_root)} "
                          "(deleted or moved); pick another run")
    if not run.exists():
        raise RunDirError(f"{run_id} is not a run directory (it has no config.json)")
    return run


def _row(run: RunDir) -> dict:
    """One line of the listing; a run whose files cannot be used is `unreadable`, with the reason."""
    from .config import prompts_trained
    row = {"id": run.id, "path": str(run.path), "state": None, "progress": None, "message": "", "method": None,
           "dataset": None, "backbone": None, "test_acc": None, "val_acc": None, "tuned_pct": None,
           "tuned_params": None, "wall_s": None, "created": None, "prompt_len": None, "kv_len": None}
    try:
        config, status, summary = run.config(), run.status(), run.summary() or {}
        run.pruning()
    except RunDirError as exc:
        return dict(row, state="unreadable", message=str(exc))
    created = (config.get("extra") if isinstance(config.get("extra"), dict) else {}).get("created")
    return dict(row, state=status.get("state"), progress=status.get("progress"), message=status.get("message", ""),
                method=config["method"], dataset=config["dataset"], backbone=config["backbone"],
                test_acc=summary.get("test_acc"), val_acc=summary.get("val_acc"), tuned_pct=summary.get("tuned_pct"),
                tuned_params=summary.get("tuned_params"), wall_s=summary.get("wall_s"),
                created=str(created or status.get("updated") or ""),
                **dict(zip(("prompt_len", "kv_len"), prompts_trained(config["method"], config.get("prompt_len") or 0,
                                                                     config.get("kv_len") or 0))))


def _folders(folder: Path, root: Path) -> list[Path]:
    """Sub-folders of `folder` named like runs; links and anything resolving outside `root` are skipped."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not NAME_PATTERN.fullmatch(entry.name):
            continue
        try:
            path = inside(entry, root)
        except RunDirError:
            continue
        if path.is_dir():
            found.append(entry)
    return found


def list_runs(root: str | Path | None = None, trials: bool = True) -> list[dict]:
    """Every run under the runs root, newest first: id, path, state, progress, message, method,
    dataset, backbone and, when done, the summary's accuracy, tuned parameters and time.

    A sweep folder's trials are runs too, listed as `<sweep>/<trial>` with their sweep in `sweep`
    (`trials=False` leaves them out). A run whose files cannot be used is listed as `unreadable` with
    the reason in `message`, so one damaged run never hides the others. Entries whose real path leaves
    the root (a symlink pointing elsewhere) are skipped without being read.
    """
    root = root_or_default(root, runs_root)
    rows = []
    if not root.is_dir():
        return rows
    for entry in _folders(root, root):
        run = RunDir(entry)
        if run.exists():
            rows.append(dict(_row(run), sweep=None))
        elif trials and (entry / SWEEP_FILE).is_file():
            for child in _folders(entry, root):
                trial = RunDir(child, f"{entry.name}/{child.name}")
                if trial.exists():
                    rows.append(dict(_row(trial), sweep=entry.name))
    rows.sort(key=lambda r: (str(r.get("created") or ""), r["id"]), reverse=True)
    return rows


def new_run_id(config, root: str | Path | None = None) -> str:
    """A fresh id like `20261124-120102-e2vpt-digits` (a `-2`, `-3`... suffix if taken)."""
    root = root_or_default(root, runs_root)
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", str(config.dataset)).strip("-") or "data"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{config.method}-{dataset}"
    run_id, n = base, 1
    while (root / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id
