"""Run a sweep's trials on Ray Tune: a local Ray on this machine by default, or an existing cluster.

The driver (this module, in the `python -m e2vpt sweep` process) expands the spec, skips the trials
whose run directories already finished, and hands the rest to `ray.tune.Tuner` as a grid over trial
ids. Each trial runs `e2vpt.train` into its own run directory inside the sweep folder and
reports validation accuracy after every epoch, so an ASHA scheduler can stop the trials that are
behind. A trial that fails records its error and the sweep goes on, also when Ray itself stops its
worker (its memory monitor kills it); a trial whose process dies (a killed driver, a lost node)
resumes from its last epoch the next time the same sweep runs.

Importing this module imports Ray (`e2vpt.sweeps` itself does not).

Ray decides placement (one trial per free CPU slot, or per GPU); this module only says what one trial
needs. Nothing here is a scheduler of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from pathlib import Path

from ray.tune import Stopper

from ..config import TrainConfig
from ..errors import ConfigError, UserError
from ..runs import RunDir
from .progress import Progress
from .spec import SweepSpec
from .store import FINISHED, SweepDir

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PACKAGE_DIR.parent


# --------------------------------------------------------------------------------------------------
# one trial, inside a Ray worker
def run_trial(params: dict, configs: dict, sweep_path: str, threads: int, phase0: dict | None = None) -> None:
    """Train trial `params["trial"]` into its run folder, reporting each epoch's validation accuracy.

    `phase0` (protocol e2vpt-search) maps a level trial to the scout whose phase 0 it starts from, and a
    scout to None: a scout keeps its scores after training, for its levels."""
    import torch
    from ray import tune

    from ..workflow import train

    torch.set_num_threads(max(1, threads))
    trial_id = params["trial"]
    run = RunDir(Path(sweep_path) / trial_id)
    config = TrainConfig.from_dict(configs[trial_id])
    roles = {}
    if phase0 and trial_id in phase0:
        scout = phase0[trial_id]
        roles = {"phase0_from": Path(sweep_path) / scout} if scout else {"score_after": True}

    def report(record: dict) -> None:
        tune.report({"val_acc": record["val_acc"], "round": record["round"], "epoch": record["epoch"]})

    if run.summary_file.is_file():
        summary = run.summary()
    else:
        # a trial that started before (killed, cancelled, failed) continues from its last epoch, or
        # from the first when it never finished one
        summary = train(config, run.path, resume=run.exists(), quiet=True, on_epoch=report, embeddings=False,
                        **roles)  # the Embeddings page computes a trial's on first open
    tune.report({"val_acc": summary["val_acc"], "test_acc": summary["test_acc"], "finished": True})


# --------------------------------------------------------------------------------------------------
# the driver
def run_sweep(spec: SweepSpec, out: str | Path, *, address: str | None = None, cpus: int | None = None,
              gpus: int | None = None, cpus_per_trial: float = 1, gpus_per_trial: float | None = None,
              max_concurrent: int | None = None, ray_temp_dir: str | None = None, quiet: bool = False) -> dict:
    """Run (or continue) the sweep `spec` in folder `out`; returns what happened, trial by trial counts.

    Args:
        spec: what to train.
        out: the sweep folder (created; the same folder again continues the same sweep).
        address: None starts a local Ray with `cpus`/`gpus`; `auto` or `HOST:PORT` joins a running cluster.
        cpus, gpus: the local Ray's resources (default: every CPU, every visible GPU).
        cpus_per_trial, gpus_per_trial: what one trial takes (default GPU: 1 when Ray has one, else 0).
        max_concurrent: at most this many trials at once (default: as many as the resources fit).
        ray_temp_dir: where a local Ray keeps its sockets and logs (default: Ray's).
        quiet: no progress lines.
    """
    sweep = SweepDir(out)
    sweep.create(spec)  # refuses a foreign folder or another spec before anything is locked or started
    sweep.lock()
    ray_session = _RaySession(address, cpus, gpus, ray_temp_dir)
    try:
        record = sweep.read()
        record.update(state="running", message="", pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        sweep.cancel_file.unlink(missing_ok=True)
        say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
        options = dict(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent)
        trials = spec.trials()
        cancelled, ran, stage = False, 0, trials
        if spec.protocol == "e2vpt-search":
            # the scouts first: their pruning levels then share the slots with the spec's own trials
            scouts = spec.scout_trials()
            cancelled, ran = _run_stage(sweep, spec, record, scouts, ray_session, say, "scout ", **options)
            stage = trials + ([] if cancelled else _level_trials(sweep, spec, scouts, say))
            trials = scouts + stage
        if not cancelled:
            cancelled, ran_now = _run_stage(sweep, spec, record, stage, ray_session, say, "", **options)
            ran += ran_now
        if spec.protocol == "vpt" and not cancelled:
            finals = _final_trials(sweep, spec, record, trials, say)
            if finals:
                cancelled, ran_final = _run_stage(sweep, spec, record, finals, ray_session, say, "final ", **options)
                trials, ran = trials + finals, ran + ran_final
        rows = sweep.write_leaderboard(record)
        counts = {s: sum(r["status"] == s for r in rows)
                  for s in ("done", "stopped", "failed", "pending", "interrupted", "cancelled")}
        unfinished = counts["pending"] + counts["interrupted"] + counts["cancelled"]
        record["state"] = "cancelled" if cancelled else ("done" if not unfinished else "interrupted")
        record["message"] = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        sweep.write(record)
        say(f"sweep {record['state']}: {record['message']}; leaderboard: {sweep.leaderboard_file}")
        return {"state": record["state"], "trials": len(trials), "ran": ran, **counts,
                "leaderboard": str(sweep.leaderboard_file)}
    except BaseException as exc:
        with contextlib.suppress(Exception):
            record = sweep.read()
            stopped = isinstance(exc, KeyboardInterrupt)
            record.update(state="cancelled" if stopped else "failed",
                          message="stopped by the user" if stopped else
                          str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
            sweep.write(record)
            sweep.write_leaderboard(record)
        raise
    finally:
        ray_session.close()
        sweep.unlock()


def _run_stage(sweep: SweepDir, spec: SweepSpec, record: dict, trials: list, ray_session, say, label: str,
               **options) -> tuple[bool, int]:
    """Record `trials` in sweep.json (statuses read from their run folders) and run the unfinished ones;
    returns (cancelled, how many ran)."""
    for trial in trials:
        now = sweep.trial_status(trial.id, record["trials"].get(trial.id, {}))
        entry = record["trials"].setdefault(trial.id, {"method": trial.method, "seed": trial.seed,
                                                       "values": trial.values, "stage": trial.stage})
        if trial.phase0_from:
            entry["phase0_from"] = trial.phase0_from
        entry.update(status=now["status"] if now["status"] in FINISHED else "pending",
                     message=now["message"] if now["status"] in FINISHED else "")
    todo = [t for t in trials if record["trials"][t.id]["status"] not in FINISHED]
    sweep.write(record)
    say(f"sweep {sweep.path}: {len(trials)} {label}trial(s), {len(trials) - len(todo)} already finished, "
        f"{len(todo)} to run")
    if not todo:
        return False, 0
    return _tune(sweep, spec, record, todo, ray_session, say=say, **options), len(todo)


def _final_trials(sweep: SweepDir, spec: SweepSpec, record: dict, search: list, say) -> list:
    """Protocol vpt: once every search trial has finished, each method's best configuration on validation
    accuracy, trained again on train + val with the final seeds. None while the search is incomplete."""
    rows = {r["trial"]: r for r in sweep.rows(record)}
    if any(rows[t.id]["status"] not in FINISHED + ("failed",) for t in search):
        return []
    chosen = spec.best_points({t.id: rows[t.id]["val_acc"] for t in search if rows[t.id]["status"] == "done"})
    for method in spec.methods:
        if method in chosen:
            picked = ", ".join(f"{k}={v}" for k, v in chosen[method].items()) or "its only configuration"
            say(f"protocol vpt: {method} retrains {picked} (best validation accuracy) on train + val with seeds "
                f"{' '.join(map(str, spec.final_seeds))}")
        else:
            say(f"protocol vpt: no search trial of {method} finished, so it has no final trials")
    return spec.final_trials(chosen)


def _level_trials(sweep: SweepDir, spec: SweepSpec, scouts: list, say) -> list:
    """Protocol e2vpt-search: the pruning levels of every scout that has finished (a scout still to
    finish gets its levels when the sweep runs again)."""
    levels = []
    for scout in scouts:
        run = sweep.trial_run(scout.id)
        pruning = run.pruning() if run.summary_file.is_file() else None
        if not pruning or not pruning.get("prompt_len"):
            continue
        shape = (pruning["prompt_layers"], pruning["prompt_len"])
        levels += spec.level_trials(scout, shape, pruning["segments"])
    if levels:
        say(f"protocol e2vpt-search: {len(levels)} pruning level(s) of {len(scouts)} scored phase 0 run(s), each "
            "retrained from that shared state")
    return levels


def _tune(sweep: SweepDir, spec: SweepSpec, record: dict, todo: list, ray_session, *, cpus_per_trial, gpus_per_trial,
          max_concurrent, say) -> bool:
    """Run `todo` on Ray Tune; returns True when the sweep was cancelled."""
    from ray import tune

    cluster = ray_session.start()
    if gpus_per_trial is None:
        gpus_per_trial = 1 if cluster.get("GPU", 0) >= 1 else 0
    trial_configs = [TrainConfig.from_dict(t.config) for t in todo]
    if gpus_per_trial and any(c.device == "cpu" for c in trial_configs):
        raise ConfigError("the sweep asks for a GPU per trial but its trials use --device cpu")
    configs = {t.id: t.config for t in todo}
    phase0 = {t.id: t.phase0_from for t in todo if t.stage in ("scout", "levels")}
    # the longest trials first (the classic rule for packing jobs onto slots): the sweep then ends on
    # short trials rather than on one long trial while the other slots idle
    todo = [t for _, t in sorted(zip(trial_configs, todo), key=lambda pair: -_expected_cost(*pair))]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, configs=configs, sweep_path=str(sweep.path.resolve()),
                             threads=max(1, int(cpus_per_trial)), phase0=phase0),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    progress = Progress(sweep, record, say, len(todo))
    name = time.strftime("run-%Y%m%d-%H%M%S") + ("-final" if todo[0].stage == "final" else "")
    idle_losses = 0
    for attempt in itertools.count():
        try:
            _tuner(trainable, todo, spec, trial_configs, max_concurrent, sweep, progress,
                   name + (f"-{attempt + 1}" if attempt else "")).fit()
            break
        except RuntimeError as exc:
            lost = _lost_worker(exc)
            if lost is None:
                raise
            if not progress.worker_lost(lost):  # a worker lost between two trials: nothing to fail
                idle_losses += 1
                if idle_losses > 2:
                    raise
        # Ray stopped a trial's worker (its memory monitor, a crash) in a way Tune's controller does not
        # handle: it raised instead of failing that one trial. That trial failed; the others go on in a
        # new Tune experiment (a trial that was running continues from its last epoch).
        todo = [t for t in todo if record["trials"][t.id]["status"] not in FINISHED + ("failed",)]
        if not todo or progress.cancelled or sweep.cancel_file.exists():
            break
    return progress.cancelled or sweep.cancel_file.exists()


def _tuner(trainable, todo: list, spec: SweepSpec, trial_configs: list, max_concurrent, sweep: SweepDir,
           progress, name: str):
    """The Tune experiment that runs `todo` (in that order) as a grid over their ids."""
    from ray import tune

    scheduler = None
    if spec.scheduler == "asha" and todo[0].stage == "search":  # final trials are reported, never stopped
        # (protocol e2vpt-search, whose scouts and levels must not be stopped either, refuses asha)
        from ray.tune.schedulers import ASHAScheduler

        longest = max(c.epochs + c.rounds * c.resolved_retrain_epochs for c in trial_configs)
        scheduler = ASHAScheduler(max_t=longest + 1, grace_period=1, reduction_factor=2)
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.id for t in todo])},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler,
                                    max_concurrent_trials=max_concurrent,
                                    # a trial's process is kept for the next one: torch, timm and the
                                    # built-in datasets are loaded once per slot, not once per trial
                                    reuse_actors=True,
                                    trial_name_creator=lambda trial: trial.config["trial"],
                                    trial_dirname_creator=lambda trial: trial.config["trial"]),
        run_config=tune.RunConfig(name=name, storage_path=str(sweep.ray_dir.resolve()), verbose=0,
                                  callbacks=[progress], stop=_CancelStopper(sweep),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _lost_worker(exc: BaseException) -> Exception | None:
    """The Ray error behind Tune's "Caught unexpected exception", when a trial's worker was lost.

    Tune's actor manager handles an actor's death (RayActorError) and a task's error (RayTaskError) but
    raises RuntimeError for any other Ray error of an actor task, such as the OutOfMemoryError of a
    trial whose worker Ray's memory monitor killed mid-training."""
    from ray.exceptions import RayActorError, RayError, RayTaskError

    cause = exc.__cause__
    if isinstance(cause, RayError) and not isinstance(cause, (RayActorError, RayTaskError)):
        return cause
    return None


def _expected_cost(config: TrainConfig, trial) -> float:
    """A trial's relative cost for ordering: its epochs (a scoring pass counts as one), halved for a method
    that trains the head alone (a linear probe), which never backpropagates through the backbone. A pruning
    level trains its round alone."""
    epochs = (0 if trial.phase0_from else config.epochs) + config.rounds * (config.resolved_retrain_epochs + 1)
    head_only = config.spec.visual == "none" and not config.spec.kv and not config.spec.train_backbone
    return epochs * (0.5 if head_only else 1.0)


class _RaySession:
    """Ray for the whole sweep (both stages of a protocol): started at the first trial to run, shut down
    at the end when the sweep started it; never started when nothing is left to train."""

    def __init__(self, address, cpus, gpus, temp_dir) -> None:
        self.args, self.started, self.owned = (address, cpus, gpus, temp_dir), False, False

    def start(self) -> dict:
        """Connect (once); returns the cluster's resources."""
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the run folders are the records
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        import ray

        if not self.started:
            self.owned = _start_ray(*self.args)
            self.started = True
        return ray.cluster_resources()

    def close(self) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False


def _start_ray(address: str | None, cpus: int | None, gpus: int | None, temp_dir: str | None) -> bool:
    """Connect to Ray: start a local one (returns True: ours to shut down) or join `address`."""
    import ray

    if ray.is_initialized():  # a notebook's own Ray: use it as it is
        return False
    for name in ("ray", "ray._private.authentication.authentication_token_setup",  # a notice for operators
                 "ray.tune.analysis.experiment_analysis"):  # misses Tune's result files: the run folders are ours
        logging.getLogger(name).setLevel(logging.ERROR)
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                     runtime_env={"py_modules": [str(PACKAGE_DIR)]})  # the cluster gets this very e2vpt
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: all "cannot reach it"
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ("check the address (`ray status` on the head node) or leave --address out to run here; a cluster "
                    "with token authentication (Ray's default) also needs RAY_AUTH_MODE=token and its token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token")
            raise UserError(f"cannot reach the Ray cluster at {address!r}: {text}; {hint}") from None
        return True
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    kwargs = {"num_cpus": cpus or os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": False,
              "logging_level": logging.WARNING, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    if gpus is not None:
        kwargs["num_gpus"] = gpus
    if temp_dir:
        kwargs["_temp_dir"] = str(Path(temp_dir).resolve())
    ray.init(**kwargs)
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a HOST:PORT nothing answers on in seconds (Ray itself retries for minutes before it gives up)."""
    import socket

    if address == "auto":
        return  # Ray finds a cluster started on this machine, or says there is none, at once
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be auto or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}; check the address "
                        "(`ray status` on the head node) or leave --address out to run here") from None


class _CancelStopper(Stopper):
    """Stops every trial once the app (or a user) leaves `cancel.request` in the sweep folder."""

    def __init__(self, sweep: SweepDir) -> None:
        self.sweep, self.checked, self.cancelled = sweep, 0.0, False

    def __call__(self, trial_id, result) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        if not self.cancelled and time.monotonic() - self.checked > 0.5:
            self.checked = time.monotonic()
            self.cancelled = self.sweep.cancel_file.exists()
        return self.cancelled
