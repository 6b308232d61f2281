"""What a prompt looks at: attention to and from the prompts of a saved run, for one image.

Why: importance scores say which prompts the pruning kept, not what they do. Attention shows it in
the model's own terms, layer by layer: how much of its attention [CLS] (the token the head reads)
gives each visual prompt token and each key-value prompt, where on the image each visual prompt
token looks, and which patches read from each key-value prompt (key-value prompts are keys and
values only: they are looked at, they look at nothing). Attention is averaged over heads.

A pruning decision is seen from the state just before it: the model saved after round r, on
which round r + 1 scored and pruned. Its tokens are marked `kept` or `pruned next` (and, with
`pruned_tokens="zero"`, where pruned tokens stay as zeros, `pruned earlier`). The result is cached
in the run's `analysis/attention-round-R-<split>-<index>.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RunDirError
from ..fileio import atomic_write_json, read_json
from ..runs import RunDir
from .embeddings import SPLITS

# Bumped whenever what is measured changes, so older caches are recomputed.
ATTENTION_VERSION = 1


def _cache_file(run: RunDir, round_index: int, split: str, index: int) -> Path:
    return run.analysis_dir / f"attention-round-{round_index}-{split}-{index}.json"


def _next_masks(run: RunDir, round_index: int) -> tuple[torch.Tensor | None, int]:
    """The token mask the next pruning decision left (None after the last round) and the rounds."""
    rounds = (run.pruning() or {}).get("rounds", [])  # RunDirError, saying so, if the record is damaged
    after = next((r for r in rounds if r["round"] == round_index + 1), None)
    mask = None if after is None else after.get("token_mask")
    return (None if mask is None else torch.tensor(mask, dtype=torch.float32)), len(rounds)


def prompt_attention(run_dir: str | Path, round_index: int, index: int = 0, split: str = "test",
                     device: str = "cpu", refresh: bool = False) -> dict:
    """Attention to and from the prompts of the model saved after round `round_index`, for image
    `index` of `split`, with each token's fate at the next pruning decision.

    Returns {"round", "split", "index", "label", "class_name", "predicted", "predicted_name", "grid"
    (patch rows, patch columns), "kv_len", "next_round" (None after the last), "layers": [{"layer"
    (1-based), "tokens" (1-based numbers of the prompt tokens in the sequence), "status" per token,
    "cls_to_prompt", "cls_to_kv", "cls_to_patches" (rows x columns, flattened), "cls_to_prefix",
    "prompt_to_patches" (per token, flattened), "kv_from_patches" (per key-value prompt, the share
    of each patch's attention it receives, flattened)}]}; every share is a fraction of one query's
    attention (each query's shares over all keys sum to 1).
    """
    from ..training.build import load_run_model

    if split not in SPLITS:
        raise RunDirError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    run = RunDir(run_dir)
    cache = _cache_file(run, round_index, split, index)
    cached = None if refresh else read_json(cache)
    if isinstance(cached, dict) and cached.get("version") == ATTENTION_VERSION:
        return cached
    model, _, splits = load_run_model(run_dir, device=device, round_index=round_index)
    dataset = getattr(splits, split)
    if not 0 <= index < len(dataset):
        raise RunDirError(f"the {split} split has {len(dataset)} images; image {index} does not exist")
    image, label = dataset[index]
    record: list[dict] = []
    with torch.no_grad():  # one forward: the recorded attention and the prediction come from the same pass
        features = model.forward_features(image.unsqueeze(0).to(device), record_attention=record)
        predicted = int(model.tuned.head(features).argmax(1).item())
    next_mask, n_rounds = _next_masks(run, round_index)
    token_mask = model.tuned.token_mask.detach().cpu()
    patch = model.backbone.patch_embed.grid_size
    layers = []
    for i, entry in enumerate(record):
        tokens = entry["tokens"]
        status = []
        for t in tokens:
            if token_mask[entry["prompt_layer"], t] == 0:
                status.append("pruned earlier")
            elif next_mask is not None and next_mask[entry["prompt_layer"], t] == 0:
                status.append("pruned next")
            else:
                status.append("kept")
        layers.append({
            "layer": i + 1, "tokens": [t + 1 for t in tokens], "status": status,
            "cls_to_prompt": entry["cls_to_prompt"].tolist(), "cls_to_kv": entry["cls_to_kv"].tolist(),
            "cls_to_patches": entry["cls_to_patches"].flatten().tolist(),
            "cls_to_prefix": float(entry["cls_to_prefix"]),
            "prompt_to_patches": [m.flatten().tolist() for m in entry["prompt_to_patches"]],
            "kv_from_patches": [m.flatten().tolist() for m in entry["kv_from_patches"]],
        })
    names = list(splits.class_names)
    result = {"version": ATTENTION_VERSION, "run": run.id, "round": round_index, "split": split, "index": index,
              "label": int(label), "class_name": names[int(label)], "predicted": predicted,
              "predicted_name": names[predicted], "grid": [int(patch[0]), int(patch[1])],
              "kv_len": int(model.kv_len), "next_round": round_index + 1 if round_index + 1 < n_rounds else None,
              "pruned_tokens": model.pruned_tokens, "layers": layers}
    atomic_write_json(cache, result)
    return result
