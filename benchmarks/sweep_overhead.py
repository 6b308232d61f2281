"""What running trials through a sweep costs against running them one after another by hand.

The same 8 demo trials (linear and VPT-deep x lr 0.01, 0.03 x seeds 0, 1; 2 epochs each on digits)
are trained twice on this machine:

1. one after another, each as `python -m e2vpt train ...` in a fresh process (what a shell loop does),
   torch using every core;
2. by `python -m e2vpt sweep ...`: a local Ray started by the sweep (its start-up counted), one trial
   per core at a time, one torch thread each.

    python benchmarks/sweep_overhead.py            # --quick: 1 epoch

Goal (issue 13): overhead <= 10 % on 2 cores. Overhead = sweep wall time / loop wall time - 1; a
negative value means the sweep is faster (trials in parallel use the cores better than one run's
threads). Also reported: Ray's start-up and the median trial time inside each. Writes
benchmarks/results/sweep_overhead.csv. The last line is exactly `sweep overhead: X%`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, append_csv_row, busy_warning, cpu_model, print_table  # noqa: E402

METHODS = ("linear", "vpt-deep")
LRS = (0.01, 0.03)
SEEDS = (0, 1)
FIELDS = ["time", "epochs", "trials", "loop_s", "sweep_s", "overhead_pct", "ray_start_s", "loop_trial_median_s",
          "sweep_trial_median_s", "cores", "cpu", "busy"]


def run_loop(folder: Path, epochs: int) -> tuple[float, list[float]]:
    start, each = time.monotonic(), []
    for method in METHODS:
        for lr in LRS:
            for seed in SEEDS:
                t = time.monotonic()
                subprocess.run([sys.executable, "-m", "e2vpt", "train", "--method", method, "--lr", str(lr), "--seed",
                                str(seed), "--epochs", str(epochs), "--run-dir", str(folder / f"{method}-{lr}-{seed}"),
                                "--quiet"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
                each.append(time.monotonic() - t)
    return time.monotonic() - start, each


def run_sweep(folder: Path, epochs: int) -> tuple[float, list[float], float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "e2vpt", "sweep", "--methods", *METHODS, "--grid",
                           "lr=" + ",".join(map(str, LRS)), "--seeds", *map(str, SEEDS), "--epochs", str(epochs),
                           "--out", str(folder / "S"), "--ray-temp-dir", str(folder / "ray")],
                          cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.monotonic() - start
    with open(folder / "S" / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["status"] == "done" for r in rows), proc.stdout
    trial_s = [float(r["wall_s"]) for r in rows]
    # Ray's start-up: from the driver's start to the first trial's run folder appearing
    created = min((folder / "S" / r["trial"] / "e2vpt-run.json").stat().st_mtime for r in rows)
    started = json.loads((folder / "S" / "sweep.json").read_text())["started"]
    ray_start = created - time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S"))
    return wall, trial_s, ray_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch per trial")
    args = parser.parse_args()
    epochs = 1 if args.quick else 2
    warning = busy_warning()
    if warning:
        print(warning, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        loop_s, loop_each = run_loop(tmp / "loop", epochs)
        sweep_s, sweep_each, ray_start = run_sweep(tmp, epochs)
    overhead = 100.0 * (sweep_s / loop_s - 1.0)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "epochs": epochs, "trials": 8, "loop_s": round(loop_s, 1),
           "sweep_s": round(sweep_s, 1), "overhead_pct": round(overhead, 1), "ray_start_s": round(ray_start, 1),
           "loop_trial_median_s": round(statistics.median(loop_each), 1),
           "sweep_trial_median_s": round(statistics.median(sweep_each), 1), "cores": os.cpu_count(),
           "cpu": cpu_model(), "busy": bool(warning)}
    append_csv_row(RESULTS / "sweep_overhead.csv", row, FIELDS)
    print_table("8 demo trials: one after another vs a sweep on Ray Tune", list(row), [list(row.values())])
    print(f"sweep overhead: {overhead:.1f}%")


if __name__ == "__main__":
    main()
