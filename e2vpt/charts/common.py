"""What every chart shares: colours, the layout, an empty figure that says why, and the downloads (HTML, CSV)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ..methods import METHODS

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
           "#e6550d", "#31a354", "#756bb1", "#636363")
PRUNED_GREY = "#c9c9c9"
SURVIVED = "#2ca02c"  # green: alive, never read as dead
OUTLINE = "#111111"
METHOD_ORDER = METHODS  # the registry's order: fewest tuned parameters first, E2VPT last

# what `e2vpt.charts` offers from here
__all__ = ["METHOD_ORDER", "OUTLINE", "PALETTE", "PRUNED_GREY", "SURVIVED", "color", "empty_figure", "figure_html",
           "frame_csv", "layout"]


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def layout(fig: go.Figure, title: str, height: int = 420, **kwargs) -> go.Figure:
    kwargs.setdefault("legend", dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0))
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), height=height,
                      margin=dict(l=60, r=30, t=70, b=50), hovermode="closest", **kwargs)
    return fig


def empty_figure(message: str, title: str = "", height: int = 300) -> go.Figure:
    """A blank chart with a centred message (e.g. "no epochs finished yet")."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, title, height=height)


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of the figure (plotly.js embedded: it opens offline)."""
    return fig.to_html(full_html=True, include_plotlyjs=True, config={"displaylogo": False})


def frame_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)
