"""A finished run's embeddings: written when training ends, opened without evaluating the model,
compared with honest intervals, and their images reachable point by point."""

import json

import numpy as np
import pytest
import streamlit as st
import torch
from small_data import digits_folder
from test_app import open_page

from e2vpt import charts
from e2vpt import runs as run_store
from e2vpt import train
from e2vpt.analysis import embeddings
from e2vpt.config import TrainConfig
from e2vpt.runs import RunDir
from e2vpt.training.build import load_run_splits

SMALL = dict(backbone="demo", pretrained=True, dataset="imagefolder", data_root=str(digits_folder()), epochs=1,
             retrain_epochs=1, prune_rounds=1, prompt_len=4, kv_len=2, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs = tmp_path_factory.mktemp("emb") / "runs"
    run_dir = runs / "20260101-000000-e2vpt-imagefolder"
    summary = train(TrainConfig(method="e2vpt", **SMALL), run_dir, quiet=True)
    return runs, run_dir, summary


def test_training_leaves_the_test_features_and_the_default_report_behind(finished):
    _, run_dir, summary = finished
    analysis = RunDir(run_dir).analysis_dir
    assert (analysis / "features_test_final.safetensors").is_file()
    assert summary["embeddings_s"] > 0 and json.loads((run_dir / "summary.json").read_text())["embeddings_s"] > 0
    reports = list(analysis.glob("embedding_*.json"))
    assert len(reports) == 1
    # what was written while the model was in memory is what a reload of the saved run computes
    saved, labels, _ = embeddings.run_features(run_dir)
    from e2vpt.training.build import load_run_model

    model, _, splits = load_run_model(run_dir)
    again, labels_again = embeddings.compute_features(model, splits.test)
    assert torch.equal(labels, labels_again)
    torch.testing.assert_close(saved, again, rtol=1e-4, atol=1e-5)


def test_the_embeddings_page_of_a_finished_run_evaluates_nothing(finished, monkeypatch):
    runs, run_dir, _ = finished
    monkeypatch.setenv(run_store.RUNS_ROOT_ENV, str(runs))
    monkeypatch.setenv(run_store.DATA_ROOT_ENV, str(digits_folder().parent))

    def refuse(*args, **kwargs):
        raise AssertionError("the page computed what training had written")

    monkeypatch.setattr(embeddings, "compute_features", refuse)
    monkeypatch.setattr(embeddings, "analyze_embeddings", refuse)
    st.cache_data.clear()
    at = open_page("app_pages/embeddings.py", run=run_dir.name)
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 1
    caption = " ".join(c.value for c in at.caption)
    assert "Silhouette" in caption and "Click a point" in caption
    table = at.table[0].value
    assert "silhouette (hyperbolic)" in set(table["metric"])


def test_a_failed_analysis_at_the_end_never_costs_the_run(tmp_path):
    """A real fault: `analysis` is a plain file in the run folder, so nothing can be written under it."""
    run_dir = tmp_path / "run"

    def break_the_analysis_folder(record):
        (run_dir / "analysis").write_text("not a folder")

    summary = train(TrainConfig(method="vpt-deep", **dict(SMALL, prune_rounds=0)), run_dir, quiet=True,
                    on_epoch=break_the_analysis_folder)
    assert summary["embeddings_s"] is None
    assert RunDir(run_dir).status()["state"] == "done" and (run_dir / "weights.safetensors").is_file()


def test_a_run_against_its_frozen_backbone_names_both_and_qualifies_every_difference(finished):
    _, run_dir, _ = finished
    table = embeddings.compare_run_embeddings(run_dir, resamples=200)
    assert table["names"] == ["e2vpt", "frozen backbone"]
    decided = [r for r in table["rows"] if r["higher_is_better"] is not None]
    assert len(decided) == 5 and all(r["interval"] is not None for r in decided)
    for row in decided:
        low, high = row["interval"]
        expected = "no clear difference" if low <= 0 <= high else None
        assert row["verdict"] in ({expected} if expected else {"e2vpt", "frozen backbone"})
    frame = charts.comparison_frame(table)
    assert list(frame.columns[:4]) == ["metric", "e2vpt", "frozen backbone", "frozen backbone − e2vpt"]


def test_each_point_leads_to_its_own_image(finished):
    _, run_dir, _ = finished
    splits = load_run_splits(run_dir)
    report = embeddings.run_embedding_report(run_dir)
    rows = (report["indices"] or list(range(len(report["labels"]))))[:5]
    images = embeddings.split_images(splits, "test", rows)
    assert images.dtype == np.uint8 and images.shape[0] == 5 and images.shape[-1] == 3
    stored, labels = splits.test.fetch(rows)
    assert labels.tolist() == report["labels"][:5]
    assert np.array_equal(images, stored.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy())
    with pytest.raises(Exception, match="has .* images"):
        embeddings.split_images(splits, "test", [len(splits.test)])


def test_the_caption_says_where_the_points_are():
    report = {"points_hpca": [[0.1, 0.0], [0.0, 0.2], [0.3, 0.0]], "params": {"c": 0.1, "k": 5},
              "metrics": [{"name": "silhouette_hyperbolic", "value": 0.18},
                          {"name": "knn_accuracy_hyperbolic", "value": 0.9}]}
    text = charts.embedding_caption(report, "hpca")
    assert "within 0.20 of the disk's radius" in text and "farthest at 0.30" in text
    assert "nearly flat middle" in text and "overlapping" in text and "90.0%" in text
    report["points_hpca"] = [[0.9, 0.0], [0.0, 0.95], [0.8, 0.0]]
    report["metrics"][0]["value"] = 0.7
    text = charts.embedding_caption(report, "hpca")
    assert "nearly flat" not in text and "grow fast" in text and "well separated" in text
