"""e2vpt: Effective and Efficient Visual Prompt Tuning (ICCV 2023) as a library, a CLI and an app.

The public API is what this module exports: a notebook or a script imports from `e2vpt` only, so the
modules behind it may move without breaking anyone.

    from e2vpt import TrainConfig, train, load_run_model, RunDir, list_runs
    summary = train(TrainConfig(method="e2vpt", dataset="digits"), "runs/first")

Why the names are loaded on first use (PEP 562): `python -m e2vpt --help` must answer at once, and
importing torch, timm and torchvision costs seconds; `import e2vpt` costs nothing until a name is read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# name -> the module that defines it
_EXPORTS = {
    # settings and one run
    "TrainConfig": "e2vpt.config", "preset": "e2vpt.config",
    "train": "e2vpt.workflow", "train_or_reuse": "e2vpt.workflow",
    # trained runs on disk
    "RunDir": "e2vpt.runs", "list_runs": "e2vpt.runs",
    "load_run_model": "e2vpt.training.build", "load_run_splits": "e2vpt.training.build",
    "evaluate_run": "e2vpt.training.build",
    # a trained run used outside the studio
    "export_adapter": "e2vpt.deploy.adapter", "load_adapter": "e2vpt.deploy.adapter",
    "open_predictor": "e2vpt.deploy.predict", "find_images": "e2vpt.deploy.predict",
    "predict_files": "e2vpt.deploy.predict",
    # pruning, as a run does it
    "score_importance": "e2vpt.models.pruning", "rewind": "e2vpt.models.pruning",
    # what the app's pages show, as functions of a run folder
    "importance_maps": "e2vpt.analysis.pruning_views", "pruning_trajectory": "e2vpt.analysis.pruning_views",
    "prompt_ablation": "e2vpt.analysis.ablation", "prompt_attention": "e2vpt.analysis.attention",
    "run_features": "e2vpt.analysis.embeddings", "split_images": "e2vpt.analysis.embeddings",
    "run_embedding_report": "e2vpt.analysis.embeddings", "compare_run_embeddings": "e2vpt.analysis.embeddings",
    "to_poincare": "e2vpt.analysis.hyperbolic",
    # errors a user can fix (each prints as one line)
    "UserError": "e2vpt.errors", "ConfigError": "e2vpt.errors", "DataError": "e2vpt.errors",
    "BackboneError": "e2vpt.errors", "RunDirError": "e2vpt.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'e2vpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next read is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what editors and type checkers see; at run time the names load on first use
    from .analysis.ablation import prompt_ablation
    from .analysis.attention import prompt_attention
    from .analysis.embeddings import compare_run_embeddings, run_embedding_report, run_features, split_images
    from .analysis.hyperbolic import to_poincare
    from .analysis.pruning_views import importance_maps, pruning_trajectory
    from .config import TrainConfig, preset
    from .deploy.adapter import export_adapter, load_adapter
    from .deploy.predict import find_images, open_predictor, predict_files
    from .errors import BackboneError, ConfigError, DataError, RunDirError, UserError
    from .models.pruning import rewind, score_importance
    from .runs import RunDir, list_runs
    from .training.build import evaluate_run, load_run_model, load_run_splits
    from .workflow import train, train_or_reuse
