"""Which published numbers are still current? Every result file in benchmarks/results/ that records
provenance (a `defaults` digest and a `commit` column, `common.provenance`) is compared with today's
defaults; one computed from an evidence file (an `evidence_sha256` column, `common.evidence_source`)
with that file as it is now; and every generated block of benchmarks/README.md with what its script
renders from its result file today.

    python benchmarks/stale.py        # one line per result file; exit 1 when something is stale

Files written before results recorded their provenance are listed as such: their numbers cannot be
tied to a commit or to defaults, and are rerun when the issue that owns them is next worked on.
Last line: `stale: N (result files with provenance: M; README blocks: B); K result files without provenance`.
"""

from __future__ import annotations

import importlib
import re
import sys

from common import README, REPO, RESULTS, defaults_digest, read_csv, readme_block

# generated README blocks: block name -> (the script that writes it, its result file)
BLOCKS = {"ablation": ("ablation_demo", "ablation_demo.csv"),
          "defaults-choice": ("defaults_choice", "defaults_choice.csv"),
          "defaults-report": ("defaults_report", "defaults_report.csv"),
          "class-comparison": ("class_comparison", "class_comparison.csv"),
          "class_comparison_time": ("class_comparison_time", "class_comparison_time.csv"),
          "step_cost": ("step_cost_report", "step_cost.csv"),
          "step_cost_pruned_tokens": ("step_cost_report", "step_cost_pruned_tokens.csv"),
          "demo_time": ("demo_time", "demo_time.csv"),
          "mini_table": ("mini_table", "mini_table.csv"),
          "sweep_overhead": ("sweep_overhead", "sweep_overhead.csv"),
          "input_pipeline": ("input_pipeline", "input_pipeline.csv"),
          "precision": ("precision", "precision.csv"),
          "inference": ("inference", "inference.csv"),
          "sweeps_page": ("sweeps_page", "sweeps_page.csv"),
          "embeddings_open": ("embeddings_open", "embeddings_open.csv"),
          "embeddings_compare": ("embeddings_open", "embeddings_compare.csv")}


def _evidence_changed(rows: list[dict]) -> str | None:
    """Why a table computed from an evidence file no longer stands, or None: the file changed since, or
    (for a table whose trials ran at the defaults) today's defaults would train other settings for it."""
    from e2vpt.errors import RunDirError
    from e2vpt.sweeps import evidence

    recorded = {(r.get("evidence"), r.get("evidence_sha256"), r.get("defaults_used") != "False")
                for r in rows if r.get("evidence_sha256")}
    for name, sha, at_defaults in recorded:
        path = REPO / name
        try:
            data = evidence.read(path)
        except RunDirError as exc:
            return str(exc)
        if evidence.digest(path) != sha:
            return f"{name} changed since the table was computed from it"
        differs = evidence.stale_trials(data) if at_defaults else []
        if differs:
            return f"today's defaults would train other settings for {name} ({differs[0]}); rerun the sweep"
    return None


def _result_line(path, rows: list[dict], today: str) -> tuple[bool, str]:
    """(stale, the line saying so) for one result file with provenance."""
    used = {r["defaults"] for r in rows if r.get("defaults_used", "True") != "False"}
    commits = {r.get("commit") or "unknown" for r in rows}
    dirty = sorted(c for c in commits if c == "unknown" or c.endswith("+changes"))
    changed = _evidence_changed(rows)
    if changed:
        return True, f"{path.name}: STALE, {changed}; rerun its script"
    if used - {today}:
        return True, f"{path.name}: STALE, ran with defaults {', '.join(sorted(used))} (today {today}); rerun its script"
    if dirty:
        return True, f"{path.name}: STALE, made by code no commit holds ({', '.join(dirty)}); rerun it from a clean checkout"
    return False, f"{path.name}: current (commit {', '.join(sorted(commits))}, defaults {today})"


def check() -> tuple[list[str], int, int, int]:
    """(report lines, stale results and blocks, result files with provenance, without)."""
    today = defaults_digest()
    lines, stale, known, unknown = [], 0, 0, 0
    for path in sorted(RESULTS.glob("*.csv")):
        rows = read_csv(path)
        if not rows or "defaults" not in rows[0]:
            unknown += 1
            lines.append(f"{path.name}: no provenance recorded (written before results carried commit and defaults)")
            continue
        known += 1
        is_stale, line = _result_line(path, rows, today)
        stale += is_stale
        lines.append(line)
    markers = set(re.findall(r"^<!-- generated: (\S+) -->$", README.read_text(), re.M))
    for name in sorted(markers ^ set(BLOCKS)):
        stale += 1
        lines.append(f"README block '{name}': STALE, " + ("no script is registered for it in stale.py" if name in markers
                                                         else "registered in stale.py but missing from the README"))
    for name, (script, result) in BLOCKS.items():
        try:
            rendered = importlib.import_module(script).render(read_csv(RESULTS / result))
        except Exception as exc:  # noqa: BLE001 - a result file the script can no longer read: say so, go on
            stale += 1
            lines.append(f"README block '{name}': STALE, {script}.py cannot render {result} ({type(exc).__name__}: {exc})")
            continue
        if readme_block(name, README) != rendered:
            stale += 1
            lines.append(f"README block '{name}': STALE, differs from what {script}.py renders from {result}")
    return lines, stale, known, unknown


def main() -> int:
    lines, stale, known, unknown = check()
    print("\n".join(lines))
    print(f"stale: {stale} (result files with provenance: {known}; README blocks: {len(BLOCKS)}); "
          f"{unknown} result files without provenance")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
