"""The class comparison's verdict and frontier, from its shipped evidence file (issue 29).

`python -m e2vpt sweep --prepared "class comparison"` trains 21 trials on the demo ViT and digits
(linear; VPT-deep at p = 1, 2, 4, 8; E2VPT at p = 8 x l = 1, 4; 3 seeds); `python -m e2vpt sweep export`
keeps it as `e2vpt/assets/evidence/class-comparison.evidence.json.gz`, which the Sweeps page opens in
one click. This script reads that file (or another evidence file or sweep folder) with the app's own
frontier code (`e2vpt.sweeps.frontier`): each trial counts with its final model (E2VPT's round kept
on validation), each method is represented by its configuration with the best mean validation
accuracy, and the verdict gives E2VPT minus VPT-deep with a 95 % Welch interval over seeds.

    python benchmarks/class_comparison.py [EVIDENCE_OR_SWEEP]

Writes benchmarks/results/class_comparison.csv (one row per final configuration and dataset, with the
verdict, the evidence file's sha256 and this computation's commit) and, for the shipped file, the block
`class-comparison` of benchmarks/README.md. Last line: the verdict of each dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, evidence_footer, evidence_table_main  # noqa: E402

SOURCE = REPO / "e2vpt" / "assets" / "evidence" / "class-comparison.evidence.json.gz"


def table(sweep) -> tuple[list[dict], int, int]:
    """(one row per dataset and final configuration: test accuracy over seeds (mean, 95 % half-interval,
    every value), mean validation accuracy, mean tuned parameters, whether it is on the Pareto front and
    whether the verdict chose it, the dataset's verdict on every row of it; trials done; trials in all)."""
    from e2vpt.sweeps import frontier

    summary = frontier.summary(frontier.points(sweep, every_round=False))
    verdicts = frontier.verdicts(summary)
    rows = []
    for dataset in frontier.datasets(summary):
        chosen = set(frontier.chosen(summary, dataset)["label"])
        finals = summary[(summary["dataset"] == dataset) & summary["final"]].sort_values("tuned_params")
        for r in finals.itertuples():
            rows.append({"dataset": dataset, "method": r.method, "label": r.label, "seeds": r.seeds,
                         "test_acc": round(r.test_acc, 6), "test_ci": round(r.test_ci, 6),
                         "test_values": ";".join(f"{v:.6f}" for v in r.test_values), "val_acc": round(r.val_acc, 6),
                         "tuned_params": round(r.tuned_params), "pareto": bool(r.pareto), "chosen": r.label in chosen,
                         "verdict": verdicts.get(dataset, "")})
    states = [r["status"] for r in sweep.rows()]
    return rows, states.count("done"), len(states)


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block: each dataset's verdict quoted, then its final configurations."""
    if not rows:
        return "No result yet: run `python benchmarks/class_comparison.py`.\n"
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        part = [r for r in rows if r["dataset"] == dataset]
        lines += [f"> {part[0]['verdict']}", "",
                  "| final configuration | seeds | val % | test % (95 % interval) | tuned parameters | Pareto front "
                  "| the verdict's pick |", "|---|---|---|---|---|---|---|"]
        for r in part:
            ci = "" if r["test_ci"] in ("", "nan") else f" ± {100 * float(r['test_ci']):.1f}"
            lines.append(f"| {r['label']} | {r['seeds']} | {100 * float(r['val_acc']):.1f} | "
                         f"{100 * float(r['test_acc']):.1f}{ci} | {int(r['tuned_params']):,} | "
                         f"{'yes' if r['pareto'] == 'True' else ''} | {'yes' if r['chosen'] == 'True' else ''} |")
        lines.append("")
    lines.append(evidence_footer("class_comparison.py", rows[0]))
    return "\n".join(lines) + "\n"


def verdicts(rows: list[dict], done: int, total: int) -> str | None:
    """Each dataset's verdict, once every trial has finished."""
    return None if done < total else "\n".join(dict.fromkeys(r["verdict"] for r in rows))


def main(argv: list[str] | None = None) -> int:
    # the prepared sweep trains at the defaults: stale when they change
    return evidence_table_main(__doc__, "class_comparison", SOURCE, table, render, verdicts, "class comparison",
                               defaults_used=True, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
