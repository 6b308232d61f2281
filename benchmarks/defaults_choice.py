"""The demo's defaults, chosen from the search sweep on validation accuracy alone (issue 13).

Reads the sweep folder of `benchmarks/specs/defaults_search.yaml` and applies the rule written in
benchmarks/README.md ("Choosing the demo's defaults") before the sweep ran: for each configuration
(retrain_epochs, prune_ratio, kv_len), the mean over the five built-in tasks of its mean validation
accuracy over seeds; the highest wins; configurations within 0.1 point of it tie, and a tie goes to
fewer tuned parameters, then to fewer epochs (a quicker demo). Only a configuration with every task
and seed finished is a candidate. Test accuracy is not read.

    python benchmarks/defaults_choice.py benchmarks/results/defaults-search

Writes benchmarks/results/defaults_choice.csv. Last line: `defaults: <settings> (mean val X %; today's
defaults Y %)`, or `defaults: not yet (N of M trials finished)`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, write_csv  # noqa: E402

from e2vpt.config import TrainConfig  # noqa: E402
from e2vpt.sweeps import SweepDir  # noqa: E402

SWEPT = ("retrain_epochs", "prune_ratio", "kv_len")
TIE_POINTS = 0.1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="the search sweep's folder")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/defaults_choice.csv)")
    args = p.parse_args()
    sweep = SweepDir(args.sweep)
    record = sweep.read()
    rows = sweep.rows(record)
    tasks = sorted({r["dataset"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    configs: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[name] for name in SWEPT)
        entry = configs.setdefault(key, {"val": {}, "params": []})
        if row["status"] == "done":
            entry["val"].setdefault(row["dataset"], []).append(row["val_acc"])
            entry["params"].append(row["tuned_params"])
    table = []
    for key, entry in configs.items():
        complete = all(len(entry["val"].get(t, [])) == len(seeds) for t in tasks)
        per_task = {t: statistics.fmean(entry["val"][t]) for t in tasks if entry["val"].get(t)}
        settings = dict(zip(SWEPT, key))
        epochs = TrainConfig(**settings).epochs + 2 * settings["retrain_epochs"]
        table.append({**settings, "complete": complete, "epochs": epochs,
                      "mean_val": statistics.fmean(per_task.values()) if complete else None,
                      "tuned_params": round(statistics.fmean(entry["params"])) if entry["params"] else None,
                      **{f"val_{t}": round(100 * v, 2) for t, v in per_task.items()}})
    defaults = TrainConfig()
    today = next((r for r in table if all(r[n] == getattr(defaults, n) for n in SWEPT)), None)
    candidates = [r for r in table if r["complete"]]
    table.sort(key=lambda r: -(r["mean_val"] or -1))
    columns = [*SWEPT, "epochs", "tuned_params", "mean_val", *[f"val_{t}" for t in tasks]]
    print_table("Validation accuracy % by configuration (mean over seeds; mean over tasks)", columns,
                [[("-" if r.get(c) is None else f"{100 * r[c]:.2f}" if c == "mean_val" else r.get(c, "-"))
                  for c in columns] for r in table])
    write_csv(Path(args.out) if args.out else RESULTS / "defaults_choice.csv", table, ["complete", *columns])
    finished = sum(r["status"] == "done" for r in rows)
    if len(candidates) < len(table):
        print(f"defaults: not yet ({finished} of {len(rows)} trials finished; {len(candidates)} of {len(table)} "
              "configurations complete)")
        return 1
    best = max(r["mean_val"] for r in candidates)
    tied = [r for r in candidates if r["mean_val"] >= best - TIE_POINTS / 100]
    chosen = min(tied, key=lambda r: (r["tuned_params"], r["epochs"]))
    text = " ".join(f"{n}={chosen[n]}" for n in SWEPT)
    print(f"defaults: {text} (mean val {100 * chosen['mean_val']:.2f} %; today's defaults "
          f"{100 * today['mean_val']:.2f} %)" if today else f"defaults: {text} (mean val {100 * chosen['mean_val']:.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
