"""Which published numbers are still current? Every result file in benchmarks/results/ that records
provenance (a `defaults` digest and a `commit` column, `common.provenance`) is compared with today's
defaults; one computed from an evidence file (an `evidence_sha256` column, `common.evidence_source`)
with that file as it is now; and every generated block of benchmarks/README.md with what its script
renders from its result file today.

    python benchmarks/stale.py        # one line per result file; exit 1 when something is stale

Files written before results recorded their provenance are listed as such: their numbers cannot be
tied to a commit or to defaults, and are rerun when the issue that owns them is next worked on.
Last line: `stale: N of M result files with provenance (K without)`.
"""

from __future__ import annotations

import importlib
import sys

from common import REPO, RESULTS, defaults_digest, read_csv, readme_block

# generated README blocks: block name -> (the script that writes it, its result file)
BLOCKS = {"ablation": ("ablation_demo", "ablation_demo.csv"),
          "defaults-choice": ("defaults_choice", "defaults_choice.csv"),
          "defaults-report": ("defaults_report", "defaults_report.csv"),
          "class-comparison": ("class_comparison", "class_comparison.csv"),
          "step_cost": ("step_cost", "step_cost.csv"),
          "step_cost_pruned_tokens": ("step_cost", "step_cost_pruned_tokens.csv"),
          "demo_time": ("demo_time", "demo_time.csv"),
          "mini_table": ("mini_table", "mini_table.csv"),
          "sweep_overhead": ("sweep_overhead", "sweep_overhead.csv"),
          "input_pipeline": ("input_pipeline", "input_pipeline.csv"),
          "precision": ("precision", "precision.csv"),
          "sweeps_page": ("sweeps_page", "sweeps_page.csv"),
          "embeddings_open": ("embeddings_open", "embeddings_open.csv"),
          "embeddings_compare": ("embeddings_open", "embeddings_compare.csv")}


def _evidence_changed(rows: list[dict]) -> str | None:
    """Why a table computed from an evidence file no longer matches that file, or None."""
    from e2vpt.errors import RunDirError
    from e2vpt.sweeps import evidence

    recorded = {(r.get("evidence"), r.get("evidence_sha256")) for r in rows if r.get("evidence_sha256")}
    for name, sha in recorded:
        path = REPO / name
        try:
            evidence.read(path)
        except RunDirError as exc:
            return str(exc)
        if evidence.digest(path) != sha:
            return f"{name} changed since the table was computed from it"
    return None


def check() -> tuple[list[str], int, int, int]:
    """(report lines, stale, with provenance, without)."""
    today = defaults_digest()
    lines, stale, known, unknown = [], 0, 0, 0
    for path in sorted(RESULTS.glob("*.csv")):
        rows = read_csv(path)
        if not rows or "defaults" not in rows[0]:
            unknown += 1
            lines.append(f"{path.name}: no provenance recorded (written before results carried commit and defaults)")
            continue
        known += 1
        used = {r["defaults"] for r in rows if r.get("defaults_used", "True") != "False"}
        changed = _evidence_changed(rows)
        if changed:
            stale += 1
            lines.append(f"{path.name}: STALE, {changed}; rerun its script")
        elif used - {today}:
            stale += 1
            lines.append(f"{path.name}: STALE, ran with defaults {', '.join(sorted(used))} (today {today}); "
                         f"rerun its script")
        else:
            lines.append(f"{path.name}: current (commit {rows[0].get('commit')}, defaults {today})")
    for name, (script, result) in BLOCKS.items():
        rendered = importlib.import_module(script).render(read_csv(RESULTS / result))
        if readme_block(name) != rendered:
            stale += 1
            lines.append(f"README block '{name}': STALE, differs from what {script}.py renders from {result}")
    return lines, stale, known, unknown


def main() -> int:
    lines, stale, known, unknown = check()
    print("\n".join(lines))
    print(f"stale: {stale} of {known} result files with provenance ({unknown} without)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
