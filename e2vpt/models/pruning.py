"""Prompt pruning and rewinding (docs/E2VPT-SPEC.md section 4).

Importance of a prompt piece = how much the loss depends on a multiplicative mask over it:
S = E_x |dL(x)/d(mask)| (Michel et al. 2019; Molchanov et al. 2017). The model multiplies its
prompts by a *per-image* gate holding the mask values, so a single backward pass over a batch (loss
summed) gives every image's own gradient: image b's loss depends only on gate[b]. Token and segment
gates are scored in the same pass, as the official code does (one pass over the training set per round).

Selection: with `mask_scope="layer"` the (layer, token) scores are ranked together across layers,
so a layer can lose all its prompts (removed, it then reads no visual prompt; its key-value prompts
stay); with `"shared"` the scores are summed over layers and position k, and segment r of position
k, are pruned in every layer (the paper and the official code share one mask by all layers).
Segments are ranked across all surviving tokens (`segment_rank="global"`), or within each token, every
token losing the same share of its own lowest segments (`"per-token"`, the official code: `per_token`
below); either way at least `min_segments` per token stay (official: 4 of 16).

Counting: a ratio of n survivors prunes round(ratio x n) pieces (`count="round"`), or, as the official
code does, int(n x pct / 100) (`count="floor"`: 30 % of 5 tokens prunes 1, not 2).

Rewinding: survivors go back to their saved initial values (`init`, lottery-ticket style) or to
fresh random values (`reinit`, the official code); masks carry over and pruned values stay zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .base import PromptTuned


@dataclass
class Importance:
    """Scores of one scoring pass; entries of already pruned pieces are NaN."""

    token: torch.Tensor  # (prompt layers, p)
    segment: torch.Tensor  # (prompt layers, p, R)
    images: int


def score_importance(model: PromptTuned, loader: DataLoader, device: torch.device, mode: str = "abs",
                     autocast=None, progress=None, all_reduce=None, token_from: str = "mask") -> Importance:
    """Mean (absolute or signed) per-image gradient of the loss w.r.t. token and segment masks, taken
    at the masks' current values (1 for a surviving piece, or the trained value with `--train-masks`).

    The prompts are held fixed (no optimiser step); the model runs in eval mode, as in the official code.
    `all_reduce` (multi-process runs) sums the scores over every process's images before averaging.

    `token_from="segments"` scores a token by the sum of its surviving segments' |scores| instead of
    its own mask's gradient. Why: a deep prompt token enters its layer only through LayerNorm, which
    ignores the token's scale, and its output is dropped, so the loss barely depends on the token
    mask: on the demo its gradient is ~1e-7, four orders below its segments' (docs/RECIPES.md). Its
    segments each scale only part of the channels, which LayerNorm does see.
    """
    was_training = model.training
    model.eval()
    t = model.tuned
    layers, p, r = t.segment_mask.shape
    token_sum = torch.zeros(layers, p, dtype=torch.float64, device=device)
    segment_sum = torch.zeros(layers, p, r, dtype=torch.float64, device=device)
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        b = images.shape[0]
        token_gate, segment_gate = (gate.to(device).requires_grad_() for gate in model.gate_values(b))
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = model(images, token_gate=token_gate, segment_gate=segment_gate)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        g_token, g_segment = torch.autograd.grad(loss, [token_gate, segment_gate])
        if mode == "abs":
            g_token, g_segment = g_token.abs(), g_segment.abs()
        token_sum += g_token.double().sum(0)
        segment_sum += g_segment.double().sum(0)
        seen += b
        if progress is not None:
            progress(b)
    model.train(was_training)
    if all_reduce is not None:
        all_reduce(token_sum)
        all_reduce(segment_sum)
        seen = int(all_reduce(torch.tensor([seen], dtype=torch.float64, device=device)).item())
    token = (token_sum / max(seen, 1)).float().cpu()
    segment = (segment_sum / max(seen, 1)).float().cpu()
    token[t.token_mask.cpu() == 0] = float("nan")
    segment[model.tuned.segment_mask.cpu() == 0] = float("nan")
    segment[t.token_mask.cpu() == 0] = float("nan")
    if token_from == "segments":
        token = torch.where(t.token_mask.cpu() == 0, float("nan"), segment.abs().nansum(-1))
    return Importance(token=token, segment=segment, images=seen)


def min_segments_for(segments: int) -> int:
    """Segments every surviving token keeps (official: never below 4 of 16)."""
    return max(1, segments // 4)


def rounds_that_prune(token_mask: torch.Tensor, segments: int, prune_ratio: float, segment_ratio: float,
                      scope: str, rounds: int, per_token: bool = False, count: str = "round") -> int:
    """How many of `rounds` pruning rounds would remove anything, starting from `token_mask`.

    Counts do not depend on the scores (ties are broken by position), so the schedule is played out
    on zero scores. A round after the last one that prunes would only retrain an unchanged model.
    """
    tokens = token_mask.clone()
    segment_mask = torch.ones(*tokens.shape, segments)
    min_segments = min_segments_for(segments)
    useful = 0
    for _ in range(rounds):
        before = (int(tokens.sum()), int((segment_mask * tokens[..., None]).sum()))
        tokens = prune_tokens(tokens, torch.zeros(tokens.shape), prune_ratio, scope, count=count)
        segment_mask = prune_segments(tokens, segment_mask, torch.zeros(segment_mask.shape), segment_ratio,
                                      min_segments, scope, per_token, count=count)
        after = (int(tokens.sum()), int((segment_mask * tokens[..., None]).sum()))
        if after == before:
            break
        useful += 1
    return useful


def kept_after(token_shape: tuple[int, int], segments: int, prune_ratio: float, segment_ratio: float, scope: str,
               per_token: bool = False, count: str = "round") -> tuple[int, int]:
    """(tokens, segments) that survive one pruning round of a full (layers, p) prompt at these ratios.

    Like `rounds_that_prune`, the counts do not depend on the scores, so two ratio pairs with the same
    counts prune the same number of pieces: the pruning search trains such a pair once.
    """
    tokens = prune_tokens(torch.ones(token_shape), torch.zeros(token_shape), prune_ratio, scope, count=count)
    segment_mask = prune_segments(tokens, torch.ones(*token_shape, segments), torch.zeros(*token_shape, segments),
                                  segment_ratio, min_segments_for(segments), scope, per_token, count=count)
    return int(tokens.sum()), int((segment_mask * tokens[..., None]).sum())


def count_to_prune(kept: int, ratio: float, keep_at_least: int = 0, count: str = "round") -> int:
    """How many of `kept` pieces a `ratio` prunes, never leaving fewer than `keep_at_least`:
    round(ratio x kept), or with `count="floor"` the official code's int(kept x pct / 100). The floor
    forgives float noise (0.29 x 100 is 28.999...; the official code's integer percent gives 29)."""
    wanted = math.floor(ratio * kept + 1e-9) if count == "floor" else int(round(ratio * kept))
    return max(0, min(wanted, kept - keep_at_least))


def prune_tokens(token_mask: torch.Tensor, scores: torch.Tensor, ratio: float, scope: str,
                 min_tokens: int = 1, count: str = "round") -> torch.Tensor:
    """New token mask with the lowest-scoring `ratio` of the surviving tokens removed."""
    mask = token_mask.clone()
    if scope == "shared":
        alive = mask[0] > 0
        position_scores = torch.nan_to_num(scores, nan=0.0).sum(0)  # sum over layers = shared gate's gradient
        n = count_to_prune(int(alive.sum()), ratio, min_tokens, count)
        candidates = alive.nonzero().squeeze(1)
        order = candidates[torch.argsort(position_scores[candidates], stable=True)]
        mask[:, order[:n]] = 0
        return mask
    alive = (mask > 0).flatten()
    n = count_to_prune(int(alive.sum()), ratio, min_tokens, count)
    candidates = alive.nonzero().squeeze(1)
    order = candidates[torch.argsort(scores.flatten()[candidates], stable=True)]
    flat = mask.flatten()
    flat[order[:n]] = 0
    return flat.view_as(mask)


def prune_segments(token_mask: torch.Tensor, segment_mask: torch.Tensor, scores: torch.Tensor, ratio: float,
                   min_segments: int = 1, scope: str = "layer", per_token: bool = False,
                   count: str = "round") -> torch.Tensor:
    """New segment mask with the lowest `ratio` of surviving segments (of surviving tokens) zeroed,
    keeping at least `min_segments` per token.

    `scope="shared"` decides once for every layer, on the scores summed over layers. `per_token` (the
    official code) takes `ratio` of each token's own segments, its lowest ones; otherwise segments are
    ranked across all surviving tokens, so an unimportant token can lose more than an important one.
    """
    if scope == "shared":
        summed = torch.nan_to_num(scores, nan=0.0).sum(0, keepdim=True)
        shared = prune_segments(token_mask[:1], segment_mask[:1], summed, ratio, min_segments, per_token=per_token,
                                count=count)
        return shared.expand_as(segment_mask).clone()
    if per_token:
        mask = segment_mask.clone()
        mask[token_mask == 0] = 0
        ranked = torch.nan_to_num(scores, nan=float("inf")).masked_fill(mask == 0, float("inf"))
        for layer, token in (token_mask > 0).nonzero().tolist():
            n = count_to_prune(int(mask[layer, token].sum()), ratio, min_segments, count)
            mask[layer, token, torch.argsort(ranked[layer, token], stable=True)[:n]] = 0
        return mask
    mask = segment_mask.clone()
    mask[token_mask == 0] = 0
    alive = mask > 0
    n = count_to_prune(int(alive.sum()), ratio, 0, count)
    if n == 0:
        return mask
    flat_scores = torch.nan_to_num(scores, nan=float("inf")).clone()
    flat_scores[~alive] = float("inf")
    order = torch.argsort(flat_scores.flatten(), stable=True)
    layers, p, r = mask.shape
    left = alive.sum(-1).flatten().clone()  # surviving segments per token
    flat = mask.flatten()
    removed = 0
    for index in order.tolist():
        if removed >= n or flat_scores.flatten()[index] == float("inf"):
            break
        token = index // r
        if left[token] <= min_segments:
            continue
        flat[index] = 0
        left[token] -= 1
        removed += 1
    return flat.view(layers, p, r)


@torch.no_grad()
def rewind(model: PromptTuned, initial_state: dict[str, torch.Tensor], how: str = "init",
           generator: torch.Generator | None = None) -> None:
    """Reset prompts and head for retraining; masks are kept and pruned entries stay zero.

    Args:
        initial_state: the tuned tensors as they were at initialisation (`model.tuned_state()` before training).
        how: `init` restores those exact values; `reinit` draws fresh random ones.
    """
    masks = (model.tuned.token_mask.clone(), model.tuned.segment_mask.clone())
    if how == "init":
        own = dict(model.named_parameters())
        for name, value in initial_state.items():
            if name in own and name.startswith("tuned."):
                own[name].copy_(value)
    else:
        model.reset_tuned(generator)
    model.set_masks(*masks)


def refuse_useless_rounds(token_mask: torch.Tensor, config) -> None:
    """Refuse pruning rounds that could remove nothing (a `ConfigError` naming the most that can):
    each would only retrain an unchanged model. `config` is the run's `TrainConfig`."""
    if not config.rounds:
        return
    useful = rounds_that_prune(token_mask, config.segments, config.prune_ratio, config.segment_ratio,
                               config.mask_scope, config.rounds, config.segment_rank == "per-token", config.prune_count)
    if useful < config.rounds:
        layers, p = token_mask.shape
        raise ConfigError(
            f"prune_rounds (--prune-rounds) is {config.rounds}, but only {useful} round(s) can prune anything with "
            f"{p} prompt token(s) in each of {layers} layer(s), prune_ratio {config.prune_ratio} and segment_ratio "
            f"{config.segment_ratio}; use --prune-rounds {useful} or fewer, or raise the ratios", "prune_rounds")
