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
