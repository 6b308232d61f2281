"""What a run writes about itself as it trains, besides its checkpoints: one record per pruning round,
the pruning record (`pruning.json`), the summary, and which metric lines a resume takes back.

Plain functions of the model and the numbers, so the loop (`trainer.py`) reads as the loop. The files'
layout is the run-directory table of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json

import torch

from ..config import TrainConfig
from ..fileio import atomic_write_bytes, read_jsonl
from ..provenance import environment
from ..run_schema import PRUNING, ROUND, SUMMARY
from ..runs import RunDir


def round_record(model, phase_index: int, importance, val_acc: float, test_acc: float, phase_s: float,
                 score_s: float, wall_s: float, backbone_params: int, best_epoch: int) -> dict:
    """One round's entry of `pruning.json`: its masks, the scores that decided them, its accuracy and size."""
    t = model.tuned
    tuned = model.tuned_param_count()
    visual = t.visual is not None
    return ROUND.make(
        # plain lists: a snapshot, not a view of the live mask buffers that later rounds overwrite
        round=phase_index, token_mask=t.token_mask.tolist() if visual else None,
        segment_mask=t.segment_mask.tolist() if visual else None,
        token_importance=importance.token.tolist() if importance is not None else None,
        segment_importance=importance.segment.tolist() if importance is not None else None,
        val_acc=val_acc, test_acc=test_acc, tuned_params=tuned,
        tuned_params_no_head=model.tuned_param_count(include_head=False),
        tuned_pct=100.0 * tuned / backbone_params,
        kept_tokens=int(t.token_mask.sum().item()) if visual else 0,
        kept_segments=int((t.segment_mask * t.token_mask[..., None]).sum().item()) if visual else 0,
        train_s=round(phase_s, 3), score_s=round(score_s, 3), wall_s=round(wall_s, 3), best_epoch=best_epoch)


def selected_round(rounds: list[dict], config: TrainConfig) -> int:
    """The round the run reports: the best on validation among the pruned ones (ties go to more
    pruning), or the last when validation is trained on or `select_round` says so."""
    if not rounds:
        return 0
    candidates = [r for r in rounds if r["round"] > 0] or rounds
    if config.select_round == "last" or not config.holds_out_val:
        return candidates[-1]["round"]
    best = max(r["val_acc"] for r in candidates)
    return [r for r in candidates if r["val_acc"] >= best][-1]["round"]


def pruning_record(model, config: TrainConfig, backbone_params: int, rounds: list[dict]) -> dict:
    """`pruning.json`: the prompt layout, how pruning was decided, and every round so far."""
    return PRUNING.make(method=config.method, mask_scope=config.mask_scope, segment_layout=config.segment_layout,
                        importance=config.importance, rewind=config.rewind, num_layers=model.num_layers,
                        prompt_layers=model.tuned.token_mask.shape[0], prompt_len=model.prompt_len,
                        segments=model.segments, kv_len=model.kv_len, backbone_params=backbone_params,
                        selected_round=selected_round(rounds, config), rounds=rounds)


def data_cache_note(splits) -> dict:
    """Where image files were decoded to and what that cost this run (0 s: an earlier run's cache)."""
    decoded = getattr(splits.train, "decoded", None)
    if decoded is None:
        return {}
    return {"decoded_cache": decoded.where, "decoded_cache_build_s": round(decoded.build_s, 3)}


def summary(config: TrainConfig, rounds: list[dict], selected: int, *, backbone_params: int, wall_s: float,
            search_score_s: float, device, precision: str, splits, phase0_from=None) -> dict:
    """`summary.json`: the reported round's numbers, what the run cost and what produced it."""
    record = next(r for r in rounds if r["round"] == selected)
    phase0 = {"phase0_from": str(phase0_from), "phase0_train_s": rounds[0]["train_s"]} if phase0_from else {}
    return SUMMARY.make(  # a pruning-search run's phase 0 was another run's: that run paid for it
        method=config.method, backbone=config.backbone, dataset=config.dataset,
        test_acc=record["test_acc"], val_acc=record["val_acc"], tuned_params=record["tuned_params"],
        tuned_params_no_head=record["tuned_params_no_head"], backbone_params=backbone_params,
        tuned_pct=record["tuned_pct"], tuned_pct_no_head=100.0 * record["tuned_params_no_head"] / backbone_params,
        selected_round=selected, rounds=len(rounds) - 1, wall_s=round(wall_s, 3),
        train_s=round(sum(r["train_s"] for r in rounds), 3),
        score_s=round(sum(r["score_s"] for r in rounds) + search_score_s, 3),
        device=str(device), precision=precision, num_classes=splits.num_classes,
        class_names=[str(name) for name in splits.class_names], data_source=splits.source,
        torch_threads=torch.get_num_threads(), **data_cache_note(splits), produced_by=environment(), **phase0)


def truncate_metrics(run: RunDir, phase_index: int, epochs_done: int, pruned: bool) -> None:
    """Drop metric lines written after the checkpoint a run resumes from, so nothing appears twice."""
    def keep(r: dict) -> bool:
        rnd = r.get("round", 0)
        if rnd != phase_index:
            return rnd < phase_index
        if r.get("kind") == "prune":
            return pruned
        return r.get("epoch", 0) <= epochs_done
    records = [r for r in read_jsonl(run.metrics_file) if keep(r)]
    atomic_write_bytes(run.metrics_file, "".join(json.dumps(r) + "\n" for r in records).encode())


def cancel_note(run: RunDir | None) -> str:
    """What a cancel kept: completed epochs (a checkpoint), or nothing when none had finished."""
    kept = run is not None and (run.checkpoint_file.is_file() or run.checkpoint_prev_file.is_file())
    if kept:
        return "cancelled by the user; every completed epoch is kept, and Resume continues after the last one"
    return ("cancelled before its first epoch finished, so nothing trained is kept; Resume starts it from the "
            "beginning")
