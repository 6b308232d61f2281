"""Checkpoints: where training stands after every epoch, so `--resume` continues exactly.

A checkpoint is a pair of files in the run directory. `checkpoint.safetensors` holds every tensor:
the tuned state (`model.*`), the phase's best-so-far state (`best.*`) and the optimiser's state
(`optim.<param id>.<key>`). `checkpoint.json` holds the rest: phase, epochs done, best score and
epoch, the round records, the clock, the pruning scores of a phase that pruned before training
(`pending`), and mid-phase the optimiser's param groups and the schedule. No pickle: reading a
checkpoint runs no code. Only this module knows that layout: the trainer hands it plain values
and gets a `Checkpoint` back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from .fileio import atomic_save_safetensors, atomic_write_json
from .pruning import Importance
from .runs import RunDir


def _optimizer_to_tensors(optimizer) -> tuple[dict, dict]:
    """Split an optimiser state dict into safetensors-able tensors and JSON for the rest."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _optimizer_from_tensors(optimizer, tensors: dict, meta: dict) -> None:
    """Inverse of `_optimizer_to_tensors`: load its two halves back into `optimizer`."""
    state: dict = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["plain"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _importance_to_json(pending: tuple[Importance, float] | None) -> dict | None:
    """(importance, scoring seconds) of a pruning round as JSON (NaN, an already pruned piece, becomes null)."""
    if not pending:
        return None
    importance, score_s = pending
    return {"token": importance.token, "segment": importance.segment, "images": importance.images,
            "score_s": score_s}


def _importance_from_json(value: dict | None) -> tuple[Importance, float] | None:
    """Inverse of `_importance_to_json` (JSON null stands for NaN: an already pruned piece)."""
    if not value:
        return None

    def tensor(nested) -> torch.Tensor:
        return torch.tensor(json.loads(json.dumps(nested).replace("null", "NaN")), dtype=torch.float32)

    return Importance(tensor(value["token"]), tensor(value["segment"]), value["images"]), value["score_s"]


@dataclass
class Checkpoint:
    """A checkpoint as read back: where training stands and everything needed to continue it."""

    phase: int  # the phase to continue (or, at a phase boundary, to start)
    epochs_done: int  # epochs of that phase already trained
    model_state: dict[str, torch.Tensor]
    best: dict  # the phase's best-so-far: {"val_acc", "epoch", "state"}, or {}
    rounds: list[dict]  # the records of the rounds finished so far
    wall_s: float
    units_done: int
    pending: tuple[Importance, float] | None  # the phase's pruning scores, when it pruned before training
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict | None  # None at a phase boundary: the next phase starts a fresh optimiser
    scheduler: dict | None

    @property
    def mid_phase(self) -> bool:
        """Taken inside a phase, so the phase continues rather than starts (and prunes) again."""
        return self.optimizer_meta is not None

    def restore_optimizer(self, optimizer, scheduler) -> None:
        """Load a mid-phase checkpoint's optimiser and schedule state into freshly made ones."""
        _optimizer_from_tensors(optimizer, self.optimizer_tensors, self.optimizer_meta)
        scheduler.load_state_dict(self.scheduler)


def save_checkpoint(run: RunDir, *, phase: int, epochs_done: int, model_state: dict, best: dict, rounds: list,
                    wall_s: float, units_done: int, pending=None, optimizer=None, scheduler=None) -> None:
    """Write the pair; the fields are those of `Checkpoint`, with the live optimiser and schedule.

    `optimizer` and `scheduler` are given mid-phase and None at a phase boundary.
    """
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update({f"best.{k}": v for k, v in best.get("state", {}).items()})
    meta = {"phase": phase, "epochs_done": epochs_done, "best_val": best.get("val_acc"),
            "best_epoch": best.get("epoch"), "rounds": rounds, "wall_s": wall_s, "units_done": units_done,
            "pending": _importance_to_json(pending)}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _optimizer_to_tensors(optimizer)
        tensors.update(opt_tensors)
        meta["scheduler"] = scheduler.state_dict()
    # tensors first, then the JSON that points at them: a crash between keeps the older pair usable
    atomic_save_safetensors(run.checkpoint_file, tensors)
    atomic_write_json(run.checkpoint_meta_file, meta)


def load_checkpoint(run: RunDir) -> Checkpoint:
    """Read the pair `save_checkpoint` wrote."""
    meta = json.loads(run.checkpoint_meta_file.read_text())
    tensors = load_file(str(run.checkpoint_file))
    best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return Checkpoint(
        phase=meta["phase"], epochs_done=meta["epochs_done"],
        model_state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
        best={"val_acc": meta["best_val"], "epoch": meta["best_epoch"], "state": best_state} if best_state else {},
        rounds=meta["rounds"], wall_s=meta["wall_s"], units_done=meta["units_done"],
        pending=_importance_from_json(meta.get("pending")),
        optimizer_tensors={k: v for k, v in tensors.items() if k.startswith("optim.")},
        optimizer_meta=meta.get("optimizer"), scheduler=meta.get("scheduler"))
