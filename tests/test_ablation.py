"""The pruning criterion against reality (e2vpt.analysis.ablation): removals measured for real, cached."""

from __future__ import annotations

import pytest
import torch
from small_data import digits_folder
from torch.utils.data import DataLoader

from e2vpt import train
from e2vpt.analysis.ablation import cached_ablation, prompt_ablation
from e2vpt.charts import ablation_frame, ablation_scatter
from e2vpt.config import TrainConfig
from e2vpt.errors import RunDirError
from e2vpt.training.build import evaluate, load_run_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("ablation") / "run"
    config = TrainConfig(backbone="demo", dataset="imagefolder", data_root=str(digits_folder()), method="e2vpt",
                         epochs=1, retrain_epochs=1, prune_rounds=1, prompt_len=2, kv_len=1)
    train(config, path, quiet=True)
    return path


def independent_val_loss(run, cells) -> float:
    """Validation loss of round 0's model with `cells` (0-based layer, token) masked, by plain per-image reads."""
    model, _, splits = load_run_model(run, round_index=0)
    for layer, token in cells:
        model.tuned.token_mask[layer, token] = 0.0
    return evaluate(model, DataLoader(splits.val, batch_size=64), torch.device("cpu"))[0]


def test_each_removal_is_measured_for_real_and_set_beside_its_score(pruned_run):
    audit = prompt_ablation(pruned_run, 1, device="cpu")
    record = __import__("json").loads((pruned_run / "pruning.json").read_text())["rounds"]
    alive = torch.tensor(record[0]["token_mask"]).bool()
    kept_after = torch.tensor(record[1]["token_mask"]).bool()
    assert len(audit["tokens"]) == int(alive.sum())
    base = independent_val_loss(pruned_run, [])
    assert audit["base_val_loss"] == pytest.approx(base, abs=1e-5)
    for row in audit["tokens"][:3]:  # a removal's measured change is the real one
        cell = (row["layer"] - 1, row["token"] - 1)
        assert row["val_loss_change"] == pytest.approx(independent_val_loss(pruned_run, [cell]) - base, abs=1e-5)
        assert row["score"] == pytest.approx(record[1]["token_importance"][cell[0]][cell[1]])
        assert row["pruned"] == (not bool(kept_after[cell]))
    assert sorted(r["rank"] for r in audit["tokens"]) == list(range(1, len(audit["tokens"]) + 1))
    lowest = min(audit["tokens"], key=lambda r: r["score"])
    assert lowest["rank"] == 1
    first_layer = [(0, t) for t in range(alive.shape[1]) if alive[0, t]]
    assert audit["layers"][0]["val_loss_change"] == pytest.approx(
        independent_val_loss(pruned_run, first_layer) - base, abs=1e-5)
    assert -1.0 <= audit["spearman"] <= 1.0
    figure = ablation_scatter(audit)
    assert "Spearman rho" in figure.layout.title.text and len(ablation_frame(audit)) == len(audit["tokens"])


def test_the_audit_is_cached_and_refreshed_on_request(pruned_run):
    first = prompt_ablation(pruned_run, 1, device="cpu")
    assert cached_ablation(pruned_run, 1) == first
    cache = pruned_run / "analysis" / "ablation-round-1.json"
    cache.write_text(cache.read_text().replace('"version": 1', '"version": 0'))  # from another version: ignored
    assert cached_ablation(pruned_run, 1) is None
    again = prompt_ablation(pruned_run, 1, device="cpu", refresh=True)
    assert [r["val_loss_change"] for r in again["tokens"]] == pytest.approx([r["val_loss_change"] for r in first["tokens"]])


@pytest.mark.parametrize("round_index", [0, 2])
def test_a_round_without_a_decision_is_refused_with_the_rounds_that_have_one(pruned_run, round_index):
    with pytest.raises(RunDirError, match="rounds with scores: 1"):
        prompt_ablation(pruned_run, round_index, device="cpu")
