"""Loss and accuracy per epoch, with the pruning rounds marked (the Train and Runs pages)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import color, empty_figure, layout

# what `e2vpt.charts` offers from here
__all__ = ["REWIND_WORDS", "metrics_frame", "prune_frame", "training_curves"]


def metrics_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Epoch records of metrics.jsonl as a table with a running `step` (1, 2, ... across phases)."""
    rows = [dict(r) for r in records if r.get("kind") == "epoch"]
    columns = ["step", "phase", "round", "epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr",
               "epoch_s", "wall_s", "tuned_params"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    frame.insert(0, "step", np.arange(1, len(frame) + 1))
    for column in columns:
        if column not in frame:
            frame[column] = np.nan
    return frame[columns]


def prune_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Pruning events of metrics.jsonl, each placed at the step after which it happened."""
    step, rows = 0, []
    for r in records:
        if r.get("kind") == "epoch":
            step += 1
        elif r.get("kind") == "prune":
            rows.append({"after_step": step, **{k: v for k, v in r.items() if k != "kind"}})
    return pd.DataFrame(rows, columns=["after_step", "round", "kept_tokens", "kept_segments", "tuned_params",
                                       "score_s", "scored_images", "wall_s"] if not rows else None)


REWIND_WORDS = {"init": "survivors reset to their initial values", "reinit": "survivors drawn afresh"}


def training_curves(epochs: pd.DataFrame, prunes: pd.DataFrame | None = None, title: str = "Training curves",
                    total_steps: int | None = None, rewind: str | None = None) -> go.Figure:
    """Loss (left) and accuracy (right) per epoch, train and validation, pruning rounds marked.

    Args:
        epochs: `metrics_frame(...)`.
        prunes: `prune_frame(...)`: a dashed line where each pruning round scored and pruned.
        total_steps: fix the x axis to the planned number of epochs (live view of a running run).
        rewind: the run's `rewind` setting: each pruning line then also says that the surviving
            prompts were rewound there (why the loss jumps right after it).
    """
    if epochs is None or epochs.empty:
        return empty_figure("no epoch has finished yet", title)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.1)
    custom = np.stack([epochs["phase"].astype(str), epochs["round"].astype(str), epochs["epoch"].astype(str),
                       epochs["lr"].map(lambda v: f"{v:.2e}" if pd.notna(v) else "-"),
                       epochs["wall_s"].map(lambda v: f"{v:.0f}" if pd.notna(v) else "-")], axis=-1)
    hover = ("<b>%{fullData.name}</b>: %{y:.4f}<br>step %{x} · %{customdata[0]} round %{customdata[1]}, "
             "epoch %{customdata[2]}<br>lr %{customdata[3]} · %{customdata[4]} s since start<extra></extra>")
    for col, metric in ((1, "loss"), (2, "acc")):
        for split, dash, c in (("train", "solid", color(0)), ("val", "dash", color(1))):
            fig.add_trace(go.Scatter(x=epochs["step"], y=epochs[f"{split}_{metric}"], mode="lines+markers",
                                     name=f"{split} {'loss' if metric == 'loss' else 'accuracy'}",
                                     line=dict(color=c, dash=dash), marker=dict(size=6), customdata=custom,
                                     hovertemplate=hover, legendgroup=split, showlegend=True),
                          row=1, col=col)
    if prunes is not None and not prunes.empty:
        for _, p in prunes.iterrows():
            x = float(p["after_step"]) + 0.5
            text = f"prune {int(p['round'])}" + (" + rewind" if rewind else "")
            for col in (1, 2):
                fig.add_vline(x=x, line=dict(color="#888", dash="dot", width=1), row=1, col=col)
            for axis in ("", "2"):
                fig.add_annotation(x=x, y=0.98, yref=f"y{axis} domain", xref=f"x{axis}", text=text, showarrow=False,
                                   font=dict(size=10, color="#666"), yanchor="top", xanchor="left", xshift=2)
    fig.update_xaxes(title_text="epoch (all phases)", dtick=1 if len(epochs) <= 30 else None)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=2)
    if total_steps:
        fig.update_xaxes(range=[0.5, max(total_steps, len(epochs)) + 0.5])
    layout(fig, title, height=420)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="center", x=0.5),
                      margin=dict(b=90))
    return fig
