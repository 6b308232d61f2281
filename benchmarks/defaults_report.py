"""Step 3 of choosing the demo's defaults (issue 13): the chosen defaults on fresh seeds, on test.

Reads the report sweep of `benchmarks/specs/defaults_report.yaml` (E2VPT, VPT-deep and linear probing
at the defaults, seeds 10, 11, 12, the five built-in tasks; protocol in benchmarks/README.md, "Choosing
the demo's defaults"), from its evidence file (shipped as
`e2vpt/assets/evidence/defaults-report.evidence.json.gz`) or
from a sweep folder, and prints per task and method the test accuracy mean ± std over the seeds and the
tuned parameters; then E2VPT against VPT-deep per task (difference of means, Welch's t-test p-value),
and the mean over tasks. The seeds were not used by the search, and nothing here chooses anything.

    python -m e2vpt sweep benchmarks/specs/defaults_report.yaml --out DIR   # trains it (45 trials)
    python -m e2vpt sweep export DIR --out e2vpt/assets/evidence/defaults-report.evidence.json.gz
    python benchmarks/defaults_report.py [EVIDENCE_OR_SWEEP]                  # the table, from the file

Writes benchmarks/results/defaults_report.csv (one row per task and method: every seed's numbers, the
evidence file's sha256, the commit and machine of this computation) and, for the shipped evidence, the
block `defaults-report` of benchmarks/README.md. Last line: `report: e2vpt X %, vpt-deep Y %, linear Z %
(test, mean over tasks)`, or `report: not yet (N of M trials finished)`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, evidence_footer, evidence_table_main  # noqa: E402

METHODS = ("e2vpt", "vpt-deep", "linear")
LABELS = {"e2vpt": "E2VPT", "vpt-deep": "VPT-deep", "linear": "linear"}
SOURCE = REPO / "e2vpt" / "assets" / "evidence" / "defaults-report.evidence.json.gz"
PER_SEED = ("seed", "test_acc", "tuned_params", "tuned_pct", "wall_s", "selected_round", "prune_rounds")


def table(sweep) -> tuple[list[dict], int, int]:
    """(one row per task and method holding every finished seed's numbers joined by ';', trials done,
    trials in all)."""
    rows = sweep.rows()
    done = sorted((r for r in rows if r["status"] == "done"), key=lambda r: r["seed"])
    out = []
    for task in sorted({r["dataset"] for r in rows}):
        for method in METHODS:
            runs = [{**r, "prune_rounds": sweep.trial_run(r["trial"]).config()["prune_rounds"]}  # as trained
                    for r in done if r["method"] == method and r["dataset"] == task]
            if runs:
                out.append({"dataset": task, "method": method,
                            **{k: ";".join(str(r[k]) for r in runs) for k in PER_SEED}})
    return out, len(done), len(rows)


def _values(row: dict, key: str) -> list[float]:
    return [float(v) for v in str(row[key]).split(";")]


def _mean_std(values: list[float]) -> str:
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.1f}{spread}"


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's report table and the numbers said about it, from the result file's rows."""
    from scipy import stats

    if not rows:
        return "No result yet: run `python benchmarks/defaults_report.py`.\n"
    by = {(r["dataset"], r["method"]): r for r in rows}
    tasks = sorted({r["dataset"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    seeds = ", ".join(sorted({s for r in rows for s in r["seed"].split(";")}, key=int))
    head = ["task"] + [c for m in methods for c in (LABELS[m], "params")]
    compare = "e2vpt" in methods and "vpt-deep" in methods
    head += ["E2VPT - VPT-deep", "Welch p"] if compare else []
    lines = [f"Test accuracy %, mean ± std over seeds {seeds}; tuned parameters (head included):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    welch = {}
    for t in tasks:
        cells = [t]
        for m in methods:
            r = by.get((t, m))
            cells += [_mean_std(_values(r, "test_acc")), f"{round(statistics.fmean(_values(r, 'tuned_params'))):,}"] \
                if r else ["-", "-"]
        if compare and (t, "e2vpt") in by and (t, "vpt-deep") in by:
            a, b = _values(by[t, "e2vpt"], "test_acc"), _values(by[t, "vpt-deep"], "test_acc")
            welch[t] = stats.ttest_ind(a, b, equal_var=False).pvalue if len(a) > 1 and len(b) > 1 else None
            cells += [f"{100 * (statistics.fmean(a) - statistics.fmean(b)):+.1f}",
                      "-" if welch[t] is None else f"{welch[t]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    mean_acc = {m: statistics.fmean(statistics.fmean(_values(by[t, m], "test_acc")) for t in tasks if (t, m) in by)
                for m in methods}
    mean_params = {m: statistics.fmean(statistics.fmean(_values(by[t, m], "tuned_params")) for t in tasks
                                       if (t, m) in by) for m in methods}
    mean_pct = {m: statistics.fmean(statistics.fmean(_values(by[t, m], "tuned_pct")) for t in tasks if (t, m) in by)
                for m in methods}
    cells = ["**mean**"] + [c for m in methods for c in (f"**{100 * mean_acc[m]:.1f}**",
                                                          f"{round(mean_params[m]):,} ({mean_pct[m]:.2f} %)")]
    if compare:
        cells += [f"{100 * (mean_acc['e2vpt'] - mean_acc['vpt-deep']):+.1f}", ""]
    lines += ["| " + " | ".join(cells) + " |", ""]
    if compare:
        tested = {t: p for t, p in welch.items() if p is not None}
        fewer = 100 * (1 - mean_params["e2vpt"] / mean_params["vpt-deep"])
        lines.append(f"E2VPT minus VPT-deep, mean over tasks: {100 * (mean_acc['e2vpt'] - mean_acc['vpt-deep']):+.1f} "
                     f"points, with {abs(fewer):.0f} % {'fewer' if fewer >= 0 else 'more'} tuned parameters"
                     + (f"; the smallest per-task Welch p is {min(tested.values()):.2f} "
                        f"({min(tested, key=tested.get)})." if tested else "."))
    if "e2vpt" in methods:
        runs = [(int(kept), int(rounds)) for t in tasks if (t, "e2vpt") in by
                for kept, rounds in zip(_values(by[t, "e2vpt"], "selected_round"), _values(by[t, "e2vpt"], "prune_rounds"))]
        last = sum(kept == rounds for kept, rounds in runs)
        lines.append(f"E2VPT kept its last pruning round in {last} of {len(runs)} runs (the round each run keeps is "
                     "chosen on validation).")
    walls = {m: statistics.median(v for t in tasks if (t, m) in by for v in _values(by[t, m], "wall_s")) for m in methods}
    lines.append("Median trial wall time, as each trial recorded it: " + ", ".join(f"{m} {walls[m]:.0f} s" for m in methods)
                 + ".")
    lines += ["", evidence_footer("defaults_report.py", rows[0])]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], done: int, total: int) -> str | None:
    """Each method's test accuracy, mean over tasks, once every trial has finished."""
    if done < total:
        return None
    means = {m: statistics.fmean(statistics.fmean(_values(r, "test_acc")) for r in rows if r["method"] == m)
             for m in METHODS if any(r["method"] == m for r in rows)}
    return "report: " + ", ".join(f"{m} {100 * v:.1f} %" for m, v in means.items()) + " (test, mean over tasks)"


def main(argv: list[str] | None = None) -> int:
    # its trials ran at the defaults: stale when they change (stale.py also asks the evidence file itself)
    return evidence_table_main(__doc__, "defaults_report", SOURCE, table, render, summary, "report",
                               defaults_used=True, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
