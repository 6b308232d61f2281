"""Step 3 of choosing the demo's defaults (issue 13): the chosen defaults on fresh seeds, on test.

Reads the sweep folder of `benchmarks/specs/defaults_report.yaml` (E2VPT, VPT-deep and linear probing
at the defaults, seeds 10, 11, 12, the five built-in tasks; protocol in benchmarks/README.md, "Choosing
the demo's defaults") and prints, per task and method, test accuracy mean ± std over the seeds and the
tuned parameters; then E2VPT against VPT-deep per task (difference of means, Welch's t-test p-value),
and the mean over tasks. The seeds were not used by the search, and nothing here chooses anything.

    python -m e2vpt sweep benchmarks/specs/defaults_report.yaml --out benchmarks/results/defaults-report
    python benchmarks/defaults_report.py benchmarks/results/defaults-report

Writes benchmarks/results/defaults_report.csv. Last line: `report: e2vpt X %, vpt-deep Y %, linear Z %
(test, mean over tasks)`, or `report: not yet (N of M trials finished)`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, write_csv  # noqa: E402

from scipy import stats  # noqa: E402

from e2vpt.sweeps import SweepDir  # noqa: E402

METHODS = ("e2vpt", "vpt-deep", "linear")


def _mean_std(values: list[float]) -> str:
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.1f}{spread}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="the report sweep's folder")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/defaults_report.csv)")
    args = p.parse_args()
    rows = SweepDir(args.sweep).rows()
    done = [r for r in rows if r["status"] == "done"]
    tasks = sorted({r["dataset"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    acc = {(m, t): [r["test_acc"] for r in done if r["method"] == m and r["dataset"] == t] for m in methods for t in tasks}
    params = {(m, t): [r["tuned_params"] for r in done if r["method"] == m and r["dataset"] == t]
              for m in methods for t in tasks}
    table = []
    for t in tasks:
        row = {"dataset": t}
        for m in methods:
            row[f"{m}_test"] = _mean_std(acc[m, t]) if acc[m, t] else "-"
            row[f"{m}_params"] = round(statistics.fmean(params[m, t])) if params[m, t] else "-"
        a, b = acc.get(("e2vpt", t), []), acc.get(("vpt-deep", t), [])
        if len(a) > 1 and len(b) > 1:
            row["e2vpt_minus_vpt"] = f"{100 * (statistics.fmean(a) - statistics.fmean(b)):+.1f}"
            row["welch_p"] = f"{stats.ttest_ind(a, b, equal_var=False).pvalue:.2f}"
        table.append(row)
    columns = ["dataset", *[f"{m}_{k}" for m in methods for k in ("test", "params")], "e2vpt_minus_vpt", "welch_p"]
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in rows}))
    print_table(f"Test accuracy %, mean ± std over seeds {seeds}; tuned parameters (head included)", columns,
                [[r.get(c, "-") for c in columns] for r in table])
    write_csv(Path(args.out) if args.out else RESULTS / "defaults_report.csv", table, columns)
    if len(done) < len(rows):
        print(f"report: not yet ({len(done)} of {len(rows)} trials finished)")
        return 1
    means = {m: statistics.fmean(statistics.fmean(acc[m, t]) for t in tasks) for m in methods}
    print("report: " + ", ".join(f"{m} {100 * v:.1f} %" for m, v in means.items()) + " (test, mean over tasks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
