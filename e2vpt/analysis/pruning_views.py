"""What pruning did, read from a run's `pruning.json`: importance maps, trajectories, lifetimes.

Raw importance scores (gradients of the loss w.r.t. the masks, `score_criterion` says which) differ in scale between rounds and runs, so the maps also
carry a normalised copy: each round's surviving scores divided by their maximum (1 = the most
important surviving prompt of that round). Pruned entries are NaN, never 0, so a chart can grey them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunDirError
from ..runs import RunDir


def _nan_nested(value):
    if isinstance(value, list):
        return [_nan_nested(v) for v in value]
    return np.nan if value is None else value


def load_pruning(run_dir: str | Path) -> dict:
    """The run's pruning record, with a clear error when the run has none yet."""
    record = RunDir(run_dir).pruning()
    if not record or not record.get("rounds"):
        raise RunDirError(f"{run_dir} has no pruning record yet; it is written when the first phase ends")
    return record


def score_criterion(settings: dict) -> dict:
    """What a run's importance scores are, from its settings (config.json): the recipe's rule in words
    and as a formula (LaTeX), and short names for chart axes and hovers. Keys: token_name,
    segment_name, formula, sentence. Why: under `studio` a token is scored by its segments
    (`token_importance: segments`), under `paper` and `official` by its own mask, signed under
    `official`; a page saying "the gradient with respect to the token's mask" for every run is wrong
    for most of them."""
    signed = settings.get("importance") == "signed"
    by_segments = settings.get("token_importance", "segments") == "segments"
    trained = ", at the masks' trained values" if settings.get("train_masks") else ""

    def mean_of(mask: str) -> str:  # E_x |dL/dmask| or the signed E_x[dL/dmask]
        grad = rf"\partial L / \partial {mask}"
        return rf"\mathbb{{E}}_x\left[{grad}\right]" if signed else rf"\mathbb{{E}}_x\left|{grad}\right|"

    segment = mean_of("m_{k,r}")
    if by_segments:
        token_name = "sum of its segments' " + ("|mean dL/dmask|" if signed else "mean |dL/dmask|")
        formula = r"S_k = \sum_r " + (rf"\left|{segment}\right|" if signed else segment)
        words = ("the sum, over the token's surviving segments r, of the " +
                 ("size of the mean signed gradient" if signed else "mean size of the gradient") +
                 " of the loss with respect to each segment's mask over the training images")
    else:
        token_name = "mean dL/dmask, signed" if signed else "mean |dL/dmask|"
        formula = "S_k = " + mean_of(r"\gamma_k")
        words = ("the mean signed gradient" if signed else "the mean size of the gradient") + \
            " of the loss with respect to the token's own mask over the training images"
    recipe = settings.get("recipe", "studio")
    sentence = (f"A token's score (recipe `{recipe}`: `token_importance {'segments' if by_segments else 'mask'}`, "
                f"`importance {'signed' if signed else 'abs'}`) is {words}{trained}: ${formula}$; a segment's is "
                f"$S_{{k,r}} = {segment}$." +
                (" A signed score can be negative, and the lowest are pruned first." if signed else ""))
    return {"token_name": token_name, "segment_name": "mean dL/dmask, signed" if signed else "mean |dL/dmask|",
            "formula": formula, "sentence": sentence}


def importance_maps(run_dir: str | Path) -> list[dict]:
    """One dict per round: token/segment scores (NaN where pruned or not scored) and masks as arrays.

    Keys: round, token_scores (layers x p), token_scores_normalised, token_mask, segment_scores
    (layers x p x R), segment_mask, normalisation, val_acc, tuned_params, token_score_name and
    segment_score_name (what the scores are, `score_criterion`).
    """
    record = load_pruning(run_dir)
    try:
        names = score_criterion(RunDir(run_dir).config())
    except RunDirError:  # an unreadable config.json: the maps still show, under a neutral name
        names = {"token_name": "importance score", "segment_name": "importance score"}
    maps = []
    for r in record["rounds"]:
        token_mask = np.array(r["token_mask"], dtype=float) if r.get("token_mask") is not None else None
        tokens = np.array(_nan_nested(r["token_importance"]), dtype=float) if r.get("token_importance") is not None else None
        segments = (np.array(_nan_nested(r["segment_importance"]), dtype=float)
                    if r.get("segment_importance") is not None else None)
        normalised = None
        if tokens is not None and np.isfinite(tokens).any():
            normalised = tokens / np.nanmax(np.abs(tokens))
        maps.append({
            "round": r["round"], "token_scores": tokens, "token_scores_normalised": normalised,
            "token_mask": token_mask,
            "segment_scores": segments,
            "segment_mask": np.array(r["segment_mask"], dtype=float) if r.get("segment_mask") is not None else None,
            "normalisation": "scores divided by the round's largest |score| among surviving prompts",
            "val_acc": r.get("val_acc"), "tuned_params": r.get("tuned_params"),
            "token_score_name": names["token_name"], "segment_score_name": names["segment_name"],
        })
    return maps


def pruning_trajectory(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Round by round: accuracies and cost ("rounds"), kept fraction per layer ("layers"), and for
    every (layer, token) the round in which it was pruned ("lifetimes"; None = it survived). Layers
    and tokens are numbered from 1, as on every chart."""
    record = load_pruning(run_dir)
    rounds = pd.DataFrame([{k: r.get(k) for k in ("round", "val_acc", "test_acc", "tuned_params", "tuned_pct",
                                                    "kept_tokens", "kept_segments", "train_s", "score_s", "wall_s")}
                           for r in record["rounds"]])
    layer_rows, lifetimes = [], []
    masks = [np.array(r["token_mask"], dtype=float) for r in record["rounds"] if r.get("token_mask") is not None]
    seg_masks = [np.array(r["segment_mask"], dtype=float) for r in record["rounds"] if r.get("segment_mask") is not None]
    if masks:
        for r, mask, seg in zip(record["rounds"], masks, seg_masks):
            kept_segments = (seg * mask[..., None]).sum(-1)
            for layer in range(mask.shape[0]):
                layer_rows.append({"round": r["round"], "layer": layer + 1, "kept_fraction": mask[layer].mean(),
                                   "kept_segment_fraction": kept_segments[layer].sum() / seg[layer].size})
        final_scores = {}
        for r in record["rounds"]:
            if r.get("token_importance") is not None:
                final_scores[r["round"]] = np.array(_nan_nested(r["token_importance"]), dtype=float)
        layers, tokens = masks[0].shape
        for layer in range(layers):
            for token in range(tokens):
                died = next((record["rounds"][i]["round"] for i, m in enumerate(masks) if m[layer, token] == 0), None)
                score = None
                for rnd, scores in sorted(final_scores.items()):
                    if np.isfinite(scores[layer, token]):
                        score = float(scores[layer, token])
                lifetimes.append({"layer": layer + 1, "token": token + 1, "pruned_in_round": died, "last_score": score})
    return {"rounds": rounds, "layers": pd.DataFrame(layer_rows), "lifetimes": pd.DataFrame(lifetimes)}


def selection_note(run_dir: str | Path) -> str | None:
    """The rule that picked the run's kept round, in words, and what round 0 scored beside it."""
    record = load_pruning(run_dir)
    rounds = {r["round"]: r for r in record["rounds"]}
    selected = record.get("selected_round")
    if selected is None or len(rounds) < 2 or selected not in rounds:
        return None
    try:
        settings = RunDir(run_dir).config()
    except RunDirError:
        settings = {}
    if settings.get("select_round") == "last" or settings.get("train_on") == "train+val":
        why = ("the last round" + (" (the run trained on train + val, so nothing was held out to choose with)"
                                   if settings.get("train_on") == "train+val" else " (--select-round last)"))
    else:
        why = ("the best validation accuracy among the pruning rounds 1 to "
               f"{max(rounds)}, ties going to more pruning; round 0, the unpruned model, does not compete, since "
               "the run exists to prune")
    note = f"Kept: round {selected}, by {why}."
    base, kept = rounds.get(0, {}).get("val_acc"), rounds[selected].get("val_acc")
    if selected != 0 and base is not None and kept is not None:
        if base > kept:
            note += (f" Round 0 scored higher on validation ({base:.3f} against {kept:.3f}): pruning cost "
                     f"{100 * (base - kept):.1f} points here.")
        else:
            note += f" Round 0 scored {base:.3f} on validation, the kept round {kept:.3f}."
    return note
