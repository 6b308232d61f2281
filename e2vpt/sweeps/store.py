"""The sweep folder: what a sweep keeps on disk, and what the app and the CLI read back.

    S/sweep.json        the spec, the sweep's state (queued, running, done, cancelled, failed) and each
                        trial's status (pending, running, done, stopped, failed, cancelled)
    S/leaderboard.csv   one row per trial: method, (with a protocol) its stage (search, final, scout,
                        levels), the swept values, seed, status, val_acc, test_acc, tuned_params,
                        tuned_pct, wall_s (the trial's own cost), and for protocol e2vpt-search which
                        level each scout's search chose
    S/<trial>/          each trial is an ordinary run directory (same contract as any run), so every
                        page opens it as `<sweep>/<trial>` when S sits in the runs root
    S/ray/              Ray Tune's own records of each time the sweep ran
    S/sweep.lock        held by the driver while it runs: a second driver on S is refused
    S/sweep.log         what the driver printed, when the app started it

A trial's run directory is the truth about its result: the leaderboard is rebuilt from the trials'
summaries, so a driver killed between a trial's end and the leaderboard's update loses nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import json
import re
import time
from pathlib import Path
from statistics import median

from ..errors import RunDirError
from ..fileio import atomic_write_bytes, atomic_write_json, read_json
from ..runs import MARKER, SWEEP_FILE, RunDir, _pid_alive, lock_is_held
from .spec import SweepSpec

SWEEP_STATES = ("queued", "running", "done", "cancelled", "failed", "interrupted")
TRIAL_STATES = ("pending", "running", "done", "stopped", "failed", "cancelled", "interrupted")
FINISHED = ("done", "stopped")  # a resumed sweep does not run these again
LEADERBOARD_COLUMNS = ("trial", "method", "seed", "status", "val_acc", "test_acc", "tuned_params", "tuned_pct",
                       "wall_s", "selected_round", "message")  # val_acc: the latest reported while it runs
SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class SweepDir:
    """One sweep's folder and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = None

    sweep_file = property(lambda self: self.path / SWEEP_FILE)
    leaderboard_file = property(lambda self: self.path / "leaderboard.csv")
    lock_file = property(lambda self: self.path / "sweep.lock")
    cancel_file = property(lambda self: self.path / "cancel.request")
    log_file = property(lambda self: self.path / "sweep.log")
    driver_pid_file = property(lambda self: self.path / "driver.pid")  # written by whoever spawned the driver
    ray_dir = property(lambda self: self.path / "ray")

    @property
    def id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.sweep_file.is_file()

    def trial_run(self, trial_id: str) -> RunDir:
        return RunDir(self.path / trial_id, f"{self.id}/{trial_id}")

    # -- the record ---------------------------------------------------------------------------------
    def read(self) -> dict:
        """sweep.json, checked: `RunDirError` when it is missing, a link or damaged."""
        if self.sweep_file.is_symlink():
            raise RunDirError(f"sweep.json of {self.id} is a link; it is not used")
        record = read_json(self.sweep_file)
        if not isinstance(record, dict) or not isinstance(record.get("spec"), dict) \
                or not isinstance(record.get("trials"), dict):
            raise RunDirError(f"{self.path} holds no readable sweep (sweep.json is missing or damaged)")
        return record

    def spec(self) -> SweepSpec:
        try:
            return SweepSpec.from_dict(self.read()["spec"])
        except RunDirError:
            raise
        except Exception as exc:  # noqa: BLE001 - a spec from another version or edited by hand
            raise RunDirError(f"the spec in {self.sweep_file} cannot be used: {exc}") from None

    def write(self, record: dict) -> None:
        atomic_write_json(self.sweep_file, dict(record, updated=_now()))

    def create(self, spec: SweepSpec, state: str = "queued") -> dict:
        """Start the record of a new sweep in this folder, or check that it is the same sweep again.

        A folder that is neither empty nor a sweep is refused (nothing is written to it); so is a sweep
        folder holding another spec (its trials would not match).
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a folder; pick another --out")
        if self.sweep_file.is_file():
            record = self.read()
            if _comparable(record["spec"]) != _comparable(spec.to_dict()):
                raise RunDirError(f"{self.path} holds another sweep (its spec differs); pick a new --out, or run "
                                  f"`python -m e2vpt sweep --out {self.path}` alone to continue that one")
            return record
        if self.path.is_dir() and any(self.path.iterdir()):
            names = sorted(p.name for p in self.path.iterdir())
            raise RunDirError(f"{self.path} is not empty and holds no sweep ({', '.join(names[:3])}"
                              f"{', ...' if len(names) > 3 else ''}); nothing was written: pick a new or empty --out")
        self.path.mkdir(parents=True, exist_ok=True)
        trials = {t.id: {"method": t.method, "seed": t.seed, "values": t.values, "stage": t.stage, "status": "pending",
                         "message": ""} for t in spec.trials()}
        record = {"format": 1, "spec": spec.to_dict(), "state": state, "message": "", "created": _now(),
                  "pid": None, "trials": trials}
        self.write(record)
        return record

    # -- one driver at a time -----------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the sweep for the life of this process; a second driver is refused in one line."""
        f = open(self.lock_file, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            pid = (read_json(self.sweep_file, {}) or {}).get("pid")
            raise RunDirError(f"{self.path} is being run by another sweep process (pid {pid}); wait for it or cancel "
                              "it first") from None
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def is_locked(self) -> bool:
        return lock_is_held(self.lock_file)

    def state(self, record: dict | None = None) -> str:
        """The sweep's state; a `running` or `queued` sweep whose driver is gone reads `interrupted`."""
        record = record or self.read()
        state = record.get("state")
        if state in ("queued", "running") and not self.is_locked():
            if state == "queued" and _pid_alive(self.driver_pid()):
                return "queued"  # the driver is starting (it has not taken the lock yet)
            return "interrupted"
        return state if state in SWEEP_STATES else "interrupted"

    def driver_pid(self) -> int | None:
        try:
            return int(self.driver_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def request_cancel(self) -> None:
        atomic_write_bytes(self.cancel_file, b"cancel\n")

    # -- trials -------------------------------------------------------------------------------------
    def trial_status(self, trial_id: str, recorded: dict) -> dict:
        """A trial's status and result, read from its run directory first (the truth) and sweep.json second.

        One state everywhere: a trial whose run started and is not active has its run's own state (the
        Runs page's), `interrupted` or `cancelled` included, whatever a driver that went away last wrote
        to sweep.json; `pending` is a trial whose run never started. Also returns the run's status
        (progress, message, remaining_s) for a running trial."""
        run = self.trial_run(trial_id)
        status, summary, live = recorded.get("status", "pending"), None, {}
        message = recorded.get("message", "")
        try:
            summary = run.summary() if run.summary_file.is_file() else None
            live = run.status() if run.exists() else {}
        except RunDirError as exc:
            return {"status": "failed", "message": str(exc), "summary": None, "live": {}}
        run_state = live.get("state")
        if summary is not None:
            status = "done"
        elif status in ("running", "pending") and run_state in ("running", "queued"):
            status = "running"
        elif status in ("running", "pending") and run_state in ("interrupted", "cancelled", "failed"):
            status = run_state  # it continues from its last epoch when the sweep is resumed (but failed)
            message = message or live.get("message", "")
        elif status == "running":  # sweep.json says running, but no run folder: it never started
            status = "pending"
        if status == "failed" and not message and run.exists():
            message = live.get("message", "")
        return {"status": status, "message": message, "summary": summary, "live": live}

    def rows(self, record: dict | None = None) -> list[dict]:
        """The leaderboard: one row per trial, in the spec's order."""
        record = record or self.read()
        swept = swept_settings(record)
        rows = []
        for trial_id, recorded in record["trials"].items():
            if not isinstance(recorded, dict):
                continue
            now = self.trial_status(trial_id, recorded)
            summary = now["summary"] or {}
            values = recorded.get("values") if isinstance(recorded.get("values"), dict) else {}
            running = now["status"] == "running"
            live = now["live"] if running else {}
            interim = recorded.get("val_acc") if now["status"] in ("stopped", "running") else None
            row = {"trial": trial_id, "method": recorded.get("method"), "stage": recorded.get("stage", "search"),
                   "seed": recorded.get("seed"),
                   **{name: values.get(name) for name in swept}, "status": now["status"],
                   "progress": 1.0 if now["status"] in FINISHED + ("failed",) else
                   float(live.get("progress") or 0.0) if running else 0.0,
                   "phase": live.get("message", "") if running else "",
                   "remaining_s": live.get("remaining_s") if running else None,
                   "val_acc": summary.get("val_acc", interim),
                   "test_acc": summary.get("test_acc"), "tuned_params": summary.get("tuned_params"),
                   "tuned_pct": summary.get("tuned_pct"), "wall_s": summary.get("wall_s"),
                   "selected_round": summary.get("selected_round"), "message": now["message"],
                   "phase0_from": recorded.get("phase0_from")}
            rows.append(row)
        chosen = set(search_choices(rows).values())
        for row in rows:
            row["chosen"] = row["trial"] in chosen if row["stage"] == "levels" else None
        return rows

    def write_leaderboard(self, record: dict | None = None) -> list[dict]:
        record = record or self.read()
        rows = self.rows(record)
        protocol = record["spec"].get("protocol", "none")
        stage = ["stage"] if protocol != "none" else []
        chosen = ["chosen"] if protocol == "e2vpt-search" else []
        columns = ["trial", "method", *stage, *swept_settings(record), *LEADERBOARD_COLUMNS[2:-1], *chosen,
                   LEADERBOARD_COLUMNS[-1]]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.leaderboard_file, out.getvalue().encode())
        return rows


def eta(rows: list[dict]) -> dict:
    """How long a running sweep still needs, from measured times: each running trial's own estimate
    (its trainer's, from its epoch times), and for each trial still to run the median wall time of the
    finished trials of its method (else of any finished trial), shared among the trials running at once.
    Returns {"seconds": float or None, "at_least": True when some trial has nothing measured to go by,
    "basis": a sentence}."""
    running = [r for r in rows if r["status"] == "running"]
    waiting = [r for r in rows if r["status"] in ("pending", "interrupted", "cancelled")]
    finished = [r for r in rows if r["status"] == "done" and r.get("wall_s")]
    per_method: dict[str, list[float]] = {}
    for r in finished:
        per_method.setdefault(r["method"], []).append(float(r["wall_s"]))
    every = [float(r["wall_s"]) for r in finished]

    left_running = [float(r["remaining_s"]) for r in running if r.get("remaining_s") is not None]
    guesses = [median(per_method[r["method"]]) if r["method"] in per_method else (median(every) if every else None)
               for r in waiting]
    known = [g for g in guesses if g is not None]
    if not left_running and not known:
        return {"seconds": None, "at_least": bool(waiting or running),
                "basis": "no trial has measured an epoch yet" if waiting or running else "nothing left to run"}
    at_once = max(len(running), 1)
    seconds = max(max(left_running, default=0.0), (sum(left_running) + sum(known)) / at_once)
    basis = (f"{len(running)} running (their own estimates), {len(waiting)} to run at the median time of finished "
             f"trials of their method, {at_once} at a time")
    return {"seconds": seconds, "at_least": len(known) < len(waiting) or len(left_running) < len(running),
            "basis": basis}


def search_choices(rows: list[dict]) -> dict[str, str]:
    """Protocol e2vpt-search's choice for each scout: the finished level with the highest validation
    accuracy, ties going to more pruning (fewer tuned parameters), as in the official code."""
    best: dict[str, dict] = {}
    for row in rows:
        if row.get("stage") != "levels" or row["status"] != "done" or row.get("val_acc") is None:
            continue
        key = (row["val_acc"], -(row.get("tuned_params") or 0))
        held = best.get(row["phase0_from"])
        if held is None or key > (held["val_acc"], -(held.get("tuned_params") or 0)):
            best[row["phase0_from"]] = row
    return {scout: row["trial"] for scout, row in best.items()}


def swept_settings(record: dict) -> list[str]:
    """The settings that vary across a sweep's trials, in first-seen order (the leaderboard's columns)."""
    names: list[str] = []
    for trial in record["trials"].values():
        if isinstance(trial, dict) and isinstance(trial.get("values"), dict):
            names += [n for n in trial["values"] if n not in names]
    return names


def _comparable(spec: dict) -> dict:
    """A spec with its defaults filled in (a sweep.json written before a key existed means that key's
    default) and without its label (renaming a sweep does not make it another sweep)."""
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(SweepSpec)}
    spec = {**defaults, **spec}
    return json.loads(json.dumps({k: v for k, v in spec.items() if k != "name"}, sort_keys=True, default=str))


def is_sweep_folder(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file() and not (path / MARKER).is_file()


def list_sweeps(root: str | Path | None = None) -> list[dict]:
    """Every sweep folder under the runs root, newest first: id, name, state, message, trial counts.
    A sweep whose record cannot be read is listed as `unreadable` with the reason."""
    from ..runs import _folders, root_or_default, runs_root

    root = root_or_default(root, runs_root)
    rows = []
    if not root.is_dir():
        return rows
    for entry in _folders(root, root):
        if not is_sweep_folder(entry):
            continue
        sweep = SweepDir(entry)
        row = {"id": entry.name, "path": str(entry), "name": "", "state": "unreadable", "message": "", "created": "",
               "trials": 0, **{s: 0 for s in TRIAL_STATES}}
        try:
            record = sweep.read()
            statuses = [sweep.trial_status(t, r)["status"] for t, r in record["trials"].items() if isinstance(r, dict)]
            row.update(name=str(record["spec"].get("name") or ""), state=sweep.state(record),
                       message=str(record.get("message") or ""), created=str(record.get("created") or ""),
                       trials=len(statuses), **{s: statuses.count(s) for s in TRIAL_STATES})
        except RunDirError as exc:
            row["message"] = str(exc)
        rows.append(row)
    rows.sort(key=lambda r: (r["created"], r["id"]), reverse=True)
    return rows
