"""The demo's defaults, chosen from the search sweep on validation accuracy alone (issue 13).

Reads the search sweep of `benchmarks/specs/defaults_search.yaml`, from its evidence file
(`benchmarks/results/defaults-search.evidence.json.gz`) or a sweep folder, and applies the rule written
in benchmarks/README.md ("Choosing the demo's defaults") before the sweep ran: for each configuration
(retrain_epochs, prune_ratio, kv_len), the mean over the five built-in tasks of its mean validation
accuracy over seeds; the highest wins; configurations within 0.1 point of it tie, and a tie goes to
fewer tuned parameters, then to fewer epochs (a quicker demo). Only a configuration with every task
and seed finished is a candidate. Test accuracy is not read.

    python benchmarks/defaults_choice.py [EVIDENCE_OR_SWEEP]

Writes benchmarks/results/defaults_choice.csv (one row per configuration, with the evidence file's
sha256 and this computation's commit) and, for the default evidence file, the block `defaults-choice`
of benchmarks/README.md. Last line: `defaults: <settings> (mean val X %; the defaults before the search
Y %)`, or `defaults: not yet (N of M trials finished)`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, evidence_footer, evidence_table_main  # noqa: E402

SWEPT = ("retrain_epochs", "prune_ratio", "kv_len")
BEFORE_SEARCH = {"retrain_epochs": 2, "prune_ratio": 0.5, "kv_len": 4}  # the defaults the protocol started from
TIE_POINTS = 0.1
SOURCE = RESULTS / "defaults-search.evidence.json.gz"


def table(sweep) -> tuple[list[dict], int, int]:
    """(one row per configuration: its settings, epochs, mean tuned parameters, mean validation accuracy
    per task and over tasks; trials done; trials in all)."""
    rows = sweep.rows()
    tasks = sorted({r["dataset"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    configs: dict[tuple, dict] = {}
    for row in rows:
        entry = configs.setdefault(tuple(row[name] for name in SWEPT), {"val": {}, "params": [], "epochs": set()})
        if row["status"] == "done":
            entry["val"].setdefault(row["dataset"], []).append(row["val_acc"])
            entry["params"].append(row["tuned_params"])
            config = sweep.trial_run(row["trial"]).config()  # what the trial trained, not today's defaults
            entry["epochs"].add(config["epochs"] + config["prune_rounds"] * config["retrain_epochs"])
    out = []
    for key, entry in configs.items():
        complete = all(len(entry["val"].get(t, [])) == len(seeds) for t in tasks)
        per_task = {t: statistics.fmean(entry["val"][t]) for t in tasks if entry["val"].get(t)}
        settings = dict(zip(SWEPT, key))
        out.append({**settings, "complete": complete, "epochs": max(entry["epochs"], default=""),
                    "tuned_params": round(statistics.fmean(entry["params"])) if entry["params"] else "",
                    "mean_val": round(statistics.fmean(per_task.values()), 6) if complete else "",
                    **{f"val_{t}": round(100 * per_task[t], 2) if t in per_task else "" for t in tasks}})
    out.sort(key=lambda r: -(r["mean_val"] or -1))
    return out, sum(r["status"] == "done" for r in rows), len(rows)


def choose(rows: list[dict]) -> dict | None:
    """The protocol's rule applied to the table's rows (strings or numbers); None until every
    configuration is complete."""
    if not rows or any(str(r["complete"]) != "True" for r in rows):
        return None
    best = max(float(r["mean_val"]) for r in rows)
    tied = [r for r in rows if float(r["mean_val"]) >= best - TIE_POINTS / 100]
    return min(tied, key=lambda r: (int(r["tuned_params"]), int(r["epochs"])))


def _is(row: dict, settings: dict) -> bool:
    return all(float(row[k]) == float(v) for k, v in settings.items())


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's choice table and the numbers said about it, from the result file's rows."""
    chosen = choose(rows)
    if chosen is None:
        return "No complete search yet: run `python benchmarks/defaults_choice.py`.\n"
    tasks = [c[len("val_"):] for c in rows[0] if c.startswith("val_")]
    head = [*SWEPT, "tuned params", "mean val %", *tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        bold = (lambda v: f"**{v}**") if r is chosen else (lambda v: v)
        cells = [bold(r[k]) for k in SWEPT] + [f"{int(r['tuned_params']):,}", bold(f"{100 * float(r['mean_val']):.2f}")]
        lines.append("| " + " | ".join(cells + [r[f"val_{t}"] for t in tasks]) + " |")
    before = next((r for r in rows if _is(r, BEFORE_SEARCH)), None)
    settings = ", ".join(f"{k} = {chosen[k]}" for k in SWEPT)
    lines += ["", f"Chosen: **{settings}** ({100 * float(chosen['mean_val']):.2f} %"
                  + (f"; the defaults before the search, {' / '.join(str(v) for v in BEFORE_SEARCH.values())}, "
                     f"{100 * float(before['mean_val']):.2f} %)." if before else ").")]
    long, short = [r for r in rows if int(r["retrain_epochs"]) == 4], [r for r in rows if int(r["retrain_epochs"]) == 2]
    pairs = [(a, b) for a in long for b in short if a["prune_ratio"] == b["prune_ratio"] and a["kv_len"] == b["kv_len"]]
    if pairs:
        gaps = [100 * (float(a["mean_val"]) - float(b["mean_val"])) for a in long for b in short]
        paired = {t: [float(a[f"val_{t}"]) - float(b[f"val_{t}"]) for a, b in pairs] for t in tasks}
        widest = max(tasks, key=lambda t: statistics.fmean(paired[t]))
        lines.append(f"Every configuration with 4 retraining epochs against every one with 2: {min(gaps):+.2f} to "
                     f"{max(gaps):+.2f} points on the mean; at the same prune_ratio and kv_len the largest gain is on "
                     f"{widest} ({min(paired[widest]):+.2f} to {max(paired[widest]):+.2f}).")
    spread = {k: [100 * float(r["mean_val"]) for r in long if _is(r, {k: chosen[k]})] for k in ("prune_ratio", "kv_len")}
    others = {k: [100 * float(r["mean_val"]) for r in long if not _is(r, {k: chosen[k]})] for k in spread}
    moves = [abs(a - b) for k in spread for a in spread[k] for b in others[k]]
    if moves:
        lines.append(f"Among those, prune_ratio and kv_len move the mean by at most {max(moves):.2f} points.")
    lines += ["", evidence_footer("defaults_choice.py", rows[0])]
    return "\n".join(lines) + "\n"


def choice(rows: list[dict], done: int, total: int) -> str | None:
    """The chosen settings and their mean validation accuracy, once every configuration is complete."""
    chosen = choose(rows)
    if chosen is None:
        return None
    before = next((r for r in rows if _is(r, BEFORE_SEARCH)), None)
    return (f"defaults: {' '.join(f'{k}={chosen[k]}' for k in SWEPT)} (mean val {100 * float(chosen['mean_val']):.2f} %"
            + (f"; the defaults before the search {100 * float(before['mean_val']):.2f} %)" if before else ")"))


def main(argv: list[str] | None = None) -> int:
    # every setting it compares is named in its spec: the table does not depend on today's defaults
    return evidence_table_main(__doc__, "defaults_choice", SOURCE, table, render, choice, "defaults",
                               defaults_used=False, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
