"""What running trials through a sweep costs against running them one after another by hand.

The same 8 demo trials (linear and VPT-deep x lr 0.01, 0.03 x seeds 0, 1; 2 epochs each on digits)
are trained twice on this machine:

1. one after another, each as `python -m e2vpt train ...` in a fresh process (what a shell loop does),
   torch using every core;
2. by `python -m e2vpt sweep ...`: a local Ray started by the sweep (its start-up counted), one trial
   per core at a time, one torch thread each.

    python benchmarks/sweep_overhead.py            # about 5 min; --quick: 1 epoch (sweep_overhead_quick.csv)

Goal (issue 13): overhead <= 10 % on 2 cores. Overhead = sweep wall time / loop wall time - 1; a
negative value means the sweep is faster (trials in parallel use the cores better than one run's
threads). Also reported: Ray's start-up and the median trial time inside each. Appends a row (with the
commit, the defaults' digest and the machine) to benchmarks/results/sweep_overhead.csv and, for that
default file, writes the README block `sweep_overhead` from its latest row (`render`). The last line
is exactly `sweep overhead: X%`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, met, append_csv_row, busy_warning, print_table, provenance, read_csv,  # noqa: E402
                    write_readme_block)
from common import provenance_line, start_afresh_unless_current  # noqa: E402

METHODS = ("linear", "vpt-deep")
LRS = (0.01, 0.03)
SEEDS = (0, 1)
GOAL_PCT = 10.0
FIELDS = ["time", "epochs", "trials", "loop_s", "sweep_s", "overhead_pct", "ray_start_s", "loop_trial_median_s",
          "sweep_trial_median_s", "busy", "defaults_used", "commit", "defaults", "date", "cpu", "cores", "torch",
          "threads", "device", "python"]


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `sweep_overhead`, from sweep_overhead.csv's latest row."""
    if not rows:
        return "No result yet: run `python benchmarks/sweep_overhead.py`.\n"
    r = rows[-1]
    overhead = float(r["overhead_pct"])
    busy = " WARNING: the machine was busy; timings not comparable." if r["busy"] == "True" else ""
    return (f"{r['trials']} trials of {r['epochs']} epoch(s); {provenance_line(r)}. One after another as "
            f"`python -m e2vpt train` processes: **{float(r['loop_s']):.1f} s**. The same trials by "
            f"`python -m e2vpt sweep` (Ray's start-up, {float(r['ray_start_s']):.1f} s, counted): "
            f"**{float(r['sweep_s']):.1f} s**. Overhead **{overhead:+.1f} %** (goal <= {GOAL_PCT:.0f} %: "
            f"{met(overhead <= GOAL_PCT)}). Median trial: {float(r['loop_trial_median_s']):.1f} s "
            f"in the loop (interpreter start included), {float(r['sweep_trial_median_s']):.1f} s inside the sweep."
            f"{busy}\n")


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
    parser.add_argument("--out", default=None, help="CSV (default benchmarks/results/sweep_overhead.csv)")
    args = parser.parse_args()
    epochs = 1 if args.quick else 2
    out_csv = Path(args.out) if args.out else RESULTS / ("sweep_overhead_quick.csv" if args.quick else
                                                         "sweep_overhead.csv")
    start_afresh_unless_current(out_csv)
    stamp = provenance("cpu")
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
           "sweep_trial_median_s": round(statistics.median(sweep_each), 1), "busy": bool(warning),
           "defaults_used": True, **stamp}
    append_csv_row(out_csv, row, FIELDS)
    shown = FIELDS[:10]
    print_table("8 demo trials: one after another vs a sweep on Ray Tune", shown, [[row[k] for k in shown]])
    if not args.out and not args.quick:  # the published numbers: the default file, by this script only
        write_readme_block("sweep_overhead", render(read_csv(out_csv)))
    print(f"sweep overhead: {overhead:.1f}%")


if __name__ == "__main__":
    main()
