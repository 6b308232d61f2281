"""Multi-process training (torchrun, gloo on the CPU) follows the single-process path."""

import json
import os
import subprocess
import sys

import pytest
from small_data import digits_folder

# 240 real digit images (tests/small_data.py): the test compares two ways of running, not learning
ARGS = ["train", "--backbone", "demo", "--dataset", "imagefolder", "--data-root", str(digits_folder()), "--method", "e2vpt", "--epochs", "1",
        "--retrain-epochs", "1", "--prune-rounds", "1", "--prompt-len", "4", "--kv-len", "2", "--batch-size", "64",
        "--seed", "3", "--quiet"]


def run(cmd, run_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd + ARGS + ["--run-dir", str(run_dir)], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text()), json.loads((run_dir / "pruning.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single, single_pruning = run([sys.executable, "-m", "e2vpt"], tmp_path / "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "e2vpt"]
    multi, multi_pruning = run(torchrun, tmp_path / "multi")
    for a, b in zip(single_pruning["rounds"], multi_pruning["rounds"]):
        assert a["token_mask"] == b["token_mask"] and a["segment_mask"] == b["segment_mask"]
    assert abs(single["test_acc"] - multi["test_acc"]) <= 0.01
    assert abs(single["val_acc"] - multi["val_acc"]) <= 0.01
    # only rank 0 wrote: one line per epoch, no duplicates
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
