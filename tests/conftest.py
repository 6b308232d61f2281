"""Shared test settings: counts the fault-injection cases and prints their closing line.

The suite runs on two pytest-xdist workers (`-n 2 --dist loadfile`, README). Each worker, and every
process it starts (CLI runs, the app's server, Ray's workers), then uses one thread: two workers with
torch's default of one thread per core would put four threads on two cores, and oversubscribed torch
kernels spin and wait (measured: the fast loop 148 s with one thread each, 178 s without, 252 s serial).
"""
import os as _os

if "PYTEST_XDIST_WORKER" in _os.environ:  # read by torch when it is first imported, after this
    _os.environ.setdefault("OMP_NUM_THREADS", "1")

FAULTS = {"tried": 0, "survived": 0, "corrupted": 0}


def pytest_runtest_logreport(report):
    if report.when == "call" and "fault" in report.keywords:
        FAULTS["tried"] += 1
        if report.passed:
            FAULTS["survived"] += 1
        elif "run corrupted" in str(report.longrepr):
            FAULTS["corrupted"] += 1


def pytest_terminal_summary(terminalreporter):
    if FAULTS["tried"]:
        terminalreporter.write_line(
            f"faults: {FAULTS['tried']} tried, {FAULTS['survived']} survived, {FAULTS['corrupted']} runs corrupted")


# --------------------------------------------------------------------------------------------------
# Fake run directories that follow the run-directory contract (docs/ARCHITECTURE.md), for the app's
# tests: every file a finished (or running, or failed) run writes, without training anything.
import json as _json
from pathlib import Path as _Path

import pytest as _pytest


def write_fake_run(root, run_id: str, state: str = "done", method: str = "e2vpt", dataset: str = "digits",
                   layers: int = 3, prompt_len: int = 4, segments: int = 4, rounds: int = 2, epochs: int = 2,
                   pruning: bool = True, summary: bool = True, pid: int | None = None, test_acc: float = 0.8,
                   tuned_params: int = 1000):
    """A run folder as the trainer leaves it, every record built from `e2vpt.run_schema` (so a fake run
    has exactly the keys a trained one has); `pruning`/`summary` False leave those files out."""
    import numpy as np

    from e2vpt import run_schema as schema
    from e2vpt.config import TrainConfig
    from e2vpt.methods import method_named

    path = _Path(root) / run_id
    path.mkdir(parents=True)
    config = TrainConfig(method=method, dataset=dataset, pretrained=False, prompt_len=prompt_len, kv_len=1,
                         segments=segments, prune_rounds=rounds, epochs=epochs, retrain_epochs=1).to_dict()
    config["extra"] = {"created": "2026-01-01T00:00:00"}
    (path / "e2vpt-run.json").write_text(_json.dumps(schema.MARKER.make(format=1, created="2026-01-01T00:00:00")))
    (path / "config.json").write_text(_json.dumps(config))
    active = state in ("queued", "running")
    (path / "status.json").write_text(_json.dumps(schema.STATUS.make(
        state=state, progress=0.4 if active else (1.0 if state == "done" else 0.5),
        message={"done": f"test acc {test_acc:.3f}", "failed": "loss became nan at step 3; lower --lr",
                 "running": "train round 0: epoch 2/2", "cancelled": "cancelled by the user"}.get(state, state),
        pid=pid if pid is not None else (_os.getpid() if active else 999_999), updated="2026-01-01T00:00:10")))
    rng = np.random.default_rng(0)
    lines, step = [], 0
    n_rounds = rounds if method_named(method).prune else 0
    for r in range(n_rounds + 1):
        if r > 0:
            lines.append(schema.PRUNE.make(kind="prune", round=r, kept_tokens=6, kept_segments=20, tuned_params=900,
                                           score_s=0.1, scored_images=64, wall_s=1.0 + step))
        for e in range(epochs if r == 0 else 1):
            step += 1
            lines.append(schema.EPOCH.make(kind="epoch", phase="train" if r == 0 else "retrain", round=r, epoch=e + 1,
                                           train_loss=2.0 / step, train_acc=0.3 + 0.1 * step, val_loss=2.2 / step,
                                           val_acc=0.25 + 0.1 * step, lr=0.01, epoch_s=1.0, val_s=0.2,
                                           wall_s=float(step), tuned_params=tuned_params))
    (path / "metrics.jsonl").write_text("".join(_json.dumps(x) + "\n" for x in lines))
    if pruning:
        token = np.ones((layers, prompt_len))
        seg = np.ones((layers, prompt_len, segments))
        records = []
        for r in range(n_rounds + 1):
            importance = seg_importance = None
            if r > 0:
                scores = rng.random((layers, prompt_len))
                importance = np.where(token > 0, scores, np.nan)
                seg_scores = rng.random((layers, prompt_len, segments))
                seg_importance = np.where(seg > 0, seg_scores, np.nan)
                order = np.argsort(np.where(token > 0, scores, np.inf), axis=None)[: int(token.sum()) // 2]
                token = token.copy()
                token.flat[order] = 0
                seg = seg.copy()
                seg[..., 0] = 0
            records.append(schema.ROUND.make(
                round=r, token_mask=token.tolist(), segment_mask=seg.tolist(),
                token_importance=None if importance is None else
                [[None if np.isnan(v) else float(v) for v in row] for row in importance],
                segment_importance=None if seg_importance is None else
                [[[None if np.isnan(v) else float(v) for v in tok] for tok in row] for row in seg_importance],
                val_acc=0.7 + 0.05 * r, test_acc=0.68 + 0.05 * r, tuned_params=tuned_params - 100 * r,
                tuned_params_no_head=500 - 100 * r, tuned_pct=0.5 - 0.1 * r, kept_tokens=int(token.sum()),
                kept_segments=int((seg * token[..., None]).sum()), train_s=1.0, score_s=0.1 if r else 0.0,
                wall_s=2.0 * (r + 1), best_epoch=1))
        (path / "pruning.json").write_text(_json.dumps(schema.PRUNING.make(
            method=method, mask_scope="layer", segment_layout="interleaved", importance="abs",
            rewind="init", num_layers=layers, prompt_layers=layers, prompt_len=prompt_len,
            segments=segments, kv_len=1, backbone_params=200_000, selected_round=n_rounds,
            rounds=records)))
    if summary and state == "done":
        (path / "summary.json").write_text(_json.dumps(schema.SUMMARY.make(
            method=method, backbone="demo", dataset=dataset, test_acc=test_acc, val_acc=test_acc + 0.01,
            tuned_params=tuned_params, tuned_params_no_head=500, backbone_params=200_000,
            tuned_pct=100 * tuned_params / 200_000, tuned_pct_no_head=0.25, selected_round=n_rounds,
            rounds=n_rounds, wall_s=12.5, train_s=10.0, score_s=0.2 * n_rounds, device="cpu", precision="fp32",
            num_classes=10, class_names=[str(i) for i in range(10)], data_source="a fake run (tests/conftest.py)",
            torch_threads=1,
            produced_by={"e2vpt": "test"})))
    return path


@_pytest.fixture
def fake_run():
    """`fake_run(root, run_id, state=..., ...)` writes a contract-following run folder and returns its path."""
    return write_fake_run


@_pytest.fixture
def roots(tmp_path, monkeypatch):
    """Empty runs and data roots, configured the way the app reads them (environment variables)."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    data.mkdir()
    from e2vpt import runs as run_store

    monkeypatch.setenv(run_store.RUNS_ROOT_ENV, str(runs))
    monkeypatch.setenv(run_store.DATA_ROOT_ENV, str(data))
    return runs, data


@_pytest.fixture
def fake_spawn(monkeypatch):
    """Replace every process the launcher starts (training runs, sweep drivers) by `sleep`: a live process,
    so the run or sweep reads as active, that trains nothing. Yields the [(process, e2vpt arguments)]."""
    import subprocess

    from e2vpt import launch

    procs = []

    def spawn(log_file, args):
        proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
        procs.append((proc, args))
        return proc

    monkeypatch.setattr(launch, "_spawn_logged", spawn)
    yield procs
    for proc, _ in procs:
        proc.kill()
        proc.wait()


# Decoded-image caches go to one folder per test session, never to the user's ~/.cache.
if "E2VPT_CACHE_DIR" not in _os.environ:
    import tempfile as _tempfile

    _os.environ["E2VPT_CACHE_DIR"] = _tempfile.mkdtemp(prefix="e2vpt-decoded-")
