"""A finished sweep as one evidence file: what a class, a paper or a colleague can trust without rerunning it.

    python -m e2vpt sweep export SWEEP [--out FILE]     # writes FILE (default ./<sweep>.evidence.json.gz)
    python -m e2vpt sweep open FILE [--as NAME]         # unpacks it as a sweep folder under the runs root

The file is gzip-compressed JSON: the sweep's record (spec, states), and for every trial its resolved
settings (config.json), epoch and pruning records, summary and status, plus what produced it (the
commit, package versions and CPU of each trial's run, and of the export). Weights are not in it: the
frontier, the leaderboard, the training curves and the Pruning page need none.

Opening a file unpacks it into an ordinary sweep folder, so `SweepDir`, the Sweeps page and every other
page read it as they read a sweep trained here; sweep.json then says which file it came from. The file
is bounded before it is expanded (compressed and uncompressed size, trial count) and its trial ids are
checked like any run id, so a hostile file cannot write outside the runs root.

`stale_trials` says whether today's code would run the same settings for the file's spec: the shipped
evidence (`SHIPPED`) is checked by a test, so a change of default that makes it stale cannot go unnoticed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

from ..config import NO_EFFECT_ON_RESULTS, TrainConfig
from ..errors import RunDirError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..provenance import environment
from ..recipes import SAVED_BEFORE_SETTING
from ..runs import MARKER, NAME_PATTERN
from .store import SWEEP_ID, SweepDir

FORMAT = "e2vpt-sweep-evidence"
VERSION = 1
SUFFIX = ".evidence.json.gz"
MAX_COMPRESSED_BYTES = 64 * 2**20
MAX_JSON_BYTES = 128 * 2**20  # the five-task defaults report expands to 2.4 MiB
MAX_TRIALS = 10_000
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "evidence"
SHIPPED = {  # file stem -> what it shows (the Sweeps page's one-click list)
    "class-comparison": "class comparison on digits: linear, VPT-deep at p = 1, 2, 4, 8 and E2VPT at p = 8 x l = 1, 4, "
                        "3 seeds each, at today's defaults",
    "defaults-report": "the defaults report: E2VPT, VPT-deep and the linear probe at today's defaults on five tasks, "
                       "fresh seeds 10-12",
}
# settings that say where a machine keeps things, not what was trained: left out when comparing settings
MACHINE_SETTINGS = ("data_root", *NO_EFFECT_ON_RESULTS)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# -- export -------------------------------------------------------------------------------------------
def _trial_files(sweep: SweepDir, trial_id: str) -> dict | None:
    run = sweep.trial_run(trial_id)
    if not run.exists():
        return None
    summary = run.summary() if run.summary_file.is_file() else None
    return {"config": run.config(), "status": run.status(), "metrics": run.metrics(), "pruning": run.pruning(),
            "summary": summary}


def export(sweep: SweepDir, out: str | Path | None = None) -> Path:
    """Write `sweep` as one evidence file (see the module docstring); returns its path. A sweep that
    is still running is refused: its numbers are not final yet."""
    record = sweep.read()
    state = sweep.state(record)
    if state in ("queued", "running"):
        raise RunDirError(f"sweep {sweep.id} is {state}; export it once it has finished (or cancel it first)")
    trials = {}
    for trial_id, recorded in record["trials"].items():
        try:
            trials[trial_id] = _trial_files(sweep, trial_id)
        except RunDirError as exc:
            raise RunDirError(f"trial {trial_id} of {sweep.id} cannot be exported: {exc}") from None
    evidence = {"format": FORMAT, "version": VERSION, "id": sweep.id, "state": state, "exported": _now(),
                "exported_by": environment(), "sweep": {k: v for k, v in record.items() if k != "evidence"},
                "trials": trials}
    out = Path(out) if out else Path.cwd() / f"{sweep.id}{SUFFIX}"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(json.dumps(evidence, separators=(",", ":"), default=str).encode(), mtime=0)
    atomic_write_bytes(out, data)
    return out


# -- read back ----------------------------------------------------------------------------------------
def read(path: str | Path) -> dict:
    """The evidence in `path`, checked: bounded sizes, the format, trial ids that are plain names.
    `RunDirError` with one line saying what is wrong otherwise."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise RunDirError(f"evidence file {path} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):  # a device or a pipe has no size to bound
        raise RunDirError(f"{path} is not a regular file")
    size = info.st_size
    if size > MAX_COMPRESSED_BYTES:
        raise RunDirError(f"evidence file {path} is {size / 2**20:.0f} MiB; at most {MAX_COMPRESSED_BYTES // 2**20} "
                          "MiB is read")
    try:
        with gzip.open(path, "rb") as f:
            text = f.read(MAX_JSON_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise RunDirError(f"{path} is not a gzip-compressed evidence file ({exc})") from None
    if len(text) > MAX_JSON_BYTES:
        raise RunDirError(f"{path} expands past {MAX_JSON_BYTES // 2**20} MiB; it is not read")
    try:
        evidence = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RunDirError(f"{path} does not hold JSON ({type(exc).__name__})") from None
    if not isinstance(evidence, dict) or evidence.get("format") != FORMAT:
        raise RunDirError(f"{path} is not an e2vpt sweep evidence file")
    if evidence.get("version") != VERSION:
        raise RunDirError(f"{path} is evidence format version {evidence.get('version')}; this e2vpt reads {VERSION}")
    sweep, trials = evidence.get("sweep"), evidence.get("trials")
    if not isinstance(sweep, dict) or not isinstance(sweep.get("spec"), dict) or not isinstance(trials, dict) \
            or not isinstance(sweep.get("trials"), dict):
        raise RunDirError(f"{path} holds no sweep record")
    if len(sweep["trials"]) > MAX_TRIALS:
        raise RunDirError(f"{path} holds {len(sweep['trials']):,} trials; at most {MAX_TRIALS:,} are read")
    if set(trials) - set(sweep["trials"]):
        raise RunDirError(f"{path} holds trial records its sweep does not list")
    for trial_id in sweep["trials"]:  # each becomes a folder name: never a path out of the sweep
        if not NAME_PATTERN.fullmatch(trial_id) or trial_id in (".", ".."):
            raise RunDirError(f"{path} names a trial {trial_id[:60]!r}, which is not a plain folder name")
    for trial_id, files in trials.items():
        if files is None:
            continue
        readable = isinstance(files, dict) and isinstance(files.get("config"), dict) \
            and isinstance(files.get("metrics") or [], list) \
            and all(isinstance(files.get(name), (dict, type(None))) for name in ("status", "pruning", "summary"))
        if not readable:
            raise RunDirError(f"{path}: the records of trial {trial_id} are not what an evidence file holds")
    return evidence


def digest(path: str | Path) -> str:
    """sha256 of the file, read in chunks (call after `read` has bounded it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_trial(folder: Path, files: dict) -> None:
    folder.mkdir()
    atomic_write_json(folder / MARKER, {"format": 1, "created": _now(), "from_evidence": True})
    atomic_write_json(folder / "config.json", files["config"])
    status = dict(files.get("status") or {}, pid=None)
    atomic_write_json(folder / "status.json", status)
    metrics = [m for m in files.get("metrics") or [] if isinstance(m, dict)]
    atomic_write_bytes(folder / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics).encode())
    if isinstance(files.get("pruning"), dict):
        atomic_write_json(folder / "pruning.json", files["pruning"], compact=True)  # as training writes it
    if isinstance(files.get("summary"), dict):
        atomic_write_json(folder / "summary.json", files["summary"])


def open_evidence(path: str | Path, root: str | Path, name: str | None = None) -> SweepDir:
    """Unpack the evidence in `path` as the sweep folder `root/name` (default: the file's sweep id) and
    return it. The same file opened again returns the folder as it is; a folder unpacked from another
    version of the file is replaced; any other folder of that name is refused, untouched."""
    path, root = Path(path), Path(root)
    evidence = read(path)  # bounded and checked before anything else reads it
    sha = digest(path)
    name = name or str(evidence.get("id") or path.name.removesuffix(SUFFIX))
    if not SWEEP_ID.fullmatch(name):
        raise RunDirError(f"{name[:60]!r} is not a usable sweep name (letters, digits, '.', '_', '-')")
    target = SweepDir(root / name)
    if target.path.is_symlink():
        raise RunDirError(f"{target.path} is a link; it is not replaced")
    replaced = None
    if target.path.exists():
        held = None
        try:
            held = (target.read().get("evidence") or {}) if target.exists() else None
        except RunDirError:
            pass
        if not held:
            raise RunDirError(f"{target.path} already holds a sweep that was not opened from an evidence file; "
                              "open it under another name (--as NAME)")
        if held.get("sha256") == sha:
            return target
        replaced = target.path  # an earlier version of the same evidence, unpacked by this function
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{name}.opening-{os.getpid()}"
    retired = root / f".{name}.replaced-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for trial_id, files in evidence["trials"].items():
            if files is not None:
                _write_trial(staging / trial_id, files)
        record = dict(evidence["sweep"], pid=None, evidence={
            "file": path.name, "sha256": sha, "exported": evidence.get("exported"),
            "exported_by": evidence.get("exported_by"), "opened": _now()})
        if record.get("state") in ("queued", "running"):
            record["state"] = "interrupted"
        atomic_write_json(staging / "sweep.json", record)
        if replaced is not None:  # the old copy leaves only once the new one is whole
            os.replace(replaced, retired)
        os.replace(staging, target.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    target.write_leaderboard()
    return target


def shipped() -> list[dict]:
    """The evidence files that ship with e2vpt: name, path and what each shows."""
    return [{"name": stem, "path": SHIPPED_DIR / f"{stem}{SUFFIX}", "about": about} for stem, about in SHIPPED.items()
            if (SHIPPED_DIR / f"{stem}{SUFFIX}").is_file()]


def open_shipped(name: str, root: str | Path) -> SweepDir:
    """Open the shipped evidence `name` under the runs root as the sweep `shipped-<name>`."""
    match = [s for s in shipped() if s["name"] == name]
    if not match:
        raise RunDirError(f"no shipped evidence {name!r}; there is {', '.join(s['name'] for s in shipped()) or 'none'}")
    return open_evidence(match[0]["path"], root, f"shipped-{name}")


def opened_from(sweep: SweepDir) -> dict | None:
    """For a sweep unpacked by `open_evidence`: its source (file, exported, exported_by), the commits its
    trials were trained at (`trained_at`; empty for runs that predate the record), and `stale_trials`
    of its folder as it is now. None for a sweep trained here."""
    record = sweep.read()
    source = record.get("evidence")
    if not source:
        return None
    trials, commits = {}, set()
    for trial_id in record["trials"]:
        try:
            run = sweep.trial_run(trial_id)
            trials[trial_id] = {"config": run.config()}
            commits.add(((run.summary() or {}).get("produced_by") or {}).get("commit"))
        except RunDirError:
            continue
    return {**source, "trained_at": sorted(commits - {None}),
            "stale": stale_trials({"sweep": record, "trials": trials})}


# -- still current? -----------------------------------------------------------------------------------
def _comparable(config: dict) -> dict:
    values = TrainConfig.from_dict({**SAVED_BEFORE_SETTING, **config}).to_dict()
    return {k: v for k, v in values.items() if k != "extra" and k not in MACHINE_SETTINGS}


def stale_trials(evidence: dict) -> list[str]:
    """The trials whose recorded settings differ from what today's code would train for the file's spec
    (a default changed since the sweep ran), each as `trial: setting recorded -> today`. Empty when
    the evidence is current. The trials the spec expands by itself (the grid, a search's scouts) are
    compared; those chosen later from results (protocol vpt's final trials, a pruning search's
    levels) are derived from these, so a changed default shows in them too. A spec this version
    cannot read is itself a difference."""
    from .spec import SweepSpec

    try:
        spec = SweepSpec.from_dict(evidence["sweep"]["spec"])
        today = {t.id: t.config for t in spec.trials()}
        if spec.protocol == "e2vpt-search":
            today.update({t.id: t.config for t in spec.scout_trials()})
    except Exception as exc:  # noqa: BLE001 - a spec from another version: nothing of it can be compared
        return [f"the sweep's spec: this version cannot expand it ({exc})"]
    out = []
    for trial_id, files in evidence["trials"].items():
        if files is None or trial_id not in today:
            continue
        try:
            recorded = _comparable(files["config"])
        except Exception as exc:  # noqa: BLE001 - settings this version no longer accepts
            out.append(f"{trial_id}: its settings are not valid today ({exc})")
            continue
        wanted = _comparable(today[trial_id])
        changed = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if changed:
            out.append(f"{trial_id}: " + ", ".join(f"{k} {recorded.get(k)!r} -> {wanted[k]!r}" for k in changed))
    return out
