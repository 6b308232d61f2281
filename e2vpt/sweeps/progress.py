"""A sweep's progress as Ray Tune reports it: each trial's state in sweep.json, the leaderboard, a line
per finished trial, and one clear line for a trial that failed or whose worker Ray lost."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from ray.tune import Callback

from ..runs import RunDir
from .store import SweepDir


class Progress(Callback):
    """Keeps sweep.json's per-trial status and the leaderboard current, and prints a line per trial."""

    def __init__(self, sweep: SweepDir, record: dict, say, total: int) -> None:
        self.sweep, self.record, self.say, self.total = sweep, record, say, total
        self.finished, self.cancelled, self.written = 0, False, 0.0

    def _entry(self, trial) -> dict:
        return self.record["trials"][trial.config["trial"]]

    def _save(self, force: bool = True) -> None:
        if force or time.monotonic() - self.written > 1.0:
            self.written = time.monotonic()
            self.sweep.write(self.record)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._entry(trial).update(status="running", message="")
        self._save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self._entry(trial)
        entry.update(val_acc=result.get("val_acc"), epoch=result.get("epoch"), round=result.get("round"),
                     reports=result.get("training_iteration"))
        self._save(force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        trial_id = trial.config["trial"]
        run = self.sweep.trial_run(trial_id)
        entry = self._entry(trial)
        if run.summary_file.is_file():
            entry.update(status="done", message="")
        elif self.sweep.cancel_file.exists():
            self.cancelled = True
            entry.update(status="cancelled", message="cancelled by the user; it continues when the sweep is resumed")
        else:
            entry.update(status="stopped", message=f"stopped early by the scheduler after {entry.get('reports', 0)} "
                                                   f"report(s) (val acc {entry.get('val_acc') or 0:.3f})")
        self._finished(trial_id, entry)

    def on_trial_error(self, iteration, trials, trial, **info):
        trial_id = trial.config["trial"]
        entry = self._entry(trial)
        entry.update(status="failed", message=_trial_error(self.sweep.trial_run(trial_id), trial))
        self._finished(trial_id, entry)

    def worker_lost(self, error: Exception) -> list[str]:
        """Tune's controller stopped the whole experiment because a trial's worker was lost (`_lost_worker`):
        the trials whose workers Ray names in `error` failed with its reason, the others that were running
        go back to pending (they continue from their last epoch). Returns the failed trials' ids; when
        the error names none of them, every running trial counts as lost."""
        running = [tid for tid, entry in self.record["trials"].items() if entry.get("status") == "running"]
        named = {int(pid) for pid in re.findall(r"\bpid=(\d+)", str(error))}
        lost = [tid for tid in running if _worker_pid(self.sweep.trial_run(tid)) in named] or running
        reason = _lost_reason(error)
        for trial_id in running:
            entry = self.record["trials"][trial_id]
            if trial_id in lost:
                entry.update(status="failed", message=reason)
                self._finished(trial_id, entry)
            else:
                entry.update(status="pending", message="interrupted when Ray lost another trial's worker; it "
                                                      "continues from its last epoch")
        self._save()
        return lost

    def _finished(self, trial_id: str, entry: dict) -> None:
        self.finished += 1
        self._save()
        rows = []
        with contextlib.suppress(Exception):
            rows = self.sweep.write_leaderboard(self.record)
        row = next((r for r in rows if r["trial"] == trial_id), {})
        result = (f"val {row['val_acc']:.3f} test {row['test_acc']:.3f}, {row['tuned_params']:,} tuned, "
                  f"{row['wall_s']:.0f} s" if row.get("test_acc") is not None else entry.get("message", ""))
        self.say(f"[{self.finished}/{self.total}] {trial_id} {entry['status']}: {result}")


def _worker_pid(run: RunDir) -> int | None:
    """The process that trains (or last trained) this run, as its status.json says."""
    with contextlib.suppress(Exception):
        return int(run.status()["pid"])
    return None


def _lost_reason(error: Exception) -> str:
    """One line for a trial whose worker Ray stopped, from the error Tune's controller raised."""
    text = str(error).strip()
    return _worker_loss(text) or (f"Ray lost this trial's worker ({type(error).__name__}: "
                                  f"{text.splitlines()[0][:300] if text else 'no message'}); the same command retries it")


def _worker_loss(text: str) -> str | None:
    """One line for Ray's own account of a lost worker (its memory monitor's kill, a process that died),
    in place of Ray's page of advice; None when `text` is not that."""
    retry = "the same command retries it from its last epoch"
    if "running low on memory" in text:
        usage = re.search(r"was ([\d.]+ ?[KMGT]?B used / [\d.]+ ?[KMGT]?B limit)", text)
        return ("Ray stopped this trial's worker because the machine ran low on memory"
                + (f" ({usage.group(1)})" if usage else "") + f"; {retry} (fewer at once: --max-concurrent)")
    if "actor died unexpectedly" in text or "its worker process has died" in text:
        return ("Ray lost this trial's worker: its process died (killed, out of memory, or crashed); " + retry)
    return None


def _trial_error(run: RunDir, trial) -> str:
    """One line for a failed trial: the run's own message when it wrote one, else the error's last line."""
    with contextlib.suppress(Exception):
        status = run.status()
        if status.get("state") == "failed" and status.get("message"):
            return status["message"]
    error = getattr(trial, "error_file", None)
    text = ""
    with contextlib.suppress(Exception):
        text = Path(error).read_text() if error else ""
    lost = _worker_loss(text)
    if lost:
        return lost
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):  # the exception's own line, not Ray's wrapper
        if not line.startswith(("ray.", "Traceback", "File ")) and ":" in line:
            return line[:500]
    return lines[-1][:500] if lines else "the trial failed (no error message was recorded)"

