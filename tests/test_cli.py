"""The command line finds runs and data where the app does: `$E2VPT_RUNS_ROOT` and `$E2VPT_DATA_ROOT`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from e2vpt.config import TrainConfig
from e2vpt.runs import DATA_ROOT_ENV, RUNS_ROOT_ENV, list_runs, with_data_root

import procs  # tests/procs.py: `python -m e2vpt` forked from a preloaded server

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, env: dict, cwd: Path):
    """`python -m e2vpt ARGS` in `cwd` with `env` added (a process forked from tests/procs.py's preloaded server)."""
    return procs.run(*args, timeout=600, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.mark.slow
def test_cli_runs_live_under_the_runs_root_the_app_reads(tmp_path):
    runs, elsewhere = tmp_path / "X", tmp_path / "cwd"
    elsewhere.mkdir()
    env = {RUNS_ROOT_ENV: str(runs)}
    result = cli("train", "--method", "linear", "--epochs", "1", "--no-pretrained", "--quiet", env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    (run,) = list_runs(runs)  # the app's listing sees it
    assert run["state"] == "done" and run["method"] == "linear"
    assert list(elsewhere.iterdir()) == []  # nothing written to ./runs of the current folder
    listed = cli("runs", env=env, cwd=elsewhere)
    assert listed.returncode == 0 and run["id"] in listed.stdout
    evaluated = cli("eval", run["id"], "--device", "cpu", env=env, cwd=elsewhere)  # a run id is enough
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_acc"] == run["test_acc"]


def test_relative_data_paths_are_read_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    config = with_data_root(TrainConfig(dataset="imagefolder", data_root="pets", weights="w/vit.safetensors"))
    assert config.data_root == str((tmp_path / "data" / "pets").resolve())
    assert config.weights == str((tmp_path / "data" / "w" / "vit.safetensors").resolve())
    assert with_data_root(TrainConfig(dataset="cifar10")).data_root == str((tmp_path / "data").resolve())
    assert with_data_root(TrainConfig(dataset="digits")).data_root is None  # built-ins read no folder
    absolute = str(tmp_path / "elsewhere")
    assert with_data_root(TrainConfig(dataset="imagefolder", data_root=absolute)).data_root == absolute


def test_without_a_data_root_relative_paths_stay_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    config = with_data_root(TrainConfig(dataset="imagefolder", data_root="pets"))
    assert config.data_root == str((tmp_path / "pets").resolve())
