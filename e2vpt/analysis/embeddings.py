"""Embeddings of a saved run, analysed in the Poincaré ball and cached inside the run directory.

Features are the final representation the head reads ([CLS] after the last norm, or the backbone's
own pooling) for one split, from the tuned model or from the frozen backbone alone (the
linear-probe view, for comparison). Both the features and each analysis are cached under
`<run>/analysis/` keyed by their parameters, so a page never recomputes what it already has.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ..errors import RunDirError
from ..fileio import atomic_save_safetensors, atomic_write_json, read_json
from ..runs import RunDir
from .geometry import analyze_embeddings, compare_embeddings

SPLITS = ("train", "val", "test")


def _cache_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).analysis_dir


@torch.no_grad()
def run_features(run_dir: str | Path, split: str = "test", frozen: bool = False, round_index: int | None = None,
                 device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(features (N, dim), labels (N,), class names) of a split, cached as safetensors in the run."""
    if split not in SPLITS:
        raise RunDirError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    run = RunDir(run_dir)
    if not run.weights_file.is_file() and not frozen and round_index is None:
        raise RunDirError(f"{run.path} has no trained weights yet; wait until the run is done")
    which = "frozen" if frozen else ("final" if round_index is None else f"round{round_index}")
    cache = _cache_dir(run_dir) / f"features_{split}_{which}.safetensors"
    names_file = _cache_dir(run_dir) / "class_names.json"
    if cache.is_file() and names_file.is_file():
        saved = load_file(str(cache))
        return saved["features"], saved["labels"], read_json(names_file, [])
    from ..build import load_run_model

    model, _, splits = load_run_model(run_dir, device=device, round_index=round_index)
    feats, labels = [], []
    for images, y in DataLoader(getattr(splits, split), batch_size=256):
        images = images.to(device)
        if frozen:
            bb = model.backbone
            feats.append(bb.forward_head(bb.forward_features(images), pre_logits=True).cpu())
        else:
            feats.append(model.forward_features(images).cpu())
        labels.append(torch.as_tensor(y))
    features, labels = torch.cat(feats).float(), torch.cat(labels).long()
    atomic_save_safetensors(cache, {"features": features, "labels": labels})
    atomic_write_json(names_file, list(splits.class_names))
    return features, labels, list(splits.class_names)


def run_embedding_report(run_dir: str | Path, split: str = "test", c: float = 0.1, clip_r: float | None = 2.3,
                         umap: bool = False, frozen: bool = False, round_index: int | None = None,
                         max_points: int = 1000, seed: int = 0) -> dict:
    """`analyze_embeddings` on a run's features, plus labels' class names; cached by parameters."""
    params = {"split": split, "c": c, "clip_r": clip_r, "umap": umap, "frozen": frozen, "round": round_index,
              "max_points": max_points, "seed": seed}
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


def compare_run_embeddings(run_a: str | Path, run_b: str | Path, split: str = "test", c: float = 0.1,
                           clip_r: float | None = 2.3, max_points: int = 1000, seed: int = 0) -> dict:
    """Separability metrics of two runs on the same images, side by side (e.g. VPT-deep vs E2VPT)."""
    reports = [run_embedding_report(r, split=split, c=c, clip_r=clip_r, umap=False, max_points=max_points, seed=seed)
               for r in (run_a, run_b)]
    if reports[0]["labels"] != reports[1]["labels"]:
        raise RunDirError("the two runs were evaluated on different images; compare runs on the same dataset")
    names = (Path(run_a).name, Path(run_b).name)
    if names[0] == names[1]:
        names = (f"{names[0]} (a)", f"{names[1]} (b)")
    return compare_embeddings(reports[0], reports[1], names=names)
