"""Start, cancel, resume and delete runs in their own processes: what the app's buttons call.

Training never runs inside a page script. `start_run` writes a fresh run folder (`config.json`,
status `queued`) and spawns `python -m e2vpt train --config ... --run-dir ... --quiet` in its own
process session, so the app stays responsive, a page refresh or a server restart finds the run again
(its id is in the URL) and closing the browser does not stop it. Roots, ids and the listing live in
`e2vpt.runs`; every path checked here stays inside those roots.

No Streamlit here: a notebook or a script can drive runs the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import TrainConfig
from .errors import BackboneError, DataError, RunDirError
from .fileio import atomic_write_bytes, atomic_write_json, read_json
from .runs import (ACTIVE_STATES, DATA_ROOT_ENV, RUN_ID_PATTERN, SWEEP_FILE, RunDir, check_run_id, data_root, inside,
                   new_run_id, open_run, root_or_default, run_path, runs_root)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Child processes this server started, polled now and then so finished ones are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


# --------------------------------------------------------------------------------------------------
# state
def is_active(run: RunDir) -> bool:
    """True while the run is queued or training (a dead process reads as `interrupted`, not active)."""
    _reap()
    return run.status().get("state") in ACTIVE_STATES


def planned_epochs(run: RunDir) -> int | None:
    """Epochs the run will train in all (first phase plus every retraining), for a progress axis."""
    try:
        config = TrainConfig.from_dict(run.config())
    except Exception:  # an unreadable or foreign config: no plan to show
        return None
    return config.epochs + config.rounds * config.resolved_retrain_epochs


def log_tail(run: RunDir, lines: int = 20) -> str:
    """The last lines of the run's train.log (what the training process printed)."""
    try:
        with open(run.log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 20_000))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# checks before anything is created
def check_inputs(config: TrainConfig, data: str | Path | None = None) -> TrainConfig:
    """Resolve and check the config's paths against the data root; returns the config with absolute paths.

    Raises `DataError` for a dataset name that does not exist, a data folder or weights file that is
    missing or outside the data root, or a folder dataset without a folder.
    """
    from .data import canonical_name, list_datasets

    droot = root_or_default(data, data_root)
    name = canonical_name(config.dataset)
    entry = next(e for e in list_datasets() if e["name"] == name)
    values = config.to_dict()
    if config.data_root:
        folder = inside(config.data_root, droot, "data folder")
        if not folder.is_dir():
            raise DataError(f"data folder {config.data_root!r} does not exist under {droot}; "
                            "put the dataset there or pick another folder")
        values["data_root"] = str(folder)
    elif entry["kind"] == "folder":
        raise DataError(f"dataset {name} reads your own images: choose its folder under {droot}")
    elif entry["needs_root"] and entry["kind"] == "builtin":  # Fashion-MNIST without Debian's copy
        if not config.download:
            raise DataError(f"{name}'s files are not on this machine: install Debian's dataset-fashion-mnist "
                            f"(apt-get install dataset-fashion-mnist), or put its four files in a folder under "
                            f"{droot} and choose it as the data folder, or tick \"Download the dataset\"")
        droot.mkdir(parents=True, exist_ok=True)
        values["data_root"] = str(droot)
    elif entry["kind"] == "torchvision":  # torchvision keeps its files in the data root itself
        if config.download:
            droot.mkdir(parents=True, exist_ok=True)
        elif not droot.is_dir():
            raise DataError(f"dataset {name} is read from the data folder {droot}, which does not exist; "
                            f"put the dataset there, set ${DATA_ROOT_ENV}, or allow downloading")
        values["data_root"] = str(droot)
    if config.weights:
        weights = inside(config.weights, droot, "weights file")
        if not weights.is_file():
            raise DataError(f"weights file {config.weights!r} does not exist under {droot}")
        if weights.suffix != ".safetensors":
            raise DataError(f"weights file {weights.name} is not .safetensors; only safetensors weights are loaded")
        values["weights"] = str(weights)
    _check_backbone(config)
    return TrainConfig.from_dict(values)


def check_run_data(run: RunDir, data: str | Path | None = None) -> TrainConfig:
    """An existing run's config, its data folder and weights checked again against the data root:
    config.json may have been edited since the run started, and nothing outside the roots is read."""
    return check_inputs(TrainConfig.from_dict(run.config()), data)


def _check_backbone(config: TrainConfig) -> None:
    """The mistakes a backbone choice can make, caught before a run folder exists."""
    from .models.backbones import DEMO_NAME, DEMO_WEIGHTS

    if config.backbone == DEMO_NAME:
        if config.pretrained and not config.weights and not DEMO_WEIGHTS.is_file():
            raise BackboneError(f"the shipped demo weights ({DEMO_WEIGHTS.name}) are missing; untick "
                                "'pretrained' to train on a random backbone, or run `python -m e2vpt pretrain`")
        return
    import timm

    base = config.backbone.split(".")[0]
    if not (timm.is_model(config.backbone) or timm.is_model(base)):
        raise BackboneError(f"unknown backbone '{config.backbone}'; use `demo` or a timm ViT or Swin name such as "
                            "vit_base_patch16_224.augreg_in21k")


_EMULATED_BF16 = ("bf16 on this CPU is emulated (it has no native bfloat16 instructions): training takes about "
                  "10 to 15 times as long as in fp32 (measured: benchmarks/README.md, Precision). fp32 is the "
                  "CPU's default; bf16 pays on a GPU or a CPU with AVX512-BF16 or AMX.")


def _bf16_is_emulated(config: TrainConfig) -> bool:
    """bf16 asked for on a CPU whose oneDNN has no bfloat16 kernels (PyTorch then falls back to slow ones)."""
    if config.precision != "bf16":
        return False
    import torch

    from .errors import UserError
    from .training.build import resolve_device

    try:
        device = resolve_device(config.device)
    except UserError:  # no GPU for --device cuda: starting says so
        return False
    return device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def start_warnings(config: TrainConfig) -> list[str]:
    """Settings that are allowed but probably not meant, in plain words, for the form to show before it
    starts a run: bf16 on a CPU that only emulates it; more prompts per layer than the image has
    patches. The backbone is built on the meta device (no weights, no memory: a tenth of a second)
    to count its patches; a backbone that cannot be built gets no warning here (starting it says why)."""
    import torch

    from .models.backbones import create_backbone

    warnings = [_EMULATED_BF16] if _bf16_is_emulated(config) else []
    prompts = [(n, what) for n, what in zip(config.prompts_trained, ("visual prompt tokens", "key-value prompts")) if n]
    if not prompts:
        return warnings
    try:
        with torch.device("meta"):
            backbone = create_backbone(config.backbone, pretrained=False, img_size=config.img_size,
                                       global_pool=config.global_pool)
        patches = int(backbone.patch_embed.num_patches)
    except Exception:  # an unknown name, a backbone timm cannot build: nothing to compare with
        return warnings
    for count, what in prompts:
        if count > patches:
            warnings.append(f"{count} {what} per layer outnumber the {patches} patches of a {config.backbone} image: "
                            f"the image becomes the minority of what each layer attends to"
                            + (f", and every layer's sequence grows from {1 + patches} to {1 + patches + count} "
                               f"tokens (attention about {((1 + patches + count) / (1 + patches)) ** 2:.0f}x the "
                               "cost)" if what.startswith("visual") else "") + ".")
    return warnings


# --------------------------------------------------------------------------------------------------
# processes
def _reap() -> None:
    """Collect the exit status of children (runs, sweep drivers) that ended, so none lingers as a defunct
    process; called whenever the app looks at a run or a sweep."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _spawn(run: RunDir, args: list[str]) -> subprocess.Popen:
    return _spawn_logged(run.log_file, args)


def _hand_over_status(run: RunDir, proc: subprocess.Popen, message: str) -> None:
    """Record the child's pid in the queued status, unless the child already wrote its own status."""
    status = read_json(run.status_file, {}) or {}
    if status.get("state") == "queued" and status.get("pid") == os.getpid() and proc.poll() is None:
        run.write_status("queued", None, message, pid=proc.pid)


def start_run(config: TrainConfig, root: str | Path | None = None, run_id: str | None = None,
              data: str | Path | None = None) -> RunDir:
    """Create a fresh run folder for `config` and start training it in its own process.

    Args:
        config: a validated `TrainConfig` (build it first: an invalid one raises `ConfigError`).
        root: the runs root (default: `runs_root()`).
        run_id: the folder name (default: `new_run_id`); an existing folder is refused, so pressing
            Start twice with the same id starts one run, not two.
        data: the data root the config's paths must stay in (default: `data_root()`).

    Returns the `RunDir`; its status is `queued` until the trainer takes over.
    """
    root = root_or_default(root, runs_root)
    root.mkdir(parents=True, exist_ok=True)
    config = check_inputs(config, data)
    run_id = run_id or new_run_id(config, root)
    if "/" in str(run_id):
        raise RunDirError(f"a new run's id cannot contain '/' ({run_id!r}); sweeps make their own trials")
    path = run_path(run_id, root)
    try:
        path.mkdir()  # exclusive: a second start for the same id fails here
    except FileExistsError:
        existing = RunDir(path)
        state = existing.status().get("state") if existing.exists() else "not a run"
        raise RunDirError(f"run {run_id} already exists (state: {state}); it was not started again") from None
    run = RunDir(path)
    try:
        run.mark()
        config.extra.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_json(run.config_file, config.to_dict())
        run.write_status("queued", 0.0, "waiting for the training process to start")
        proc = _spawn(run, ["train", "--config", str(run.config_file), "--run-dir", str(path), "--quiet"])
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    _hand_over_status(run, proc, "training process started; loading backbone and data")
    return run


def resume_run(run: RunDir | str | Path, root: str | Path | None = None, data: str | Path | None = None) -> RunDir:
    """Continue a cancelled, interrupted or failed run from its last completed epoch.

    The run's data folder and weights are checked again against the data root (`data`, default
    `data_root()`): its config.json may have been edited since it started.
    """
    run = _as_run(run, root)
    state = run.status().get("state")
    if state in ACTIVE_STATES:
        raise RunDirError(f"run {run.id} is still {state}; it cannot be resumed while it trains")
    if state == "done" or run.summary_file.is_file():
        raise RunDirError(f"run {run.id} already finished; nothing to resume")
    check_run_data(run, data)
    run.cancel_file.unlink(missing_ok=True)  # or the trainer would stop again at its first step
    run.write_status("queued", None, "resuming from the last completed epoch")
    try:
        proc = _spawn(run, ["train", "--resume", str(run.path), "--quiet"])
    except BaseException:
        run.write_status(state if state in ("cancelled", "failed", "interrupted") else "interrupted", None,
                         "could not start the training process")
        raise
    _hand_over_status(run, proc, "training process started; resuming")
    return run


def _is_trainer(pid: int) -> bool:
    """Only signal a process that really is an e2vpt trainer (pids get reused)."""
    if not pid or pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"e2vpt" in cmdline and b"train" in cmdline


def cancel_run(run: RunDir | str | Path, root: str | Path | None = None) -> bool:
    """Ask a run to stop cleanly (state `cancelled`, partial results kept).

    Writes `cancel.request` (the trainer checks it every step) and sends SIGTERM to the training
    process named in status.json. Returns False if the run was not active.
    """
    run = _as_run(run, root)
    status = run.status()
    if status.get("state") not in ACTIVE_STATES:
        return False
    atomic_write_bytes(run.cancel_file, f"cancel requested at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    pid = status.get("pid")
    if isinstance(pid, int) and _is_trainer(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    _reap()
    return True


def delete_run(run: RunDir | str | Path, root: str | Path | None = None) -> list[str]:
    """Delete a run: only a run folder inside the runs root, never an active run, and only its files.

    Files a run does not write (a note the user put there, a folder of photos) are kept, and so is
    the folder that holds them. Returns the names kept (empty when the folder itself is gone).
    """
    run = _as_run(run, root)
    if run.path.is_symlink():
        raise RunDirError(f"{run.id} is a link, not a run folder; it was not deleted")
    if not run.is_run_folder():
        raise RunDirError(f"{run.id} is not a run folder; it was not deleted")
    if is_active(run):
        raise RunDirError(f"run {run.id} is still training; cancel it before deleting it")
    kept = []
    for entry in sorted(run.path.iterdir()):
        if not RunDir.owns(entry.name):
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()  # a link is removed, never what it points to
    if not kept:
        run.path.rmdir()
    return kept


def _as_run(run: RunDir | str | Path, root: str | Path | None) -> RunDir:
    """A `RunDir` checked to be an existing run inside the runs root (an id or a path is accepted).

    A `RunDir` object (made by code, e.g. returned by `start_run`) defaults to its own parent as the
    root; ids and paths (what a user can type) default to `runs_root()`.
    """
    if isinstance(run, RunDir):
        root = run.path.resolve().parent if root is None else root
        run = run.path
    root = root_or_default(root, runs_root)
    path = Path(run)
    if not path.is_absolute() and RUN_ID_PATTERN.fullmatch(str(run)):
        return open_run(str(run), root)  # an id: `name`, or `sweep/trial`
    resolved = inside(path, root, "run folder")
    if resolved.parent != root and not (resolved.parent.parent == root and (resolved.parent / SWEEP_FILE).is_file()):
        raise RunDirError(f"{path} is not a run folder directly under {root} or in a sweep there")
    return open_run(str(resolved.relative_to(root)), root)


# --------------------------------------------------------------------------------------------------
# sweeps: the same pattern, one driver process per sweep (it starts Ray; Ray starts the trials)
def start_sweep(spec, root: str | Path | None = None, sweep_id: str | None = None):
    """Create a sweep folder under the runs root for `spec` (a `SweepSpec`) and start its driver,
    `python -m e2vpt sweep --out FOLDER --quiet`, in its own process session. Returns the `SweepDir`."""
    from .sweeps import SweepDir

    root = root_or_default(root, runs_root)
    root.mkdir(parents=True, exist_ok=True)
    if sweep_id is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name or "sweep").strip("-").lower()[:40] or "sweep"
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    path = run_path(check_run_id(sweep_id), root)
    try:
        path.mkdir()  # exclusive: pressing Start twice starts one sweep
    except FileExistsError:
        raise RunDirError(f"{sweep_id} already exists under {root}; it was not started again") from None
    sweep = SweepDir(path)
    try:
        sweep.create(spec)
        atomic_write_bytes(sweep.driver_pid_file, f"{os.getpid()}\n".encode())  # until the driver's is known
        proc = _spawn_logged(sweep.log_file, ["sweep", "--out", str(path), "--quiet"])
        atomic_write_bytes(sweep.driver_pid_file, f"{proc.pid}\n".encode())
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return sweep


def resume_sweep(sweep_id: str, root: str | Path | None = None):
    """Start the driver again on an interrupted or cancelled sweep: finished trials are kept."""
    sweep = open_sweep(sweep_id, root)
    state = sweep.state()
    if state in ("queued", "running"):
        raise RunDirError(f"sweep {sweep.id} is still {state}")
    record = sweep.read()
    record.update(state="queued", message="waiting for the sweep process to start", pid=None)
    sweep.write(record)
    atomic_write_bytes(sweep.driver_pid_file, f"{os.getpid()}\n".encode())
    proc = _spawn_logged(sweep.log_file, ["sweep", "--out", str(sweep.path), "--quiet"])
    atomic_write_bytes(sweep.driver_pid_file, f"{proc.pid}\n".encode())
    return sweep


def cancel_sweep(sweep_id: str, root: str | Path | None = None) -> bool:
    """Ask a running sweep to stop: its driver stops every trial (each keeps what it trained and
    continues when the sweep is resumed). Returns False when the sweep was not running."""
    sweep = open_sweep(sweep_id, root)
    if sweep.state() not in ("queued", "running"):
        return False
    sweep.request_cancel()
    return True


def open_sweep(sweep_id: str, root: str | Path | None = None):
    """The sweep folder `sweep_id` under the runs root; `RunDirError` when it is not one."""
    from .sweeps import SweepDir

    _reap()  # a driver that ended is collected here, not left defunct until the next start

    root = root_or_default(root, runs_root)
    path = run_path(check_run_id(sweep_id), root)
    if (root / sweep_id).is_symlink() or not (path / SWEEP_FILE).is_file() or "/" in sweep_id:
        raise RunDirError(f"{sweep_id} is not a sweep under {root}; pick one from the list")
    return SweepDir(path)


def _spawn_logged(log_file: Path, args: list[str]) -> subprocess.Popen:
    _reap()
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_file, "ab") as log:
        log.write(f"\n$ python -m e2vpt {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "e2vpt", *args], cwd=str(PROJECT_ROOT), env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    return proc
