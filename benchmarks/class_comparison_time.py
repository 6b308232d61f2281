"""How long the prepared "class comparison" sweep takes on this machine, and where that time goes.

The sweep a teacher starts from the Sweeps page (21 trials: linear, VPT-deep at p = 1, 2, 4, 8 and
E2VPT at p = 8 x l = 1, 4, 3 seeds each, at the Train form's defaults) is run as a user runs it:

    python -m e2vpt sweep --prepared "class comparison" --out DIR --cpus 2

    python benchmarks/class_comparison_time.py        # about 12 min on 2 idle cores

Goal (issue 13): <= 10 min on 2 cores. Also reported: each method's trial times (from the trials'
own summaries) and their sum, whose half is the least two cores can need however the trials are
packed, so what is the runner's and what is the training's is plain. Appends a row (with the commit,
the defaults' digest and the machine) to benchmarks/results/class_comparison_time.csv and writes the
README block `class_comparison_time` from its latest row (`render`).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, append_csv_row, busy_warning, met, print_table, provenance,  # noqa: E402
                    provenance_line, read_csv, start_afresh_unless_current, write_readme_block)

SWEEP = "class comparison"
GOAL_S = 600.0
METHODS = ("linear", "vpt-deep", "e2vpt")
FIELDS = ["time", "trials", "cpus", "wall_s", "trials_s", "least_s", *[f"{m}_{k}" for m in METHODS
          for k in ("min_s", "max_s")], "busy", "defaults_used", "commit", "defaults", "date", "cpu", "cores", "torch",
          "threads", "device", "python"]


def _minutes(seconds: float) -> str:
    whole, rest = divmod(round(seconds), 60)
    return f"{whole} min" if rest == 0 else f"{whole} min {rest} s"


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `class_comparison_time`, from the latest row."""
    if not rows:
        return "No result yet: run `python benchmarks/class_comparison_time.py`.\n"
    r = rows[-1]
    wall, least = float(r["wall_s"]), float(r["least_s"])
    busy = " WARNING: the machine was busy; the time is not an idle machine's." if r["busy"] == "True" else ""
    per_method = ", ".join(f"{m} {float(r[f'{m}_min_s']):.0f}-{float(r[f'{m}_max_s']):.0f} s" for m in METHODS)
    return (f"{r['trials']} trials on {r['cpus']} cores; {provenance_line(r)}. The sweep took "
            f"**{_minutes(wall)}** (goal <= {_minutes(GOAL_S)}: {met(wall <= GOAL_S)}). Per trial: {per_method}; "
            f"their own time adds up to {float(r['trials_s']):,.0f} s, so {r['cpus']} cores need at least "
            f"{_minutes(least)} however the trials are packed: the rest, {wall - least:.0f} s, is Ray's start-up "
            f"and the runner's.{busy}\n")


def run(folder: Path, cpus: int) -> tuple[float, list[dict]]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "e2vpt", "sweep", "--prepared", SWEEP, "--out", str(folder / "S"),
                           "--cpus", str(cpus), "--ray-temp-dir", str(folder / "ray"), "--quiet"],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(folder / "S" / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(r["status"] != "done" for r in rows):
        raise SystemExit(f"not every trial finished: {[(r['trial'], r['status']) for r in rows]}")
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpus", type=int, default=2, help="cores the sweep's Ray may use (default 2, the goal's)")
    parser.add_argument("--out", default=None, help="CSV (default benchmarks/results/class_comparison_time.csv)")
    args = parser.parse_args()
    out_csv = Path(args.out) if args.out else RESULTS / "class_comparison_time.csv"
    start_afresh_unless_current(out_csv)
    stamp = provenance("cpu")
    warning = busy_warning()
    if warning:
        print(warning, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="class-comparison-", dir="/tmp") as tmp:
        wall, trials = run(Path(tmp), args.cpus)
    own = {m: [float(t["wall_s"]) for t in trials if t["method"] == m] for m in METHODS}
    total = sum(float(t["wall_s"]) for t in trials)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "trials": len(trials), "cpus": args.cpus,
           "wall_s": round(wall, 1), "trials_s": round(total, 1), "least_s": round(total / args.cpus, 1),
           **{f"{m}_{k}": round(f(own[m]), 1) for m in METHODS for k, f in (("min_s", min), ("max_s", max))},
           "busy": bool(warning), "defaults_used": True, **stamp}
    append_csv_row(out_csv, row, FIELDS)
    shown = ["trials", "cpus", "wall_s", "trials_s", "least_s"]
    print_table(f"The prepared {SWEEP!r} sweep", shown, [[row[k] for k in shown]])
    if not args.out:  # the published numbers: the default file, by this script only
        write_readme_block("class_comparison_time", render(read_csv(out_csv)))
    print(f"class comparison: {wall:.0f} s")


if __name__ == "__main__":
    main()
