"""The GPU check script (benchmarks/gpu_check.sh) is ready to run: its CPU dry run takes every step."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(*args: str, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "GPU_CHECK_OUT": str(out), **(env or {})})


def test_without_a_gpu_the_check_says_so_in_one_line_and_writes_nothing(tmp_path):
    done = run_check(out=tmp_path / "out", env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_dry_run_takes_every_step_of_the_gpu_check_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    done = run_check("--dry-run", out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    for step in ("env", "step_cost", "demo", "gpu_epoch_compile_off", "gpu_epoch_compile_on"):
        assert any(line.startswith(f"gpu_check: {step} ok") for line in lines), (step, lines)
    assert lines[-1] == f"gpu check: 0 step(s) failed; results in {out}"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    with open(out / "step_cost.csv") as f:
        assert len(list(csv.DictReader(f))) >= 3
    for name, compiled in (("gpu_epoch_compile_off.csv", "False"), ("gpu_epoch_compile_on.csv", "True")):
        with open(out / name) as f:
            (row,) = list(csv.DictReader(f))
        assert row["compile"] == compiled and float(row["samples_per_s"]) > 0 and float(row["loader_img_per_s"]) > 0


# --------------------------------------------------------------------------------------------------
# published numbers: generated from result files that say which commit, defaults and machine made them
def _benchmarks():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common
    import stale

    return common, stale


def test_the_published_ablation_table_is_what_its_script_renders_from_a_current_result():
    """benchmarks/README.md's ablation block is exactly `ablation_demo.render` of results/ablation_demo.csv,
    and that result ran with today's defaults: change a default and this fails until the script is rerun."""
    common, stale = _benchmarks()
    import ablation_demo

    rows = common.read_csv(common.RESULTS / "ablation_demo.csv")
    assert rows and common.readme_block("ablation") == ablation_demo.render(rows)
    assert {r["defaults"] for r in rows} == {common.defaults_digest()}, \
        "the defaults changed since benchmarks/ablation_demo.py last ran: rerun it (python benchmarks/stale.py)"
    assert not rows[0]["commit"].endswith("+changes") and rows[0]["cpu"] and rows[0]["date"]
    lines, found, known, _ = stale.check()
    assert not [line for line in lines if line.startswith("ablation_demo.csv") and "STALE" in line], lines


def test_the_staleness_check_sees_a_changed_default_and_an_edited_table(tmp_path, monkeypatch):
    common, stale = _benchmarks()
    import shutil

    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir()
    shutil.copy(common.RESULTS / "ablation_demo.csv", results / "ablation_demo.csv")
    shutil.copy(common.README, readme)
    monkeypatch.setattr(stale, "RESULTS", results)
    monkeypatch.setattr(stale, "readme_block", lambda name: common.readme_block(name, readme))
    lines, found, known, _ = stale.check()
    assert found == 0 and known == 1, lines
    monkeypatch.setattr(stale, "defaults_digest", lambda: "a-new-default")  # a default changed since the run
    lines, found, _, _ = stale.check()
    assert found == 1 and any(line.startswith("ablation_demo.csv: STALE") for line in lines), lines
    monkeypatch.undo()
    monkeypatch.setattr(stale, "RESULTS", results)
    monkeypatch.setattr(stale, "readme_block", lambda name: common.readme_block(name, readme))
    readme.write_text(readme.read_text().replace("| round 1 |", "| round 1 (edited by hand) |"))
    lines, found, _, _ = stale.check()
    assert found == 1 and any("README block 'ablation': STALE" in line for line in lines), lines
