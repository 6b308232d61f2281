"""A trained model ready to use: a run's model at one of its rounds, with what a user of it needs.

Why one place (and not `training.build.load_run_model`, which returns the run's data with it): `predict`
and `export` both pick a round the same way (the round the run reports, or
any finished round by its number), both refuse the same bad requests in one line (a run that has not
finished, a round that does not exist) and both need the class names and the run's preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data import canonical_name
from ..data.preprocess import ImageRule, image_rule
from ..errors import RunDirError
from ..fileio import tensors_sha256
from ..models.backbones import data_config
from ..models.base import PromptTuned
from ..runs import RunDir, read_tensors
from ..training.build import build_model_and_splits, build_run_model, resolve_device


@dataclass
class Trained:
    """A model and what it takes to use it. `record` is its round's entry of pruning.json (accuracies,
    masks, kept tokens); `backbone_sha256` is the digest of the frozen backbone it was built on."""

    model: PromptTuned
    config: TrainConfig
    class_names: list[str]
    rule: ImageRule
    round: int
    record: dict
    run_id: str
    rounds: int  # the run's finished rounds
    summary: dict | None
    data_source: str
    backbone_sha256: str
    device: torch.device


def pick_round(run: RunDir, round_index: int | None) -> tuple[int, dict, Path]:
    """(round, its pruning.json record, the weights file) for `round_index`, or the round the run reports.

    Raises `RunDirError` in one line: a run that has not finished (without a round), a round that does
    not exist or has not finished, a round whose weights are missing."""
    summary = run.summary()
    pruning = run.pruning() or {"rounds": []}
    finished = {r["round"]: r for r in pruning["rounds"]}
    if round_index is None:
        if summary is None:
            state = run.status().get("state", "unknown")
            rounds = f"; finished rounds: {', '.join(map(str, sorted(finished)))} (use --round N)" if finished else ""
            raise RunDirError(f"{run.id} has not finished (state: {state}){rounds}")
        round_index, weights = summary["selected_round"], run.weights_file
    else:
        if round_index not in finished:
            have = ", ".join(map(str, sorted(finished))) or "none yet"
            raise RunDirError(f"{run.id} has no finished round {round_index}; its finished rounds: {have}")
        weights = run.round_file(round_index)
    if round_index not in finished:
        raise RunDirError(f"pruning.json of {run.id} has no record of round {round_index}, the round it reports")
    if not weights.is_file():
        raise RunDirError(f"{run.id} has no {weights.name}; its weights for round {round_index} are missing")
    return round_index, finished[round_index], weights


def open_trained(run_dir: str | Path, round_index: int | None = None, device: str = "cpu") -> Trained:
    """A run's model at `round_index` (default: the round it reports), on `device`, in eval mode.

    A finished run names its classes in its summary, so its dataset is not read; a round of a run still
    training (or one written before summaries named classes) reads them from its dataset."""
    run = RunDir(run_dir)
    if not run.exists():
        raise RunDirError(f"{run.path} is not a run folder (no config.json)")
    config = TrainConfig.from_dict(run.config())
    round_index, record, weights = pick_round(run, round_index)
    state = read_tensors(weights)
    summary = run.summary()
    if summary and summary.get("class_names") and len(summary["class_names"]) == summary["num_classes"]:
        class_names, source = list(summary["class_names"]), summary["data_source"]
        model = build_run_model(config, len(class_names))
    else:
        model, splits = build_model_and_splits(config, download=False)
        class_names, source = list(splits.class_names), splits.source
    digest = tensors_sha256(model.backbone.state_dict())  # before a `full` run's weights replace it
    model.load_tuned_state(state)
    dc = data_config(model.backbone)
    rule = image_rule(canonical_name(config.dataset), dc["input_size"][-1], dc["mean"], dc["std"])
    dev = resolve_device(device)
    rounds = len((run.pruning() or {"rounds": []})["rounds"])
    return Trained(model=model.to(dev).eval(), config=config, class_names=class_names, rule=rule, round=round_index,
                   record=record, run_id=run.id, rounds=rounds, summary=summary, data_source=source,
                   backbone_sha256=digest, device=dev)
