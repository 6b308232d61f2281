"""The pruning search's building block: a run that takes its phase 0 (and the scores after it) from
another finished run ends exactly where the same configuration trained from scratch ends."""

import pytest
import torch
from safetensors.torch import load_file
from small_data import digits_folder

from e2vpt import train
from e2vpt.config import TrainConfig
from e2vpt.errors import RunDirError
from e2vpt.fileio import read_jsonl
from e2vpt.runs import RunDir
from e2vpt.training.trainer import Trainer

BASE = dict(backbone="demo", pretrained=True, method="e2vpt", dataset="imagefolder", data_root=str(digits_folder()),
            epochs=1, retrain_epochs=1, prompt_len=4, kv_len=2, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def scout(tmp_path_factory):
    """Phase 0 alone (no pruning round), scored once after it."""
    path = tmp_path_factory.mktemp("search") / "scout"
    train(TrainConfig(**BASE, prune_rounds=0), path, quiet=True, score_after=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("levels", [dict(prune_ratio=0.5, segment_ratio=0.25), dict(prune_ratio=0.25, segment_ratio=0.5)])
def test_a_level_started_from_the_shared_phase_0_equals_the_run_trained_from_scratch(tmp_path, scout, levels):
    config = dict(BASE, prune_rounds=1, **levels)
    scratch = train(TrainConfig(**config), tmp_path / "scratch", quiet=True)
    shared = train(TrainConfig(**config), tmp_path / "shared", quiet=True, phase0_from=scout)
    assert (shared["test_acc"], shared["val_acc"], shared["tuned_params"]) == \
        (scratch["test_acc"], scratch["val_acc"], scratch["tuned_params"])
    a, b = load_file(str(tmp_path / "scratch" / "weights.safetensors")), load_file(str(tmp_path / "shared" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same pieces pruned, the same values trained
    # the shared run scored nothing itself (the scout's scores were used) and trained only its round 1
    prune = [r for r in read_jsonl(tmp_path / "shared" / "metrics.jsonl") if r["kind"] == "prune"]
    assert len(prune) == 1 and prune[0]["score_s"] < 0.05
    epochs = [(r["round"], r["epoch"]) for r in read_jsonl(tmp_path / "shared" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [(0, 1), (1, 1)]  # round 0's line is the scout's, so every page draws the whole run
    assert shared["phase0_from"] == str(scout) and shared["wall_s"] < scratch["wall_s"]
    assert RunDir(tmp_path / "shared").config()["extra"]["phase0_from"] == str(scout.resolve())


@pytest.mark.slow
def test_a_scout_that_differs_beyond_pruning_settings_is_refused_and_nothing_is_trained(tmp_path, scout):
    with pytest.raises(RunDirError, match="differs in lr"):
        train(TrainConfig(**dict(BASE, prune_rounds=1, lr=0.5)), tmp_path / "other", quiet=True, phase0_from=scout)
    with pytest.raises(RunDirError, match="has not finished"):
        train(TrainConfig(**dict(BASE, prune_rounds=1)), tmp_path / "other2", quiet=True, phase0_from=tmp_path / "none")


@pytest.mark.slow
def test_a_shared_run_killed_in_its_round_resumes_from_its_own_checkpoint(tmp_path, scout, monkeypatch):
    config = dict(BASE, prune_rounds=1, retrain_epochs=2)
    reference = train(TrainConfig(**config), tmp_path / "reference", quiet=True, phase0_from=scout)
    original = Trainer._train_epoch
    calls = {"n": 0}

    def crash_on_second_retrain_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_on_second_retrain_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), tmp_path / "crashed", quiet=True, phase0_from=scout)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    # resumed as `python -m e2vpt train --resume` does: from config.json alone, which names the scout
    saved = TrainConfig.from_dict(RunDir(tmp_path / "crashed").config())
    resumed = train(saved, tmp_path / "crashed", resume=True, quiet=True)
    assert (resumed["test_acc"], resumed["tuned_params"]) == (reference["test_acc"], reference["tuned_params"])


@pytest.mark.slow
def test_a_scout_saved_by_an_older_version_with_amp_still_stands_in(tmp_path, scout):
    import json
    import shutil

    old = tmp_path / "old-scout"
    shutil.copytree(scout, old)
    config = json.loads((old / "config.json").read_text())
    config.pop("precision")
    config["amp"] = True  # what this project wrote before --precision
    (old / "config.json").write_text(json.dumps(config))
    summary = train(TrainConfig(**BASE, prune_rounds=1), tmp_path / "level", quiet=True, phase0_from=old)
    assert summary["phase0_from"] == str(old)
