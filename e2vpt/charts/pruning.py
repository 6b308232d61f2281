"""The pruning trajectory: accuracy and tuned parameters per round, tokens kept per layer, prompt lifetimes (the
Pruning page)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from .common import SURVIVED, color, empty_figure, layout

# what `e2vpt.charts` offers from here
__all__ = ["layer_fraction_figure", "lifetime_figure", "trajectory_figure"]


def trajectory_figure(rounds: pd.DataFrame, title: str = "Accuracy and tuned parameters per round",
                      selected_round: int | None = None) -> go.Figure:
    """Validation/test accuracy (top) and tuned parameters (bottom) per pruning round."""
    if rounds is None or rounds.empty:
        return empty_figure("no pruning round has finished yet", title)

    def column(name: str, fmt) -> pd.Series:
        values = rounds[name] if name in rounds else pd.Series([np.nan] * len(rounds))
        return values.map(lambda v: fmt(v) if pd.notna(v) else "-")

    custom = np.stack([column("tuned_params", lambda v: f"{int(v):,}"), column("tuned_pct", lambda v: f"{v:.3f}%"),
                       column("kept_tokens", lambda v: f"{int(v)}"), column("kept_segments", lambda v: f"{int(v)}")],
                      axis=-1)
    detail = ("round %{x}<br>tuned %{customdata[0]} params (%{customdata[1]} of the backbone)"
              "<br>kept %{customdata[2]} prompt tokens, %{customdata[3]} segments")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    for column_name, name, c in (("val_acc", "validation accuracy", color(1)), ("test_acc", "test accuracy", color(0))):
        if column_name in rounds:
            fig.add_trace(go.Scatter(x=rounds["round"], y=rounds[column_name], name=name, mode="lines+markers",
                                     line=dict(color=c), marker=dict(size=9), customdata=custom,
                                     hovertemplate=f"<b>{name}</b>: %{{y:.4f}}<br>" + detail + "<extra></extra>"),
                          row=1, col=1)
    fig.add_trace(go.Bar(x=rounds["round"], y=rounds["tuned_params"], name="tuned parameters", marker_color="#9ecae1",
                         customdata=custom, text=custom[:, 1], textposition="outside", cliponaxis=False,
                         hovertemplate="<b>tuned parameters</b><br>" + detail + "<extra></extra>"), row=2, col=1)
    if selected_round is not None and selected_round in set(rounds["round"]):
        for row in (1, 2):
            fig.add_vline(x=selected_round, line=dict(color="#2ca02c", dash="dash"), row=row, col=1)
        fig.add_annotation(x=selected_round, y=0.02, xref="x", yref="y domain", text="selected round",
                           showarrow=False, font=dict(color="#2ca02c"), yanchor="bottom", xanchor="left", xshift=4)
    fig.update_xaxes(dtick=1)
    fig.update_xaxes(title_text="pruning round (0 = trained, unpruned)", row=2, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="tuned params", rangemode="tozero", row=2, col=1)
    return layout(fig, title, height=520)


def layer_fraction_figure(layers: pd.DataFrame, title: str = "Prompt tokens kept per layer") -> go.Figure:
    """Fraction of each layer's prompt tokens still alive after each round (one line per round)."""
    if layers is None or layers.empty:
        return empty_figure("no pruning record yet", title)
    fig = go.Figure()
    for i, (r, group) in enumerate(layers.groupby("round", sort=True)):
        fig.add_trace(go.Scatter(x=group["layer"], y=group["kept_fraction"], mode="lines+markers",
                                 name=f"round {r}", line=dict(color=color(i)),
                                 hovertemplate=f"round {r}, layer %{{x}}<br>kept %{{y:.0%}}<extra></extra>"))
    fig.update_xaxes(title_text="layer", dtick=1)
    fig.update_yaxes(title_text="fraction of prompt tokens kept", range=[0, 1.05], tickformat=".0%")
    return layout(fig, title)


def lifetime_figure(lifetimes: pd.DataFrame, rounds: int, title: str = "Prompt lifetimes") -> go.Figure:
    """For each (layer, token), numbered from 1: the round it was pruned in (light to dark red, a colour
    scale of its own, not the rounds' line colours) or green when it survived every round."""
    if lifetimes is None or lifetimes.empty:
        return empty_figure("no pruning record yet", title)
    n_layers = int(lifetimes["layer"].max())
    n_tokens = int(lifetimes["token"].max())
    survived = rounds + 1
    z = np.full((n_layers, n_tokens), np.nan)
    text = np.full((n_layers, n_tokens), "", dtype=object)
    for _, row in lifetimes.iterrows():
        r = row["pruned_in_round"]
        alive = r is None or (isinstance(r, float) and math.isnan(r))
        z[int(row["layer"]) - 1, int(row["token"]) - 1] = survived if alive else float(r)
        score = row.get("last_score")
        score_text = "-" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:.4g}"
        text[int(row["layer"]) - 1, int(row["token"]) - 1] = (
            ("survived every round" if alive else f"pruned in round {int(r)}") + f"<br>last score {score_text}")
    steps = list(range(1, survived + 1))
    reds = sample_colorscale("Reds", [0.35 + 0.55 * i / max(1, len(steps) - 2) for i in range(len(steps) - 1)])
    colors = reds + [SURVIVED]
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / len(colors), c], [(i + 1) / len(colors), c]]
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(1, n_tokens + 1), y=np.arange(1, n_layers + 1), colorscale=scale, zmin=0.5,
        zmax=survived + 0.5, xgap=1, ygap=1, customdata=text,
        colorbar=dict(title=dict(text="pruned in round"), tickvals=steps,
                      ticktext=[str(s) for s in steps[:-1]] + ["survived"]),
        hovertemplate="layer %{y}, token %{x}<br>%{customdata}<extra></extra>"))
    fig.update_xaxes(title_text="prompt token", dtick=1 if n_tokens <= 32 else None, showgrid=False)
    fig.update_yaxes(title_text="layer", dtick=1 if n_layers <= 32 else None, autorange="reversed", showgrid=False)
    return layout(fig, title, height=max(320, 60 + 28 * n_layers))
