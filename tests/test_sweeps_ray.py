"""Sweeps really run by Ray Tune: a local Ray started by the sweep, an existing cluster joined by
address, a failing trial, a killed driver. Each starts Ray with explicit CPUs, no dashboard and its
own temp dir, and leaves nothing running."""

from __future__ import annotations

import contextlib
import csv
import json
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from e2vpt.runs import _pid_alive, list_runs
from e2vpt.sweeps import SweepDir
from small_data import digits_folder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def sweep(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2vpt", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def leaderboard(folder: Path) -> list[dict]:
    with open(folder / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def ray_tmp(tmp_path_factory):
    """Ray's temp dir inside pytest's tmp folder, short enough for Ray's socket paths (108 bytes)."""
    return str(tmp_path_factory.mktemp("ray"))


def test_the_issue_command_trains_six_trials_through_ray_tune_and_again_trains_nothing(tmp_path, ray_tmp):
    out = tmp_path / "S"
    command = ["--backbone", "demo", "--dataset", "digits", "--methods", "linear", "vpt-deep", "e2vpt", "--epochs", "1",
               "--retrain-epochs", "1", "--prune-rounds", "1", "--grid", "lr=0.01,0.03", "--seeds", "0", "--out",
               str(out), "--cpus", "2", "--ray-temp-dir", ray_tmp]
    first = sweep(*command)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = leaderboard(out)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert sorted((r["method"], float(r["lr"])) for r in rows) == sorted(
        (m, lr) for m in ("linear", "vpt-deep", "e2vpt") for lr in (0.01, 0.03))
    assert all(0 < float(r["test_acc"]) <= 1 and int(r["tuned_params"]) > 0 for r in rows)
    # Ray Tune ran them: its experiment folder names every trial, and each trained in a Ray worker
    tune_runs = list((out / "ray").glob("run-*"))
    assert len(tune_runs) == 1
    assert {p.name for p in tune_runs[0].iterdir() if p.is_dir()} == {r["trial"] for r in rows}
    record = json.loads((out / "sweep.json").read_text())
    assert record["state"] == "done" and all(t["status"] == "done" for t in record["trials"].values())
    summaries = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert len(summaries) == 6
    # a trial skips the end-of-training embeddings (one of many; its page computes them when opened)
    assert not list(out.glob("*/analysis")) and all("embeddings_s" not in json.loads(p.read_text()) for p in summaries)

    again = sweep(*command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 already finished, 0 to run" in again.stdout
    assert len(list((out / "ray").glob("run-*"))) == 1  # Ray was not even started
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == summaries


def test_the_vpt_protocol_searches_on_validation_then_retrains_each_best_on_train_and_val(tmp_path, ray_tmp):
    out = tmp_path / "S"
    command = ["--methods", "linear", "--epochs", "1", "--grid", "lr=0.0003,0.05", "--protocol", "vpt",
               "--final-seeds", "0", "1", "--dataset", "imagefolder", "--data-root", str(digits_folder()),
               "--out", str(out), "--cpus", "2", "--ray-temp-dir", ray_tmp]
    first = sweep(*command)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = leaderboard(out)
    search = [r for r in rows if r["stage"] == "search"]
    finals = [r for r in rows if r["stage"] == "final"]
    assert len(search) == 2 and len(finals) == 2 and {r["status"] for r in rows} == {"done"}
    best = max(search, key=lambda r: float(r["val_acc"]))  # chosen on validation, never on test
    assert {r["lr"] for r in finals} == {best["lr"]} and sorted(r["seed"] for r in finals) == ["0", "1"]
    for row in finals:
        config = json.loads((out / row["trial"] / "config.json").read_text())
        assert config["train_on"] == "train+val" and config["lr"] == float(best["lr"])
        assert config["seed"] == int(row["seed"])
    assert f"protocol vpt: linear retrains lr={float(best['lr'])}" in first.stdout
    assert json.loads((out / "sweep.json").read_text())["state"] == "done"

    again = sweep(*command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 trial(s), 2 already finished, 0 to run" in again.stdout
    assert "2 final trial(s), 2 already finished, 0 to run" in again.stdout


def test_the_pruning_search_scores_once_retrains_each_level_from_it_and_chooses_on_validation(tmp_path, ray_tmp):
    out = tmp_path / "S"
    command = ["--methods", "e2vpt", "--epochs", "1", "--retrain-epochs", "1", "--prune-rounds", "1", "--prompt-len", "4",
               "--prune-ratio", "0.5", "--segment-ratio", "0.25", "--protocol", "e2vpt-search", "--token-levels", "0.25",
               "0.5", "--segment-levels", "0.25", "--dataset", "imagefolder", "--data-root", str(digits_folder()),
               "--out", str(out), "--cpus", "2", "--ray-temp-dir", ray_tmp]
    first = sweep(*command)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = {r["trial"]: r for r in leaderboard(out)}
    assert {r["status"] for r in rows.values()} == {"done"}
    assert sorted(r["stage"] for r in rows.values()) == ["grid", "levels", "levels", "scout"]
    scout = next(t for t, r in rows.items() if r["stage"] == "scout")
    assert (out / scout / "search_importance.safetensors").is_file()  # scored once, by the scout
    levels = [t for t, r in rows.items() if r["stage"] == "levels"]
    for trial in levels:
        summary = json.loads((out / trial / "summary.json").read_text())
        assert summary["phase0_from"] == str((out / scout).resolve())
        prune = [r for r in map(json.loads, (out / trial / "metrics.jsonl").read_text().splitlines())
                 if r["kind"] == "prune"]
        assert len(prune) == 1 and prune[0]["score_s"] < 0.05  # the scout's scores, not its own pass
    # the level at the iterative trial's own ratios is the same training: the same round 1, to the bit
    same = rows[f"{scout}-t50-g25"]
    iterative = next(r for r in rows.values() if r["stage"] == "grid")
    round1 = json.loads((out / iterative["trial"] / "pruning.json").read_text())["rounds"][1]
    assert (float(same["test_acc"]), int(same["tuned_params"])) == (round1["test_acc"], round1["tuned_params"])
    chosen = [t for t in levels if rows[t]["chosen"] == "True"]
    best = max(levels, key=lambda t: (float(rows[t]["val_acc"]), -int(rows[t]["tuned_params"])))
    assert chosen == [best]
    assert "2 pruning level(s) of 1 scored phase 0 run(s)" in first.stdout

    again = sweep(*command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 scout trial(s), 1 already finished, 0 to run" in again.stdout
    assert "3 trial(s), 3 already finished, 0 to run" in again.stdout  # the iterative trial and the 2 levels


def test_asha_stops_a_trial_that_falls_behind_and_it_is_not_trained_again(tmp_path, ray_tmp):
    """One trial at a time, so the order is fixed: the good learning rate sets the bar at epoch 1 and the
    hopeless one (lr 1e-7) falls below it there and is stopped."""
    out = tmp_path / "S"
    command = ["--methods", "linear", "--epochs", "3", "--grid", "lr=0.05,0.0000001", "--scheduler", "asha",
               "--dataset", "imagefolder", "--data-root", str(digits_folder()), "--out", str(out), "--cpus", "1",
               "--ray-temp-dir", ray_tmp]
    first = sweep(*command)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = {float(r["lr"]): r for r in leaderboard(out)}
    assert rows[0.05]["status"] == "done"
    stopped = rows[1e-7]
    assert stopped["status"] == "stopped" and "stopped early by the scheduler" in stopped["message"]
    epochs = [r for r in map(json.loads, (out / stopped["trial"] / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert 1 <= len(epochs) < 3  # it did not train its last epochs
    again = sweep(*command)
    assert "2 already finished, 0 to run" in again.stdout  # a stopped trial is a result, not a to-do


@pytest.fixture
def ray_cluster(ray_tmp):
    """A Ray cluster already running on this machine (its own process), as a user's would be."""
    head = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, ray
        info = ray.init(num_cpus=2, include_dashboard=False, _temp_dir={ray_tmp!r}, log_to_driver=False)
        print(info.address_info["gcs_address"], flush=True)
        sys.stdin.read()  # until the test closes it
        ray.shutdown()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/")
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()


def test_a_sweep_joins_an_existing_cluster_and_a_failing_trial_is_recorded_while_the_rest_go_on(tmp_path, ray_cluster):
    out = tmp_path / "S"
    # Ray 2.60 clusters use token authentication; a driver naming an address sends its token only when
    # told to (RAY_AUTH_MODE=token, the token in ~/.ray/auth_token or RAY_AUTH_TOKEN), as Ray's docs say
    result = sweep("--methods", "linear", "--epochs", "1", "--grid", "dataset=imagefolder,digits", "--out", str(out),
                   "--address", ray_cluster, env={"RAY_AUTH_MODE": "token"})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]  # a trial failed: not a clean 0
    rows = {r["dataset"]: r for r in leaderboard(out)}
    assert rows["digits"]["status"] == "done" and float(rows["digits"]["test_acc"]) > 0.5
    failed = rows["imagefolder"]
    assert failed["status"] == "failed" and "\n" not in failed["message"]
    assert "folder" in failed["message"] and "Traceback" not in failed["message"]
    assert json.loads((out / "sweep.json").read_text())["state"] == "done"
    assert "1 done, 1 failed" in result.stdout


def test_an_unreachable_cluster_address_is_one_line_and_loses_nothing(tmp_path):
    out = tmp_path / "S"
    result = sweep("--methods", "linear", "--epochs", "1", "--out", str(out), "--address", "127.0.0.1:9", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot reach the Ray cluster at '127.0.0.1:9'" in result.stderr
    sweep_dir = SweepDir(out)
    assert sweep_dir.state() == "failed" and "cannot reach" in sweep_dir.read()["message"]
    assert [r["status"] for r in sweep_dir.rows()] == ["pending"]  # the next run (elsewhere) trains it


def _ray_processes_under(temp_dir: str) -> list[int]:
    """Processes of the Ray whose temp dir is `temp_dir`: their command line or an open file says so
    (Ray renames its processes, e.g. `ray::DashboardAgent`, but they keep their logs there open)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
                continue
            if any(temp_dir in os.readlink(fd) for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_driver_leaves_a_sweep_the_same_command_resumes_without_retraining(tmp_path, ray_tmp):
    out = tmp_path / "S"
    args = ["--methods", "linear", "--epochs", "2", "--dataset", "imagefolder", "--data-root", str(digits_folder()),
            "--out", str(out), "--cpus", "1", "--ray-temp-dir", ray_tmp]
    driver = subprocess.Popen([sys.executable, "-m", "e2vpt", "sweep", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = out / "t000-linear-s0" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            if metrics.is_file() and metrics.read_text().count('"kind": "epoch"') >= 1:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        time.sleep(5)  # Ray's own processes notice their driver is gone
        trainer = json.loads((out / "t000-linear-s0" / "status.json").read_text())["pid"]
        assert not _pid_alive(trainer), "the trial's training process outlived its driver"
        for pid in _ray_processes_under(ray_tmp):  # what Ray leaves behind a kill -9 (its agents)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    first_epoch = metrics.read_text().splitlines()[0]
    killed = SweepDir(out)
    assert killed.state() == "interrupted" and [r["status"] for r in killed.rows()] == ["interrupted"]
    assert {r["id"]: r["state"] for r in list_runs(tmp_path)}["S/t000-linear-s0"] == "interrupted"  # as on Runs

    again = sweep("--out", str(out), "--cpus", "1", "--ray-temp-dir", ray_tmp)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert [r["status"] for r in leaderboard(out)] == ["done"]
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2]
    assert metrics.read_text().splitlines()[0] == first_epoch  # continued from its checkpoint, not from scratch
    assert SweepDir(out).state() == "done"


def _memory_in_use() -> tuple[int, int]:
    """(bytes in use, bytes in all) as Ray's memory monitor counts them without a cgroup limit."""
    info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in open("/proc/meminfo"))}
    return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]


def _cgroup_memory_limit() -> int | None:
    """This process's cgroup memory limit (v2 or v1), None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(path).read_text())
    return None


def test_a_trial_whose_worker_ray_kills_for_memory_fails_alone_and_the_sweep_goes_on(tmp_path, ray_tmp):
    """Ray's memory monitor kills a trial's worker mid-training (the real kill: this test fills memory
    past the threshold Ray was started with). Tune's controller raises on that error instead of failing
    the trial; the sweep must record that trial as failed, with the reason, and train the others."""
    out = tmp_path / "S"
    args = ["--methods", "linear", "--epochs", "10", "--seeds", "0", "1", "2", "--dataset", "imagefolder",
            "--data-root", str(digits_folder()), "--out", str(out), "--cpus", "1", "--ray-temp-dir", ray_tmp]
    in_use, total = _memory_in_use()
    limit = _cgroup_memory_limit()
    if limit is not None and limit < total:
        pytest.skip("a cgroup memory limit: Ray's memory monitor would count against it, not the machine's")
    if total - in_use < 12 * 2**30:
        pytest.skip("needs 12 GiB of free memory to push the machine past Ray's threshold safely")
    threshold = in_use + 6 * 2**30  # Ray, its driver and one linear trial take about 2 GiB of that
    driver = subprocess.Popen([sys.executable, "-m", "e2vpt", "sweep", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RAY_memory_usage_threshold": f"{threshold / total:.4f}"})
    # memory added in anonymous maps of 256 MiB, each filled by the kernel as it maps it (fast, and short
    # enough to look at the worker between two), all given back the moment the worker is gone
    ballast, trainer, killed_at = [], None, None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            metrics = out / "t000-linear-s0" / "metrics.jsonl"
            if trainer is None and metrics.is_file() and '"kind": "epoch"' in metrics.read_text():
                trainer = json.loads((metrics.parent / "status.json").read_text())["pid"]
            if trainer is not None and killed_at is None:
                if not _pid_alive(trainer):
                    for block in ballast:
                        block.close()  # memory back before the next trial starts
                    ballast, killed_at = [], time.monotonic()
                elif len(ballast) < 32:  # 8 GiB at most: 2 past the threshold before Ray's own share
                    ballast.append(mmap.mmap(-1, 2**28, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE))
                    continue
            time.sleep(0.05)
        output = driver.communicate(timeout=600)[0]
    finally:
        for block in ballast:
            block.close()
        if driver.poll() is None:
            driver.kill()
    assert killed_at is not None, "Ray never killed the trial's worker\n" + output[-3000:]
    rows = leaderboard(out)
    failed = [r for r in rows if r["status"] != "done"]
    assert len(failed) == 1 and failed[0]["status"] == "failed", output[-6000:]
    killed = failed[0]["trial"]  # the first trial, or the next one if the first ended as Ray struck
    assert failed[0]["message"].startswith("Ray stopped this trial's worker because the machine ran low on "
                                           "memory"), failed[0]["message"]
    assert SweepDir(out).state() == "done" and driver.returncode == 1  # finished, with a failed trial
    assert f"{killed} failed: Ray stopped this trial's worker" in output

    # nothing lost: the same command (memory back to normal) retries it from the epoch it had finished
    metrics = out / killed / "metrics.jsonl"
    before = metrics.read_text().splitlines() if metrics.is_file() else []
    again = sweep(*args)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "3 trial(s), 2 already finished, 1 to run" in again.stdout
    lines = metrics.read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines if json.loads(line)["kind"] == "epoch"]
    assert lines[:len(before)] == before and epochs == list(range(1, 11))
