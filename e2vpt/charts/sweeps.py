"""A sweep's frontier per dataset and its settings against accuracy (the Sweeps page)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import METHOD_ORDER, color, empty_figure, layout
from .compare import log_ticks, zoomed_range

# what `e2vpt.charts` offers from here
__all__ = ["frontier_chart", "parallel_coordinates", "percent_ticks"]


def _methods_in(frame: pd.DataFrame) -> list[str]:
    return [m for m in METHOD_ORDER if m in set(frame["method"])] + sorted(set(frame["method"].dropna()) - set(METHOD_ORDER))


def percent_ticks(low: float, high: float, most: int = 8) -> tuple[list[float], list[str]]:
    """Ticks for an accuracy axis from `low` to `high` (fractions) at a round step, each labelled with
    as many decimals as the step needs, so a label always names its own value (92.5 %, not "93%")."""
    span = max(high - low, 1e-6)
    for step in (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25):
        if span / step <= most:
            break
    decimals = len(f"{step * 100:g}".partition(".")[2])  # 0.25 % -> 2, 0.5 % -> 1, 2 % -> 0
    first = math.ceil(low / step - 1e-9)
    values = [round((first + i) * step, 10) for i in range(int(math.floor(high / step + 1e-9)) - first + 1)]
    return values, [f"{100 * v:.{decimals}f}%" for v in values]


def frontier_chart(table: pd.DataFrame, title: str = "Accuracy against tuned parameters") -> go.Figure:
    """One dataset's frontier: each configuration's final models (the rounds its runs kept on
    validation), mean test accuracy with a 95 % interval over seeds, against tuned parameters (log
    scale), one colour per method, the Pareto front of those final points as a dashed line. Every
    E2VPT pruning round (`final` False) is drawn as an open marker joined to its configuration's other
    rounds: the trajectory, never part of the front (`e2vpt.sweeps.frontier.summary` gives the table)."""
    if table is None or table.empty:
        return empty_figure("no finished trials yet", title)
    fig = go.Figure()
    for i, method in enumerate(_methods_in(table)):
        for final in (True, False):
            part = table[(table["method"] == method) & (table["final"] == final)].sort_values("tuned_params")
            if part.empty:
                continue
            custom = np.stack([part["label"], part["seeds"], part["val_acc"].map(lambda v: f"{v:.4f}"),
                               part["tuned_pct"].map(lambda v: f"{v:.3f}%")], axis=-1)
            fig.add_trace(go.Scatter(
                x=part["tuned_params"], y=part["test_acc"], mode="markers", name=method if final else
                f"{method}, each round (not counted)", legendgroup=method, customdata=custom,
                error_y=dict(type="data", array=part["test_ci"].fillna(0), visible=final, thickness=1.2),
                marker=dict(size=11 if final else 10, color=color(i), symbol="circle" if final else "circle-open",
                            line=dict(width=1 if final else 2, color="#333" if final else color(i))),
                hovertemplate="<b>%{customdata[0]}</b><br>test accuracy %{y:.2%} (mean of %{customdata[1]} seed(s))"
                              "<br>val %{customdata[2]}<br>tuned %{x:,.0f} params (%{customdata[3]})<extra></extra>"))
        rounds = table[(table["method"] == method) & ~table["final"]]
        for _, path in rounds.groupby("config", sort=False):
            path = path.sort_values("round")
            fig.add_trace(go.Scatter(x=path["tuned_params"], y=path["test_acc"], mode="lines", showlegend=False,
                                     legendgroup=method, hoverinfo="skip",
                                     line=dict(color=color(i), width=1, dash="dot")))
    front = table[table["pareto"]].sort_values("tuned_params")
    fig.add_trace(go.Scatter(x=front["tuned_params"], y=front["test_acc"], mode="lines", name="Pareto front",
                             line=dict(color="#444", dash="dash", shape="hv"), hoverinfo="skip"))
    low, high = float(table["tuned_params"].min()), float(table["tuned_params"].max())
    ticks = log_ticks(low, high)
    fig.update_xaxes(type="log", title_text="tuned parameters (log scale)", tickvals=ticks,
                     ticktext=[f"{v:,.0f}" for v in ticks], range=[np.log10(low) - 0.15, np.log10(high) + 0.15],
                     minor=dict(showgrid=False))
    errors = table["test_ci"].fillna(0)
    y_range = zoomed_range(pd.concat([table["test_acc"] - errors, table["test_acc"] + errors]))
    values, labels = percent_ticks(*y_range)
    fig.update_yaxes(title_text="test accuracy", range=y_range, tickvals=values, ticktext=labels)
    # the legend under the axis: four or five entries beside a long title would cover it
    fig = layout(fig, title, height=520, legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0.0))
    fig.update_layout(margin=dict(b=110))
    return fig


def parallel_coordinates(rows: pd.DataFrame, settings: Sequence[str], title: str = "Settings against accuracy") -> go.Figure:
    """One line per finished trial through its swept settings to its validation and test accuracy."""
    done = rows[rows["test_acc"].notna()] if not rows.empty else rows
    if done.empty:
        return empty_figure("no finished trials yet", title)
    dims = []
    methods = _methods_in(done)
    dims.append(dict(label="method", values=done["method"].map(methods.index), tickvals=list(range(len(methods))),
                     ticktext=methods))
    for name in settings:
        column = done[name] if name in done else pd.Series(dtype=float)
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().all() and len(numeric):
            log = numeric.min() > 0 and numeric.max() / numeric.min() >= 100
            dims.append(dict(label=f"log10 {name}" if log else name, values=np.log10(numeric) if log else numeric))
        else:
            text = column.map(lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            names = sorted(text.unique())
            dims.append(dict(label=name, values=text.map(names.index), tickvals=list(range(len(names))),
                             ticktext=names))
    dims += [dict(label="val acc", values=done["val_acc"], range=[0, 1]),
             dict(label="test acc", values=done["test_acc"], range=[0, 1])]
    fig = go.Figure(go.Parcoords(line=dict(color=done["test_acc"], colorscale="Viridis", showscale=True,
                                           colorbar=dict(title="test acc")), dimensions=dims))
    return layout(fig, title, height=420)
