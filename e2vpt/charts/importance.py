"""Importance maps: which prompt tokens and segments mattered, which were pruned and when (the Prompts page)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import OUTLINE, PRUNED_GREY, empty_figure, layout

# what `e2vpt.charts` offers from here
__all__ = ["PRUNED_NOW", "cut_off", "importance_frame", "importance_heatmap", "segment_frame", "segment_heatmap"]


def _array(value: Any, ndim: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    return arr if arr.ndim == ndim else None


def importance_frame(round_map: dict) -> pd.DataFrame:
    """One row per (layer, token) of a round: score, normalised score, kept, status."""
    scores = _array(round_map.get("token_scores"), 2)
    mask = _array(round_map.get("token_mask"), 2)
    norm = _array(round_map.get("token_scores_normalised"), 2)
    if mask is None:
        return pd.DataFrame(columns=["round", "layer", "token", "score", "score_normalised", "kept", "status"])
    rows = []
    for (layer, token), kept in np.ndenumerate(mask):
        s = scores[layer, token] if scores is not None else np.nan
        rows.append({"round": round_map.get("round"), "layer": layer + 1, "token": token + 1,
                     "score": None if np.isnan(s) else float(s),
                     "score_normalised": None if norm is None or np.isnan(norm[layer, token]) else float(norm[layer, token]),
                     "kept": bool(kept), "status": _cell_status(kept, s, round_map.get("round", 0))})
    return pd.DataFrame(rows)


def _cell_status(kept: float, score: float, round_index: int) -> str:
    if kept:
        return "kept"
    if round_index == 0 or not np.isnan(score):
        return "pruned in this round"
    return "pruned in an earlier round"


def _outline_shapes(mask: np.ndarray, line_color: str = OUTLINE, width: float = 1.6, inset: float = 0.0) -> list[dict]:
    return [dict(type="rect", x0=j + 0.5 + inset, x1=j + 1.5 - inset, y0=i + 0.5 + inset, y1=i + 1.5 - inset,
                 xref="x", yref="y", line=dict(color=line_color, width=width), fillcolor="rgba(0,0,0,0)",
                 layer="above")
            for (i, j), kept in np.ndenumerate(mask) if kept]


PRUNED_NOW = "#d62728"  # red: nothing like a low score in the Viridis scale


def _legend_entries(fig: go.Figure, entries: Sequence[tuple[str, str, str]]) -> None:
    """Legend-only markers (name, fill, outline) explaining the cell styles of a heatmap."""
    for name, fill, outline in entries:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip", showlegend=True,
                                 marker=dict(symbol="square", size=13, color=fill, line=dict(color=outline, width=2))))


def _ranks(z: np.ndarray) -> np.ndarray:
    """Rank of each scored cell among all scored cells of the map, 1 = lowest score (pruned first)."""
    ranks = np.full(z.shape, np.nan)
    flat = np.flatnonzero(np.isfinite(z))
    ranks.flat[flat[np.argsort(z.flat[flat], kind="stable")]] = np.arange(1, len(flat) + 1)
    return ranks


def _heatmap(z: np.ndarray, status: np.ndarray, kept: np.ndarray, x_name: str, y_name: str, value_name: str,
             title: str, colorscale: str = "Viridis", zmin: float | None = None, zmax: float | None = None,
             height: int | None = None, units: str = "") -> go.Figure:
    rows, cols = z.shape
    ranks = _ranks(z)
    scored = int(np.isfinite(z).sum())
    rank_text = np.where(np.isnan(ranks), "", np.vectorize(lambda v: f", rank {v:.0f} of {scored} (1 = least "
                                                                      "important)")(np.nan_to_num(ranks)))
    custom = np.stack([status, np.where(np.isnan(z), "-", np.vectorize(lambda v: f"{v:.4g}")(np.nan_to_num(z))),
                       rank_text], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(1, cols + 1), y=np.arange(1, rows + 1), colorscale=colorscale, zmin=zmin, zmax=zmax,
        customdata=custom, hoverongaps=True, xgap=1, ygap=1, showlegend=False,
        colorbar=dict(title=dict(text=value_name, side="right")),
        hovertemplate=f"{y_name} %{{y}}, {x_name} %{{x}}<br>{value_name}: %{{customdata[1]}}{units}%{{customdata[2]}}"
                      "<br>%{customdata[0]}<extra></extra>"))
    pruned_now = (status == "pruned in this round") & ~np.isnan(z)
    # pruned in this round: a thick red frame inside the cell, so the score's colour stays readable
    fig.update_layout(shapes=_outline_shapes(pruned_now, PRUNED_NOW, width=3, inset=0.08) + _outline_shapes(kept))
    _legend_entries(fig, [("kept (outlined)", "rgba(0,0,0,0)", OUTLINE)]
                    + ([("pruned in this round (red frame)", "rgba(0,0,0,0)", PRUNED_NOW)] if pruned_now.any() else [])
                    + ([("pruned in an earlier round", PRUNED_GREY, PRUNED_GREY)]
                       if (status == "pruned in an earlier round").any() else []))
    fig.update_xaxes(title_text=x_name, dtick=1 if cols <= 32 else None, range=[0.5, cols + 0.5],
                     showgrid=False, zeroline=False)
    fig.update_yaxes(title_text=y_name, dtick=1 if rows <= 32 else None, range=[rows + 0.5, 0.5],
                     showgrid=False, zeroline=False)
    fig.update_layout(plot_bgcolor=PRUNED_GREY)
    return layout(fig, title, height=height or max(320, 80 + 28 * rows))


def cut_off(round_map: dict) -> str | None:
    """Where a round's token cut fell, in words: the highest score pruned against the lowest kept."""
    scores, mask = _array(round_map.get("token_scores"), 2), _array(round_map.get("token_mask"), 2)
    if scores is None or mask is None or not np.isfinite(scores).any():
        return None
    scored = np.isfinite(scores)
    pruned, kept = scores[scored & (mask == 0)], scores[scored & (mask > 0)]
    if not len(pruned) or not len(kept):
        return None
    return f"cut between {pruned.max():.3g} (highest pruned) and {kept.min():.3g} (lowest kept)"


def _no_scores(round_map: dict, scores: np.ndarray | None) -> bool:
    return scores is None or not np.isfinite(scores).any()


def importance_heatmap(round_map: dict, normalised: bool = False, title: str | None = None) -> go.Figure:
    """Layer x token importance of one round: survivors outlined, pruned cells greyed.

    The scores are the ones that decided this round's masks (computed on the previous round's
    model); round 0 has none, so its map shows which prompts exist (all kept).
    """
    mask = _array(round_map.get("token_mask"), 2)
    r = int(round_map.get("round", 0))
    if mask is None:
        return empty_figure("this method has no visual prompts to score", title or "Prompt importance")
    key = "token_scores_normalised" if normalised and round_map.get("token_scores_normalised") is not None \
        else "token_scores"
    scores = _array(round_map.get(key), 2)
    status = np.vectorize(_cell_status)(mask, scores if scores is not None else np.full(mask.shape, np.nan), r)
    if _no_scores(round_map, scores):
        title = title or f"Round {r}: prompts kept (no importance scores: round 0 is the unpruned model)"
        return _heatmap(np.where(mask > 0, 1.0, np.nan), status, mask > 0, "prompt token", "layer", "kept",
                        title, colorscale=[[0, "#4c78a8"], [1, "#4c78a8"]], zmin=0, zmax=1)
    normalised = key.endswith("normalised")
    label = "importance" + (" (normalised)" if normalised else "")
    cut = cut_off(round_map)
    title = title or (f"Round {r}: importance of each prompt token" + (f"<br><sup>{cut}</sup>" if cut else ""))
    name = round_map.get("token_score_name", "importance score")
    units = f" (share of the round's largest score; score: {name})" if normalised else f" ({name})"
    return _heatmap(scores, status, mask > 0, "prompt token", "layer", label, title, units=units)


def segment_frame(round_map: dict, layer: int) -> pd.DataFrame:
    """One row per (token, segment) of one layer (0-based `layer`) in a round."""
    seg_scores = _array(round_map.get("segment_scores"), 3)
    seg_mask = _array(round_map.get("segment_mask"), 3)
    tok_mask = _array(round_map.get("token_mask"), 2)
    if seg_mask is None or tok_mask is None:
        return pd.DataFrame(columns=["round", "layer", "token", "segment", "score", "kept"])
    rows = []
    for (token, segment), kept in np.ndenumerate(seg_mask[layer]):
        s = seg_scores[layer, token, segment] if seg_scores is not None else np.nan
        rows.append({"round": round_map.get("round"), "layer": layer + 1, "token": token + 1, "segment": segment + 1,
                     "score": None if np.isnan(s) else float(s), "kept": bool(kept and tok_mask[layer, token])})
    return pd.DataFrame(rows)


def segment_heatmap(round_map: dict, layer: int, title: str | None = None) -> go.Figure:
    """Token x segment importance for one layer (0-based) of one round; survivors outlined."""
    seg_mask = _array(round_map.get("segment_mask"), 3)
    tok_mask = _array(round_map.get("token_mask"), 2)
    r = int(round_map.get("round", 0))
    if seg_mask is None or tok_mask is None:
        return empty_figure("this method has no prompt segments", title or "Segment importance")
    layer = int(min(max(layer, 0), seg_mask.shape[0] - 1))
    kept = (seg_mask[layer] > 0) & (tok_mask[layer][:, None] > 0)
    scores = _array(round_map.get("segment_scores"), 3)
    z = scores[layer] if scores is not None else None
    status = np.where(kept, "kept", "pruned in this round")
    if z is not None:
        status = np.where(~kept & np.isnan(z) & (r > 0), "pruned in an earlier round", status)
    if z is None or not np.isfinite(z).any():
        title = title or f"Round {r}, layer {layer + 1}: segments kept (no scores in round 0)"
        return _heatmap(np.where(kept, 1.0, np.nan), status, kept, "segment", "prompt token", "kept", title,
                        colorscale=[[0, "#4c78a8"], [1, "#4c78a8"]], zmin=0, zmax=1,
                        height=max(300, 60 + 24 * kept.shape[0]))
    title = title or f"Round {r}, layer {layer + 1}: importance of each segment"
    return _heatmap(z, status, kept, "segment", "prompt token", "importance", title,
                    height=max(300, 80 + 24 * kept.shape[0]),
                    units=f" ({round_map.get('segment_score_name', 'importance score')})")
