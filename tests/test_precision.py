"""bf16 on the CPU: the same trainer, scoring and evaluation code paths as on a GPU (where `auto` picks
bf16), run here under CPU autocast so they are tested without a GPU."""

import json

import pytest
import torch
from scipy import stats
from small_data import digits_folder
from torch.utils.data import DataLoader, Subset

from e2vpt import train
from e2vpt.config import TrainConfig
from e2vpt.models.pruning import score_importance
from e2vpt.runs import RunDir
from e2vpt.training.build import autocast_for, build_model_and_splits, evaluate, evaluate_run

SMALL = dict(backbone="demo", pretrained=True, method="e2vpt", dataset="imagefolder", data_root=str(digits_folder()),
             epochs=1, retrain_epochs=1, prune_rounds=1, prompt_len=4, kv_len=2, batch_size=64, seed=0)
CPU = torch.device("cpu")


def test_auto_is_fp32_on_the_cpu_and_bf16_is_autocast_there():
    assert autocast_for(CPU, "auto") is None and autocast_for(CPU, "fp32") is None
    with autocast_for(CPU, "bf16")():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_scores_and_evaluation_under_bf16_agree_with_fp32():
    model, splits = build_model_and_splits(TrainConfig(**SMALL))
    loader = DataLoader(Subset(splits.train, range(128)), batch_size=64)
    bf16 = autocast_for(CPU, "bf16")
    exact, rounded = score_importance(model, loader, CPU), score_importance(model, loader, CPU, autocast=bf16)
    assert torch.isfinite(rounded.segment).all() and rounded.images == exact.images == 128
    # bf16 keeps 8 bits of mantissa: the scores move, their order (what pruning reads) barely does
    rho = stats.spearmanr(exact.segment.flatten(), rounded.segment.flatten()).statistic
    assert rho > 0.9, rho
    val = DataLoader(splits.val, batch_size=256)
    (loss32, acc32), (loss16, acc16) = evaluate(model, val, CPU), evaluate(model, val, CPU, bf16)
    assert abs(acc32 - acc16) <= 0.02 and loss16 == pytest.approx(loss32, rel=0.05)


@pytest.mark.slow
def test_a_bf16_run_trains_prunes_and_reloads_to_its_own_accuracy(tmp_path):
    summary = train(TrainConfig(**SMALL, precision="bf16"), tmp_path / "bf16", quiet=True)
    assert summary["precision"] == "bf16"
    pruning = RunDir(tmp_path / "bf16").pruning()
    layers, p = len(pruning["rounds"][0]["token_mask"]), SMALL["prompt_len"]
    assert pruning["rounds"][1]["kept_tokens"] < layers * p  # scored and pruned under bf16
    assert all(v is None or v == v for row in pruning["rounds"][1]["token_importance"] for v in row)  # no NaN score
    again = evaluate_run(tmp_path / "bf16", device="cpu")  # evaluated at the precision it trained with
    assert again["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-9)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_the_demo_on_digits_under_bf16_stays_within_a_point_of_fp32(tmp_path):
    # One epoch, no pruning round: the numerics of training under bf16. Scoring and retraining under bf16
    # are the test above; a CPU without native bf16 takes about 15x fp32's time, so this stays short.
    config = dict(backbone="demo", dataset="digits", method="e2vpt", epochs=1, retrain_epochs=1, prune_rounds=0)
    fp32 = train(TrainConfig(**config, precision="fp32"), tmp_path / "fp32", quiet=True)
    bf16 = train(TrainConfig(**config, precision="bf16"), tmp_path / "bf16", quiet=True)
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert abs(bf16["test_acc"] - fp32["test_acc"]) <= 0.01, (bf16["test_acc"], fp32["test_acc"])


def test_bf16_on_a_cpu_that_only_emulates_it_is_said_before_starting():
    from e2vpt.launch import start_warnings

    emulated = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    said = [w for w in start_warnings(TrainConfig(**SMALL, precision="bf16", device="cpu")) if "emulated" in w]
    assert bool(said) == emulated
    assert not [w for w in start_warnings(TrainConfig(**SMALL, precision="fp32", device="cpu")) if "emulated" in w]
