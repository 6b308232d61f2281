"""End-to-end properties of training runs on digits: learning, frozen backbone, records, reload, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from e2vpt.models.backbones import create_backbone
from e2vpt.training.build import evaluate, evaluate_run, load_run_model
from e2vpt.config import TrainConfig
from e2vpt.fileio import read_jsonl
from e2vpt.runs import RunDir
from e2vpt import train
from e2vpt.training.trainer import Trainer

from small_data import digits_folder

import procs  # tests/procs.py: `python -m e2vpt` forked from a preloaded server

REPO = Path(__file__).resolve().parents[1]
FAST = dict(backbone="demo", pretrained=True, dataset="digits", epochs=1, retrain_epochs=1, prompt_len=4,
            kv_len=2, batch_size=64, seed=0)
# 240 real digit images in a folder (tests/small_data.py), for tests of bookkeeping rather than learning
SMALL = dict(dataset="imagefolder", data_root=str(digits_folder()))


@pytest.fixture(scope="module")
def e2vpt_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "e2vpt"
    config = TrainConfig(method="e2vpt", prune_rounds=2, prune_ratio=0.5, **FAST)
    trainer = Trainer(config, run_dir, quiet=True)
    summary = trainer.fit()
    return run_dir, summary, trainer


@pytest.mark.slow
def test_run_directory_holds_every_file_of_the_contract(e2vpt_run):
    run_dir, summary, _ = e2vpt_run
    for name in ("config.json", "status.json", "metrics.jsonl", "pruning.json", "summary.json", "weights.safetensors"):
        assert (run_dir / name).is_file(), name
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["progress"] == 1.0
    for key in ("method", "backbone", "dataset", "test_acc", "val_acc", "tuned_params", "backbone_params",
                "tuned_pct", "wall_s"):
        assert key in summary
    weights = load_file(str(run_dir / "weights.safetensors"))
    assert all(k.startswith("tuned.") for k in weights) and "tuned.token_mask" in weights


@pytest.mark.slow
def test_short_run_beats_chance_and_reloads_to_the_same_accuracy(e2vpt_run):
    run_dir, summary, _ = e2vpt_run
    assert summary["test_acc"] > 0.3  # 10 classes: chance is 0.1
    again = evaluate_run(run_dir, device="cpu")
    assert again["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-9)
    assert again["tuned_params"] == summary["tuned_params"]


@pytest.mark.slow
def test_every_pruning_round_reloads_to_the_test_accuracy_it_recorded(e2vpt_run):
    """Training and reloading build the model in one place (`e2vpt/training/build.py`), so each round's saved
    state, rebuilt from the run directory alone, scores exactly what the trainer recorded for it."""
    run_dir, _, _ = e2vpt_run
    rounds = json.loads((run_dir / "pruning.json").read_text())["rounds"]
    for record in rounds:
        model, _, splits = load_run_model(run_dir, round_index=record["round"])
        _, test_acc = evaluate(model, DataLoader(splits.test, batch_size=256), torch.device("cpu"))
        assert test_acc == record["test_acc"], record["round"]


@pytest.mark.slow
def test_backbone_is_bit_identical_after_training(e2vpt_run):
    _, _, trainer = e2vpt_run
    fresh = create_backbone("demo", pretrained=True)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), trainer.model.backbone.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_pruning_record_shrinks_each_round_and_masks_are_nested(e2vpt_run):
    run_dir, summary, _ = e2vpt_run
    pruning = json.loads((run_dir / "pruning.json").read_text())
    rounds = pruning["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    tuned = [r["tuned_params"] for r in rounds]
    assert tuned[0] > tuned[1] > tuned[2]
    masks = [torch.tensor(r["token_mask"]) for r in rounds]
    assert masks[0].shape == (6, 4) and bool((masks[0] == 1).all())
    assert bool((masks[2] <= masks[1]).all()) and bool((masks[1] <= masks[0]).all())  # pruned stays pruned
    assert rounds[0]["token_importance"] is None
    importance = rounds[2]["token_importance"]
    for layer in range(6):
        for k in range(4):
            assert (importance[layer][k] is None) == (masks[1][layer, k] == 0)  # scored on round 1's survivors
    assert summary["tuned_pct"] < 5
    assert pruning["selected_round"] == summary["selected_round"] >= 1


@pytest.mark.slow
def test_metrics_have_one_line_per_epoch_and_one_per_prune(e2vpt_run):
    records = read_jsonl(e2vpt_run[0] / "metrics.jsonl")
    assert [(r["kind"], r["round"]) for r in records] == [("epoch", 0), ("prune", 1), ("epoch", 1), ("prune", 2),
                                                         ("epoch", 2)]


@pytest.mark.parametrize("method", ["linear", pytest.param("vpt-shallow", marks=pytest.mark.slow),
                                    pytest.param("full", marks=pytest.mark.slow)])
def test_every_method_trains_from_the_same_loop(tmp_path, method):
    summary = train(TrainConfig(method=method, **FAST), tmp_path / method, quiet=True)
    assert summary["test_acc"] > 0.2 and summary["method"] == method
    if method == "full":
        assert summary["tuned_pct"] > 100
    else:
        assert summary["tuned_pct"] < 1


@pytest.mark.slow
def test_a_random_init_backbone_run_reloads_to_the_same_accuracy(tmp_path):
    """--no-pretrained: the backbone is not saved, so reloading must rebuild the same random weights."""
    summary = train(TrainConfig(method="vpt-deep", **dict(FAST, pretrained=False, **SMALL)), tmp_path / "random",
                    quiet=True)
    again = evaluate_run(tmp_path / "random", device="cpu")
    assert again["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-9)


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_result_across_pruning_rounds(tmp_path, monkeypatch):
    config = dict(FAST, method="e2vpt", prune_rounds=1, retrain_epochs=2, **SMALL)
    reference = train(TrainConfig(**config), tmp_path / "reference", quiet=True)

    calls = {"n": 0}
    original = Trainer._train_epoch

    def crash_on_third_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # second epoch of the retrain phase, after pruning and one retrain epoch
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), tmp_path / "crashed", quiet=True)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert RunDir(tmp_path / "crashed").status()["state"] == "cancelled"
    resumed = train(TrainConfig(**config), tmp_path / "crashed", resume=True, quiet=True)
    assert resumed["test_acc"] == reference["test_acc"] and resumed["val_acc"] == reference["val_acc"]
    a = load_file(str(tmp_path / "reference" / "weights.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    kinds = [(r["kind"], r["round"], r.get("epoch")) for r in read_jsonl(tmp_path / "crashed" / "metrics.jsonl")]
    assert kinds == [("epoch", 0, 1), ("prune", 1, None), ("epoch", 1, 1), ("epoch", 1, 2)]


@pytest.mark.slow
def test_a_run_on_train_and_val_keeps_its_last_epoch_and_round_since_nothing_is_held_out(tmp_path):
    config = TrainConfig(**dict(FAST, method="e2vpt", epochs=2, retrain_epochs=2, prune_rounds=1, train_on="train+val",
                                **SMALL))
    summary = train(config, tmp_path / "final", quiet=True)
    pruning = RunDir(tmp_path / "final").pruning()
    assert summary["selected_round"] == pruning["selected_round"] == 1  # the last round, whatever val says
    assert [r["best_epoch"] for r in pruning["rounds"]] == [2, 2]  # each phase's last epoch
    assert "Trained on train + val" in summary["data_source"] and "not held-out" in summary["data_source"]


def test_train_and_val_is_refused_where_the_dataset_already_trains_on_both():
    from e2vpt.errors import ConfigError

    with pytest.raises(ConfigError, match="already trains on train800val200"):
        TrainConfig(dataset="vtab-train800val200", train_on="train+val")


def cli(*args, cwd=None):
    return procs.run(*args, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_refuses_bad_input_with_one_line_and_nonzero_exit(tmp_path, e2vpt_run, capsys):
    """The CLI's own entry point, called in-process (what `python -m e2vpt` runs, minus the interpreter start)."""
    from e2vpt.cli import main

    cases = [
        (["train", "--backbone", "no_such_vit", "--no-pretrained"], "unknown backbone"),
        (["train", "--backbone", "resnet18", "--no-pretrained"], "not a timm VisionTransformer"),
        (["train", "--prompt-len", "0"], "prompt_len (--prompt-len)"),
        (["train", "--prune-ratio", "1.5"], "prune_ratio (--prune-ratio)"),
        (["train", "--segments", "1000", "--no-pretrained"], "embedding dimension"),
        (["train", "--run-dir", str(e2vpt_run[0])], "already holds a finished run"),
        (["train", "--weights", str(e2vpt_run[0] / "weights.safetensors")], "does not fit backbone"),
        (["train", "--dataset", "no-such-set", "--no-pretrained"], "no-such-set"),
    ]
    for args, expected in cases:
        run_dir = tmp_path / f"r{len(args)}"
        full = args if "--run-dir" in args else args + ["--run-dir", str(run_dir)]
        code, stderr = main(full), capsys.readouterr().err
        assert code == 2, (args, stderr)
        assert expected in stderr, (args, stderr)
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert (e2vpt_run[0] / "summary.json").is_file()  # the finished run was not touched


@pytest.mark.slow
def test_cli_config_file_with_flag_override(tmp_path):
    (tmp_path / "c.yaml").write_text("method: linear\nepochs: 1\nbackbone: demo\npretrained: false\nlr: 0.5\n"
                                     f"dataset: imagefolder\ndata_root: {SMALL['data_root']}\n")
    result = cli("train", "--config", str(tmp_path / "c.yaml"), "--lr", "0.01", "--run-dir", str(tmp_path / "run"),
                 "--quiet")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method"] == "linear" and config["lr"] == 0.01


@pytest.mark.parametrize("when", ["before its first epoch", "after its first epoch"])
def test_a_cancelled_run_says_what_it_kept(tmp_path, when):
    from e2vpt.errors import Cancelled

    config = TrainConfig(method="vpt-deep", **dict(FAST, **SMALL, epochs=2))
    trainer = Trainer(config, tmp_path / "run", quiet=True,
                      on_epoch=lambda record: setattr(trainer, "stop_requested", True))
    trainer.stop_requested = when == "before its first epoch"
    with pytest.raises(Cancelled) as info:
        trainer.fit()
    status = RunDir(tmp_path / "run").status()
    assert status["state"] == "cancelled" and status["message"] == str(info.value)
    if when == "before its first epoch":
        assert "nothing trained is kept" in status["message"] and "partial" not in status["message"]
        assert not RunDir(tmp_path / "run").checkpoint_file.exists()
    else:
        assert "every completed epoch is kept" in status["message"]
        assert RunDir(tmp_path / "run").checkpoint_file.exists()


def test_progress_moves_inside_an_epoch_with_a_remaining_time_from_measured_steps(tmp_path, monkeypatch):
    written = []
    original = RunDir.write_status

    def spy(self, state, progress=None, message="", **extra):
        written.append(dict(state=state, progress=progress, **extra))
        return original(self, state, progress, message, **extra)

    monkeypatch.setattr(RunDir, "write_status", spy)
    monkeypatch.setattr(Trainer, "STATUS_EVERY_S", 0.0)  # every step's status, not two a second
    train(TrainConfig(method="vpt-deep", **dict(FAST, epochs=2)), tmp_path / "run", quiet=True)
    inside = [w for w in written if w.get("progress_in_epoch") is not None]
    assert len(inside) >= 4, written
    for w in inside:  # 2 units (epochs): the bar is (epochs done + share of this one) / 2
        done = 2 * w["progress"] - w["progress_in_epoch"]
        assert min(abs(done), abs(done - 1)) < 2e-3  # whole epochs done: 0 or 1
        assert w["remaining_s"] > 0 or w["progress"] == 1.0  # nothing left only at the very end
    first = [w for w in inside if w["progress"] < 0.5]
    assert first and 0 < first[0]["progress"] < first[-1]["progress"] < 0.5  # it moves during the first epoch
    second = [w for w in inside if w["progress"] >= 0.5]
    assert second and second[-1]["remaining_s"] < first[0]["remaining_s"]  # and the estimate comes down


# Three runs, each in its own thread that outlives its run (as a Ray Tune worker reused across a
# sweep's trials does): glibc gives each thread a new malloc arena, and without handing free memory
# back each arena kept its run's peak (measured: +0.6 GB a run here, +1.3 GB a run on digits; Ray
# killed a sweep's workers at 11 GB). With it, three runs add a few MB.
_RUNS_IN_LIVE_THREADS = """
import os, sys, tempfile, threading
import torch
from e2vpt.config import TrainConfig
from e2vpt import train
torch.set_num_threads(1)
def rss_mb():
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
folder, hold = tempfile.mkdtemp(), threading.Event()
def run(i, finished):
    config = TrainConfig(backbone="demo", dataset="imagefolder", data_root=sys.argv[1], method="e2vpt", epochs=1,
                         retrain_epochs=1, prune_rounds=1, prompt_len=4, kv_len=2, seed=i)
    train(config, f"{folder}/run{i}", quiet=True, embeddings=False)
    finished.set()
    hold.wait()  # the thread lives on, holding its arena
for i in range(3):
    finished = threading.Event()
    threading.Thread(target=run, args=(i, finished), daemon=True).start()
    finished.wait()
    print(f"rss {rss_mb():.0f}", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas, read from /proc")
def test_a_process_training_run_after_run_in_new_threads_does_not_keep_each_runs_peak():
    out = subprocess.run([sys.executable, "-c", _RUNS_IN_LIVE_THREADS, SMALL["data_root"]], capture_output=True, text=True,
                         timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rss = [float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("rss ")]
    assert len(rss) == 3
    assert rss[2] - rss[0] < 300, f"resident memory after each run (MB): {rss}"


@pytest.mark.slow  # a short pruned run and its audit, about 30 s
def test_audit_pruning_measures_each_decision_when_training_ends_and_is_priced_from_measured_passes(tmp_path):
    from e2vpt.analysis.ablation import cached_ablation, estimate_seconds

    config = TrainConfig(backbone="demo", pretrained=False, dataset="digits", epochs=1, retrain_epochs=1,
                         prune_rounds=2, prompt_len=2, kv_len=1, audit_pruning=True)
    summary = train(config, tmp_path / "run", quiet=True)
    run = RunDir(tmp_path / "run")
    for decision in (1, 2):  # the Prompts page shows these at once
        audit = cached_ablation(run.path, decision)
        assert audit is not None and audit["decision_round"] == decision and audit["tokens"]
    assert summary["audit_s"] > 0
    epochs = [m for m in run.metrics() if m.get("kind") == "epoch"]
    assert all(0 < m["val_s"] < m["epoch_s"] for m in epochs)
    passes, seconds = estimate_seconds(run.path, 1)
    alive = sum(map(sum, run.pruning()["rounds"][0]["token_mask"]))
    assert passes == alive + len(run.pruning()["rounds"][0]["token_mask"]) + 1  # tokens, layers, the base
    times = sorted(m["val_s"] for m in epochs)
    middle = (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2  # the median, written out
    assert seconds == pytest.approx(passes * middle)
    plain = train(TrainConfig.from_dict({**config.to_dict(), "audit_pruning": False}), tmp_path / "plain", quiet=True)
    assert "audit_s" not in plain and cached_ablation(tmp_path / "plain", 1) is None
    assert plain["test_acc"] == summary["test_acc"]  # the audit changes nothing the run trains
