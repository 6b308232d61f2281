"""The pruning criterion against reality (`e2vpt.analysis.ablation`): scores against measured drops (the Prompts
page)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import empty_figure, layout

# what `e2vpt.charts` offers from here
__all__ = ["ablation_frame", "ablation_scatter"]


def ablation_frame(result: dict) -> pd.DataFrame:
    """One row per prompt token of an ablation audit (layer and token from 1), for the table and CSV."""
    columns = ["layer", "token", "score", "rank", "val_loss_change", "val_acc_change", "pruned"]
    return pd.DataFrame(result.get("tokens") or [], columns=columns)


def _verdict(rho: float, p: float) -> str:
    if rho is None or p is None or not np.isfinite(rho):
        return "too few tokens to rank"
    strength = "no" if p >= 0.05 else ("a weak" if abs(rho) < 0.3 else "a moderate" if abs(rho) < 0.6 else "a strong")
    return f"Spearman rho {rho:+.2f} (p = {p:.2g}): {strength} agreement"


def ablation_scatter(result: dict, title: str | None = None, score_name: str = "importance score") -> go.Figure:
    """Each surviving token's importance score (x, log) against the validation loss change when it alone is
    removed (y): pruned in this round in red, kept in blue, with the rank correlation in the title.
    `score_name`: what the score is (`e2vpt.analysis.pruning_views.score_criterion`)."""
    frame = ablation_frame(result)
    if frame.empty:
        return empty_figure("no prompt tokens to audit", title or "")
    verdict = _verdict(result.get("spearman"), result.get("spearman_p"))
    title = title or (f"Round {result['decision_round']}'s scores against removing each token for real: {verdict}")
    fig = go.Figure()
    for pruned, name, colour in ((False, "kept in this round", "#1f77b4"), (True, "pruned in this round", "#d62728")):
        part = frame[frame["pruned"] == pruned]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(
            x=part["score"], y=part["val_loss_change"], mode="markers", name=name,
            marker=dict(color=colour, size=9, line=dict(width=1, color="white")),
            customdata=np.stack([part["layer"], part["token"], part["rank"], part["val_acc_change"]], axis=1),
            hovertemplate=("layer %{customdata[0]}, token %{customdata[1]}<br>score %{x:.3g} (" + score_name + "), "
                           "rank %{customdata[2]} of " + str(len(frame)) + " (1 = least important)<br>"
                           "removing it: val loss %{y:+.4f}, val accuracy %{customdata[3]:+.1f} points"
                           "<extra></extra>")))
    fig.add_hline(y=0, line=dict(color="#888", dash="dot"))
    log = bool((frame["score"] > 0).all())
    fig.update_xaxes(title_text=f"importance score: {score_name}, training images" + (" (log)" if log else ""),
                     type="log" if log else "linear")
    fig.update_yaxes(title_text="validation loss change when removed alone")
    return layout(fig, title, height=460)
