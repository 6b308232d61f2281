"""Does the pruning criterion agree with reality? Remove each prompt token for real and measure.

E2VPT prunes the visual prompt tokens whose importance score (a gradient of the loss with respect to
the masks over the training images, `pruning_views.score_criterion` says which: a first-order estimate
of what removing the token would cost) is smallest. This module audits one pruning decision: it takes the model the scores were computed on (the
trained state of the round before), removes each surviving token alone (and each layer's prompts
together), and measures the real change in validation loss and accuracy. Spearman's rank
correlation between score and measured change says how well the cheap criterion ranks tokens as their
removal really does. The result is cached in the run's `analysis/` folder.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import RunDirError
from ..fileio import atomic_write_json, read_json
from ..runs import RunDir

CACHE_VERSION = 1


def _cache_name(decision_round: int) -> str:
    return f"ablation-round-{int(decision_round)}.json"


def cached_ablation(run_dir: str | Path, decision_round: int) -> dict | None:
    """The audit of `decision_round` if it was measured before (None otherwise): it costs one validation
    pass per token, so a page shows the cached one and measures only when asked."""
    cached = read_json(RunDir(run_dir).path / "analysis" / _cache_name(decision_round))  # never creates the folder
    return cached if isinstance(cached, dict) and cached.get("version") == CACHE_VERSION else None


def estimate_seconds(run_dir: str | Path, decision_round: int) -> tuple[int, float | None]:
    """(validation passes, expected seconds) of auditing `decision_round`: one pass per token alive
    before it, one per layer and one for the base, each priced at the run's median measured validation
    pass (`val_s` of its epoch records; None for a run that predates them)."""
    from .pruning_views import load_pruning

    run = RunDir(run_dir)
    rounds = {r["round"]: r for r in load_pruning(run.path)["rounds"]}
    before = np.array(rounds[decision_round - 1]["token_mask"], dtype=float)
    passes = int(before.sum()) + int((before.sum(-1) > 0).sum()) + 1
    times = [m["val_s"] for m in run.metrics() if m.get("kind") == "epoch" and isinstance(m.get("val_s"), (int, float))]
    return passes, (passes * statistics.median(times) if times else None)


def prompt_ablation(run_dir: str | Path, decision_round: int = 1, device: str = "auto",
                    refresh: bool = False) -> dict:
    """Audit pruning round `decision_round` (>= 1): each token's score against its measured removal cost.

    Returns a JSON-ready dict: `tokens` (one row per token alive when the scores were computed: layer
    and token numbered from 1, `score`, `val_loss_change`, `val_acc_change` (points), `pruned` in this
    round, `rank` of the score, 1 = least important), `layers` (each layer's prompts removed together),
    `spearman` and `spearman_p` (score against loss change; `layer_spearman`, `layer_spearman_p`: a
    layer's score sum against its removal's loss change), `base_val_loss`, `base_val_acc`, `images`
    (validation images), `seconds`. Cached; `refresh` recomputes.
    """
    from scipy.stats import spearmanr

    from ..data.pipeline import DeviceBatches
    from ..training.build import autocast_for, evaluate, load_run_model, resolve_device
    from ..training.distributed import global_batches
    from .pruning_views import load_pruning

    run = RunDir(run_dir)
    record = load_pruning(run.path)
    rounds = {r["round"]: r for r in record["rounds"]}
    decision = rounds.get(decision_round)
    if decision_round < 1 or decision is None or decision.get("token_importance") is None:
        scored = [r for r, rec in sorted(rounds.items()) if r >= 1 and rec.get("token_importance") is not None]
        raise RunDirError(f"{run.path} has no pruning round {decision_round} with prompt scores to audit; rounds with "
                          f"scores: {', '.join(map(str, scored)) or 'none (the run did not prune)'}")
    cached = None if refresh else cached_ablation(run.path, decision_round)
    if cached is not None:
        return cached

    started = time.perf_counter()
    dev = resolve_device(device)
    model, config, splits = load_run_model(run.path, device=str(dev), round_index=decision_round - 1)
    autocast = autocast_for(dev, config.precision)
    val = splits.val
    batches = global_batches(len(val), 256, False, 0)

    def val_loss_acc() -> tuple[float, float]:
        return evaluate(model, DeviceBatches(val, batches, dev), dev, autocast)

    mask = model.tuned.token_mask
    alive_before = torch.tensor(rounds[decision_round - 1]["token_mask"], dtype=mask.dtype)
    mask.copy_(alive_before.to(mask))
    pruned_now = alive_before.bool() & ~torch.tensor(decision["token_mask"], dtype=torch.bool)
    scores = np.array([[math.nan if v is None else v for v in row] for row in decision["token_importance"]])
    base_loss, base_acc = val_loss_acc()

    def without(cells) -> tuple[float, float]:
        for layer, token in cells:
            mask[layer, token] = 0.0
        loss, acc = val_loss_acc()
        for layer, token in cells:
            mask[layer, token] = 1.0
        return loss - base_loss, 100.0 * (acc - base_acc)

    alive = [tuple(map(int, cell)) for cell in alive_before.nonzero().tolist()]
    tokens = []
    for layer, token in alive:
        loss_change, acc_change = without([(layer, token)])
        tokens.append({"layer": layer + 1, "token": token + 1, "score": float(scores[layer, token]),
                       "val_loss_change": loss_change, "val_acc_change": acc_change,
                       "pruned": bool(pruned_now[layer, token])})
    order = np.argsort([row["score"] for row in tokens], kind="stable")
    for rank, index in enumerate(order, start=1):
        tokens[index]["rank"] = rank
    layers = []
    for layer in sorted({cell[0] for cell in alive}):
        cells = [cell for cell in alive if cell[0] == layer]
        loss_change, acc_change = without(cells)
        layers.append({"layer": layer + 1, "tokens": len(cells), "val_loss_change": loss_change,
                       "val_acc_change": acc_change, "score_sum": float(sum(scores[c] for c in cells))})
    def rank_correlation(rows: list[dict], score: str) -> tuple[float, float]:
        if len(rows) < 3:
            return math.nan, math.nan
        rho, p = spearmanr([r[score] for r in rows], [r["val_loss_change"] for r in rows])
        return float(rho), float(p)

    rho, p = rank_correlation(tokens, "score")
    layer_rho, layer_p = rank_correlation(layers, "score_sum")
    result = {"version": CACHE_VERSION, "decision_round": decision_round, "model_round": decision_round - 1,
              "tokens": tokens, "layers": layers, "spearman": rho, "spearman_p": p,
              "layer_spearman": layer_rho, "layer_spearman_p": layer_p,
              "base_val_loss": base_loss, "base_val_acc": base_acc, "images": len(val),
              "importance": config.importance, "mask_scope": config.mask_scope,
              "seconds": round(time.perf_counter() - started, 3)}
    atomic_write_json(run.analysis_dir / _cache_name(decision_round), result)
    return result
