"""Methods side by side: accuracy against tuned parameters, and the runs table (the Compare page)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import METHOD_ORDER, color, empty_figure, layout

# what `e2vpt.charts` offers from here
__all__ = ["RUN_COLUMNS", "accuracy_vs_params", "log_ticks", "runs_frame", "runs_table", "zoomed_range"]


def runs_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Finished runs (rows of `list_runs`) with accuracy and tuned parameters."""
    columns = ["id", "method", "dataset", "backbone", "test_acc", "val_acc", "tuned_params", "tuned_pct", "wall_s",
               "sweep"]
    done = [{k: r.get(k) for k in columns} for r in rows
            if r.get("state") == "done" and r.get("test_acc") is not None and r.get("tuned_params")]
    return pd.DataFrame(done, columns=columns)


def accuracy_vs_params(frame: pd.DataFrame, title: str = "Accuracy vs tuned parameters") -> go.Figure:
    """Test accuracy against tuned parameters (log scale), one colour per method."""
    if frame is None or frame.empty:
        return empty_figure("no finished runs to compare", title)
    fig = go.Figure()
    methods = [m for m in METHOD_ORDER if m in set(frame["method"])] + \
              sorted(set(frame["method"].dropna()) - set(METHOD_ORDER))
    for i, method in enumerate(methods):
        part = frame[frame["method"] == method]
        custom = np.stack([part["id"], part["dataset"].astype(str), part["backbone"].astype(str),
                           part["tuned_pct"].map(lambda v: f"{v:.3f}%" if pd.notna(v) else "-"),
                           part["val_acc"].map(lambda v: f"{v:.4f}" if pd.notna(v) else "-")], axis=-1)
        fig.add_trace(go.Scatter(
            x=part["tuned_params"], y=part["test_acc"], mode="markers+text", name=method,
            text=[method] * len(part), textposition="top center", textfont=dict(size=10, color=color(i)),
            marker=dict(size=12, color=color(i), line=dict(width=1, color="#333")), customdata=custom,
            hovertemplate=f"<b>{method}</b> · %{{customdata[0]}}<br>dataset %{{customdata[1]}}, backbone "
                          "%{customdata[2]}<br>test accuracy %{y:.4f} (val %{customdata[4]})"
                          "<br>tuned %{x:,} params (%{customdata[3]})<extra></extra>"))
    low, high = float(frame["tuned_params"].min()), float(frame["tuned_params"].max())
    ticks = log_ticks(low, high)
    fig.update_xaxes(type="log", title_text="tuned parameters (log scale)", tickvals=ticks,
                     ticktext=[f"{v:,.0f}" for v in ticks], range=[np.log10(low) - 0.15, np.log10(high) + 0.15],
                     minor=dict(showgrid=False))
    fig.update_yaxes(title_text="test accuracy", range=zoomed_range(frame["test_acc"]), tickformat=".1%")
    return layout(fig, title, height=460)


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values m x 10^k from just below `low` to just above `high`, as whole numbers a reader can
    read (20,000, not a bare "2" between decades): decades when they give 3 ticks, else 1-2-5, else finer."""
    low, high = max(low, 1.0), max(high, 1.0)
    first, last = int(np.floor(np.log10(low / 1.4))), int(np.ceil(np.log10(high * 1.4)))
    inside = []
    for steps in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):  # the coarsest that gives 3 ticks
        ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in steps]
        inside = [t for t in ticks if low / 1.4 <= t <= high * 1.4]
        if len(inside) >= 3:
            break
    return inside or [10.0 ** round(np.log10(low))]


def zoomed_range(values: pd.Series, floor: float = 0.0, ceiling: float = 1.0) -> list[float]:
    """An accuracy axis zoomed to the data: differences of a point or two stay visible (0.925 vs
    0.945 on a 0-100 % axis look equal), with a margin of 15 % of the spread, at least 1 point."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return [floor, ceiling]
    low, high = float(values.min()), float(values.max())
    pad = max(0.01, 0.15 * (high - low))
    return [max(floor, low - pad), min(ceiling, high + pad)]


RUN_COLUMNS = {"id": "run", "method": "method", "dataset": "dataset", "backbone": "backbone",
               "test_acc": "test accuracy (%)", "val_acc": "validation accuracy (%)",
               "tuned_params": "tuned parameters", "tuned_pct": "tuned (% of backbone)", "wall_s": "wall time (min)",
               "sweep": "sweep"}


def runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`runs_frame` for reading: named columns with their units, accuracies in percent, minutes."""
    table = frame[[c for c in RUN_COLUMNS if c in frame.columns]].rename(columns=RUN_COLUMNS)
    for column in ("test accuracy (%)", "validation accuracy (%)"):
        if column in table:
            table[column] = (100 * pd.to_numeric(table[column], errors="coerce")).round(2)
    if "tuned (% of backbone)" in table:
        table["tuned (% of backbone)"] = pd.to_numeric(table["tuned (% of backbone)"], errors="coerce").round(3)
    if "wall time (min)" in table:
        table["wall time (min)"] = (pd.to_numeric(table["wall time (min)"], errors="coerce") / 60).round(1)
    return table
