"""Embeddings of a saved run, analysed in the Poincaré ball and cached inside the run directory.

Features are the final representation the head reads ([CLS] after the last norm, or the backbone's
own pooling) for one split, from the tuned model or from the frozen backbone alone (the
linear-probe view, for comparison). Both the features and each analysis are cached under
`<run>/analysis/` keyed by their parameters, so a page never recomputes what it already has.
Training writes the test features and the default report when it ends (`write_at_end_of_training`),
so the Embeddings page of a finished run opens without evaluating the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ..errors import RunDirError
from ..fileio import atomic_save_safetensors, atomic_write_json, read_json
from ..runs import RunDir
from .geometry import PROTOCOL_VERSION, analyze_embeddings, compare_embeddings

SPLITS = ("train", "val", "test")


def _cache_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).analysis_dir


def _features_file(run_dir: str | Path, split: str, frozen: bool, round_index: int | None) -> Path:
    which = "frozen" if frozen else ("final" if round_index is None else f"round{round_index}")
    return _cache_dir(run_dir) / f"features_{split}_{which}.safetensors"


@torch.no_grad()
def compute_features(model, dataset, device: str | torch.device = "cpu",
                     frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 features (N, dim), int64 labels (N,)) of a dataset: what the head reads, from the
    tuned model, or from its backbone alone with `frozen` (no prompts: the linear-probe view)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for images, y in DataLoader(dataset, batch_size=256):
        images = images.to(device)
        if frozen:
            bb = model.backbone
            feats.append(bb.forward_head(bb.forward_features(images), pre_logits=True).float().cpu())
        else:
            feats.append(model.forward_features(images).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def _save_features(run_dir: str | Path, split: str, frozen: bool, round_index: int | None, features: torch.Tensor,
                   labels: torch.Tensor, class_names: list[str]) -> None:
    atomic_save_safetensors(_features_file(run_dir, split, frozen, round_index),
                            {"features": features, "labels": labels})
    atomic_write_json(_cache_dir(run_dir) / "class_names.json", list(class_names))


def run_features(run_dir: str | Path, split: str = "test", frozen: bool = False, round_index: int | None = None,
                 device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(features (N, dim), labels (N,), class names) of a split, cached as safetensors in the run."""
    if split not in SPLITS:
        raise RunDirError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    run = RunDir(run_dir)
    if not run.weights_file.is_file() and not frozen and round_index is None:
        raise RunDirError(f"{run.path} has no trained weights yet; wait until the run is done")
    cache = _features_file(run_dir, split, frozen, round_index)
    names_file = _cache_dir(run_dir) / "class_names.json"
    if cache.is_file() and names_file.is_file():
        saved = load_file(str(cache))
        return saved["features"], saved["labels"], read_json(names_file, [])
    from ..training.build import load_run_model

    model, _, splits = load_run_model(run_dir, device=device, round_index=round_index)
    features, labels = compute_features(model, getattr(splits, split), device, frozen)
    _save_features(run_dir, split, frozen, round_index, features, labels, list(splits.class_names))
    return features, labels, list(splits.class_names)


def split_images(splits, split: str, indices) -> np.ndarray:
    """uint8 (B, H, W, 3) images of a split's rows as the model saw them, before normalisation (the
    points of an embedding report are indexed by these rows: `report["indices"]`)."""
    if split not in SPLITS:
        raise RunDirError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    dataset = getattr(splits, split)
    rows = [int(i) for i in indices]
    if any(not 0 <= i < len(dataset) for i in rows):
        raise RunDirError(f"the {split} split has {len(dataset)} images; asked for rows {rows}")
    images, _ = dataset.fetch(rows)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def write_at_end_of_training(run_dir: str | Path, model, splits, device: str | torch.device) -> float:
    """Write what the Embeddings page first shows, while the trained model is still in memory: the
    test features of the final model and the default report (`run_embedding_report()`'s defaults).
    Returns the seconds it took (the run's summary records them as `embeddings_s`)."""
    start = time.perf_counter()
    features, labels = compute_features(model, splits.test, device)
    _save_features(run_dir, "test", False, None, features, labels, list(splits.class_names))
    run_embedding_report(run_dir)
    return time.perf_counter() - start


def run_embedding_report(run_dir: str | Path, split: str = "test", c: float = 0.1, clip_r: float | None = 2.3,
                         umap: bool = False, frozen: bool = False, round_index: int | None = None,
                         max_points: int = 1000, seed: int = 0) -> dict:
    """`analyze_embeddings` on a run's features, plus labels' class names; cached by parameters."""
    params = {"split": split, "c": c, "clip_r": clip_r, "umap": umap, "frozen": frozen, "round": round_index,
              "max_points": max_points, "seed": seed, "protocol": PROTOCOL_VERSION}
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    cache = _cache_dir(run_dir) / f"embedding_{key}.json"
    cached = read_json(cache)
    if isinstance(cached, dict):
        return cached
    features, labels, class_names = run_features(run_dir, split, frozen, round_index)
    report = analyze_embeddings(features, labels, c=c, clip_r=clip_r, umap=umap, seed=seed, max_points=max_points)
    report.update({"split": split, "class_names": class_names, "frozen": frozen, "round": round_index,
                   "run": Path(run_dir).name})
    atomic_write_json(cache, report)
    return report


def run_label(run_dir: str | Path) -> str:
    """A run as a reader names it: its method (e2vpt, vpt-deep...), else its folder name."""
    config = read_json(RunDir(run_dir).config_file)
    method = config.get("method") if isinstance(config, dict) else None
    return method if isinstance(method, str) and method else Path(run_dir).name


def compare_run_embeddings(run_a: str | Path, run_b: str | Path | None = None, split: str = "test", c: float = 0.1,
                           clip_r: float | None = 2.3, max_points: int = 1000, seed: int = 0,
                           resamples: int = 1000) -> dict:
    """Separability of two runs on the same images, side by side, each difference with a paired
    bootstrap 95 % interval and a verdict (e.g. VPT-deep vs E2VPT). Without `run_b`, `run_a` is
    compared with its own frozen backbone (no prompts). Sides are named by method; the same
    method twice is told apart by run folder."""
    sides = [(run_a, False), (run_a, True) if run_b is None else (run_b, False)]
    reports, features = [], []
    for run, frozen in sides:
        reports.append(run_embedding_report(run, split=split, c=c, clip_r=clip_r, umap=False, frozen=frozen,
                                            max_points=max_points, seed=seed))
        features.append(run_features(run, split, frozen)[0])
    if reports[0]["labels"] != reports[1]["labels"]:
        raise RunDirError("the two runs were evaluated on different images; compare runs on the same dataset")
    names = (run_label(run_a), "frozen backbone" if run_b is None else run_label(run_b))
    if names[0] == names[1]:
        names = (f"{names[0]} ({Path(run_a).name})", f"{names[1]} ({Path(run_b).name})")
    if names[0] == names[1]:
        names = (f"{names[0]} (a)", f"{names[1]} (b)")
    return compare_embeddings(reports[0], reports[1], names=names, features=tuple(features), resamples=resamples,
                              seed=seed)
