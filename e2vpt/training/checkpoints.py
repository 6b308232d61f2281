"""Checkpoints: where training stands after every epoch, so `--resume` continues exactly.

A checkpoint is one safetensors file, `checkpoint.safetensors`, so its tensors and its description
can never come from two different moments. The tensors: the tuned state (`model.*`), the phase's
best-so-far state (`best.*`) and the optimiser's state (`optim.<param id>.<key>`). Its metadata
holds the rest as JSON (`state`): phase, epochs done, best score and epoch, the round records, the
clock, the pruning scores of a phase that pruned before training (`pending`), and mid-phase the
optimiser's param groups and the schedule; plus `sha256`, a digest of every tensor, checked on read.

Each write keeps the one it replaces as `checkpoint.prev.safetensors`. `read_checkpoints` offers the
newest first and then the previous one, each verified, so a damaged or missing newest checkpoint
falls back to the one before, never to a mixture. No pickle: reading a checkpoint runs no code. Only
this module knows that layout: the trainer hands it plain values and gets a `Checkpoint` back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from ..fileio import atomic_save_safetensors, json_safe, tensors_sha256
from ..models.pruning import Importance
from ..runs import RunDir


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


FORMAT = "e2vpt-checkpoint/2"


def save_checkpoint(run: RunDir, *, phase: int, epochs_done: int, model_state: dict, best: dict, rounds: list,
                    wall_s: float, units_done: int, pending=None, optimizer=None, scheduler=None) -> None:
    """Write the checkpoint (one file, atomically; the one it replaces becomes the previous one).

    The fields are those of `Checkpoint`; `optimizer` and `scheduler` are the live ones mid-phase and
    None at a phase boundary.
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
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "state": json.dumps(json_safe(meta)), "sha256": tensors_sha256(tensors)}
    atomic_save_safetensors(run.checkpoint_file, tensors, metadata, previous=run.checkpoint_prev_file)
    run.checkpoint_meta_file.unlink(missing_ok=True)  # the two-file layout of older versions


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, truncated, altered, or not a checkpoint)."""


def _checked(meta) -> dict:
    """`meta` if it has every field with the right type; `CheckpointError` naming the first that does not."""
    if not isinstance(meta, dict):
        raise CheckpointError("its description is not a JSON object")

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    rules = {"phase": whole, "epochs_done": whole, "units_done": whole, "wall_s": number,
             "rounds": lambda v: isinstance(v, list) and all(isinstance(r, dict) and whole(r.get("round")) for r in v),
             "best_val": lambda v: v is None or number(v), "best_epoch": lambda v: v is None or whole(v),
             "pending": lambda v: v is None or isinstance(v, dict),
             "optimizer": lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("param_groups"), list)
                                                  and isinstance(v.get("plain"), dict)),
             "scheduler": lambda v: v is None or isinstance(v, dict)}
    for key, rule in rules.items():
        if not rule(meta.get(key)):
            raise CheckpointError(f"its field {key!r} is missing or wrong ({str(meta.get(key))[:60]!r})")
    if (meta.get("optimizer") is None) != (meta.get("scheduler") is None):
        raise CheckpointError("it has an optimiser state without a schedule, or the reverse")
    return meta


def _read_one(path: Path, legacy_meta: Path | None = None) -> Checkpoint:
    """One checkpoint file, verified; `CheckpointError` saying what is wrong with it."""
    if not path.is_file():
        raise CheckpointError("it does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"it cannot be read ({exc})") from None
    if metadata.get("format") == FORMAT:
        if tensors_sha256(tensors) != metadata.get("sha256"):
            raise CheckpointError("its tensors do not match their digest (the file was altered or damaged)")
        try:
            meta = json.loads(metadata.get("state", ""))
        except json.JSONDecodeError:
            raise CheckpointError("its description is not valid JSON") from None
    elif legacy_meta is not None and legacy_meta.is_file():  # written by a version before the one-file layout
        try:
            meta = json.loads(legacy_meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{legacy_meta.name} cannot be read ({exc})") from None
        # the old pair could be torn: a boundary description beside mid-phase tensors is a mixture
        if isinstance(meta, dict) and meta.get("optimizer") is None and any(k.startswith("optim.") for k in tensors):
            raise CheckpointError(f"its tensors and {legacy_meta.name} are from different moments")
        if isinstance(meta, dict) and isinstance(meta.get("optimizer"), dict):
            pids = {name.split(".")[1] for name in tensors if name.startswith("optim.")}
            plain = meta["optimizer"].get("plain") or {}
            if isinstance(plain, dict) and any(key.split(".")[0] not in pids for key in plain):
                raise CheckpointError(f"its tensors and {legacy_meta.name} are from different moments")
    else:
        raise CheckpointError("it is not an e2vpt checkpoint")
    meta = _checked(meta)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if not model_state:
        raise CheckpointError("it holds no model state")
    best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    try:
        pending = _importance_from_json(meta.get("pending"))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise CheckpointError("its pruning scores are damaged") from None
    return Checkpoint(
        phase=meta["phase"], epochs_done=meta["epochs_done"], model_state=model_state,
        best={"val_acc": meta["best_val"], "epoch": meta["best_epoch"], "state": best_state} if best_state else {},
        rounds=meta["rounds"], wall_s=float(meta["wall_s"]), units_done=meta["units_done"], pending=pending,
        optimizer_tensors={k: v for k, v in tensors.items() if k.startswith("optim.")},
        optimizer_meta=meta.get("optimizer"), scheduler=meta.get("scheduler"))


def read_checkpoints(run: RunDir):
    """The run's checkpoints, newest first: yields `(file name, Checkpoint or None, problem or None)`.

    The caller takes the first it can use (it may still refuse one that does not fit its model), so a
    damaged newest checkpoint falls back to the previous one.
    """
    for path, legacy in ((run.checkpoint_file, run.checkpoint_meta_file), (run.checkpoint_prev_file, None)):
        try:
            yield path.name, _read_one(path, legacy), None
        except CheckpointError as exc:
            yield path.name, None, str(exc)


def remove_checkpoints(run: RunDir) -> None:
    """A finished run needs no checkpoint (its weights and round files hold the results)."""
    for path in (run.checkpoint_file, run.checkpoint_prev_file, run.checkpoint_meta_file):
        path.unlink(missing_ok=True)
