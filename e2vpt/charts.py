"""Plotly figures of runs: the app's charts, equally usable from a notebook.

Each builder takes plain data (metrics records, a DataFrame, one importance map, an embedding
report) and returns a `plotly.graph_objects.Figure` with hover details; the matching `*_frame`
functions give the table behind a chart, which the app offers as CSV. No Streamlit and no training
or analysis math here: the numbers come from `e2vpt.runs` and `e2vpt.analysis`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
           "#e6550d", "#31a354", "#756bb1", "#636363")
PRUNED_GREY = "#c9c9c9"
SURVIVED = "#2ca02c"  # green: alive, never read as dead
OUTLINE = "#111111"
METHOD_ORDER = ("linear", "full", "vpt-shallow", "vpt-deep", "e2vpt-noprune", "e2vpt")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _layout(fig: go.Figure, title: str, height: int = 420, **kwargs) -> go.Figure:
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
    return _layout(fig, title, height=height)


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of the figure (plotly.js embedded: it opens offline)."""
    return fig.to_html(full_html=True, include_plotlyjs=True, config={"displaylogo": False})


def frame_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)


# --------------------------------------------------------------------------------------------------
# training curves
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
    _layout(fig, title, height=420)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="center", x=0.5),
                      margin=dict(b=90))
    return fig


# --------------------------------------------------------------------------------------------------
# importance maps
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
    return _layout(fig, title, height=height or max(320, 80 + 28 * rows))


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


# --------------------------------------------------------------------------------------------------
# pruning trajectory
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
    return _layout(fig, title, height=520)


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
    return _layout(fig, title)


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
    return _layout(fig, title, height=max(320, 60 + 28 * n_layers))


# --------------------------------------------------------------------------------------------------
# attention: what a prompt looks at (e2vpt.analysis.attention)
FATE_MARKS = {"pruned next": "x", "pruned earlier": "line-ew"}


def attention_prompt_map(result: dict, title: str | None = None) -> go.Figure:
    """How much of its attention [CLS] gives each visual prompt token (left: layers x tokens) and
    each key-value prompt (right), in percent; tokens the next decision pruned carry a cross, tokens
    no longer in the sequence are blank."""
    layers = result.get("layers") or []
    p = max([max(layer["tokens"], default=0) for layer in layers] or [0])
    kv = int(result.get("kv_len") or 0)
    title = title or (f"[CLS]'s attention to each prompt, in %: image {result.get('index')} "
                      f"({result.get('class_name')}), model after round {result.get('round')}")
    if not layers or (p == 0 and kv == 0):
        return empty_figure("this run has no prompts to attend to", title)
    rows = [f"layer {layer['layer']}" for layer in layers]
    visual = np.full((len(layers), max(p, 1)), np.nan)
    status = np.full((len(layers), max(p, 1)), "not in the sequence (pruned before)", dtype=object)
    for r, layer in enumerate(layers):
        for token, share, fate in zip(layer["tokens"], layer["cls_to_prompt"], layer["status"]):
            visual[r, token - 1], status[r, token - 1] = 100 * share, fate
    columns = 2 if kv else 1
    fig = make_subplots(rows=1, cols=columns, column_widths=[max(p, 1), max(2, kv)][:columns] if kv else None,
                        subplot_titles=["visual prompt tokens", "key-value prompts"][:columns] if p and kv else None,
                        horizontal_spacing=0.08)
    top = float(np.nanmax([np.nanmax(visual) if p else 0.0] + [100 * max(layer["cls_to_kv"] or [0.0])
                                                                 for layer in layers]) or 1.0)
    if p:
        fig.add_trace(go.Heatmap(
            z=visual, x=list(range(1, p + 1)), y=rows, customdata=status, colorscale="Viridis", zmin=0, zmax=top,
            colorbar=dict(title="% of [CLS]'s attention"), hoverongaps=False, xgap=1, ygap=1,
            hovertemplate="%{y}, token %{x}: %{z:.2f}% of [CLS]'s attention<br>%{customdata}<extra></extra>"),
            row=1, col=1)
        for fate, symbol in FATE_MARKS.items():
            where = np.argwhere(status == fate)
            if len(where):
                fig.add_trace(go.Scatter(
                    x=where[:, 1] + 1, y=[rows[i] for i in where[:, 0]], mode="markers", name=fate,
                    marker=dict(symbol=symbol, size=11, color="#d62728", line=dict(width=2, color="#d62728")),
                    hoverinfo="skip"), row=1, col=1)
        fig.update_xaxes(title_text="token", dtick=1 if p <= 30 else None, row=1, col=1)
    if kv:
        shares = np.array([[100 * v for v in layer["cls_to_kv"]] for layer in layers])
        fig.add_trace(go.Heatmap(
            z=shares, x=list(range(1, kv + 1)), y=rows, colorscale="Viridis", zmin=0, zmax=top, showscale=not p,
            xgap=1, ygap=1, hovertemplate="%{y}, key-value prompt %{x}: %{z:.2f}% of [CLS]'s attention"
                                          "<extra></extra>"), row=1, col=columns)
        fig.update_xaxes(title_text="key-value prompt", dtick=1, row=1, col=columns)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(300, 90 + 34 * len(layers)))


def _panel_title(layer: dict, position: int) -> str:
    share = 100 * layer["cls_to_prompt"][position]
    return f"token {layer['tokens'][position]} ({layer['status'][position]}) · [CLS] {share:.1f}%"


def attention_over_image(image: np.ndarray, result: dict, layer_number: int, max_tokens: int = 8,
                         title: str | None = None) -> go.Figure:
    """One layer's attention drawn over the image: where [CLS] looks, where each visual prompt token
    looks (the most attended-by-[CLS] kept tokens first, then those pruned next), and which patches
    read from each key-value prompt. Each panel is scaled to its own maximum (its hover gives %)."""
    layer = next((entry for entry in result.get("layers") or [] if entry["layer"] == layer_number), None)
    title = title or f"Layer {layer_number}: where attention goes on image {result.get('index')}"
    if layer is None:
        return empty_figure(f"no layer {layer_number} in this result", title)
    rows_g, cols_g = result["grid"]
    height, width = image.shape[:2]
    order = sorted(range(len(layer["tokens"])), key=lambda i: (layer["status"][i] != "kept", -layer["cls_to_prompt"][i]))
    kept = [i for i in order if layer["status"][i] == "kept"][:max_tokens]
    others = [i for i in order if layer["status"][i] != "kept"][:max(0, max_tokens - len(kept))] or \
        [i for i in order if layer["status"][i] != "kept"][:2]
    panels = [("[CLS] looks at", layer["cls_to_patches"])]
    panels += [(_panel_title(layer, i), layer["prompt_to_patches"][i]) for i in kept + others]
    panels += [(f"patches reading key-value prompt {m + 1}", layer["kv_from_patches"][m])
               for m in range(len(layer["kv_from_patches"]))]
    columns = min(4, len(panels))
    n_rows = math.ceil(len(panels) / columns)
    fig = make_subplots(rows=n_rows, cols=columns, subplot_titles=[name for name, _ in panels],
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    for k, (name, values) in enumerate(panels):
        r, c = k // columns + 1, k % columns + 1
        grid = np.asarray(values, dtype=np.float64).reshape(rows_g, cols_g)
        peak = float(grid.max()) if grid.max() > 0 else 1.0
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=r, col=c)
        fig.add_trace(go.Heatmap(  # colour: share of this panel's brightest patch, so one scale reads every panel
            z=100 * grid / peak, customdata=100 * grid, x0=(width / cols_g - 1) / 2, dx=width / cols_g,
            y0=(height / rows_g - 1) / 2, dy=height / rows_g, colorscale="Inferno", opacity=0.6, zmin=0, zmax=100,
            showscale=k == 0, colorbar=dict(title=dict(text="% of the panel's<br>brightest patch", side="right"),
                                            len=0.6, thickness=12),
            hovertemplate=f"{name}<br>this patch: %{{customdata:.2f}}% of the attention "
                          f"(%{{z:.0f}}% of the panel's brightest)<extra></extra>"), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for k in range(len(panels)):  # every panel square, each y axis tied to its own x axis
        fig.update_yaxes(scaleanchor=f"x{k + 1 if k else ''}", row=k // columns + 1, col=k % columns + 1)
    fig.update_annotations(font_size=13)
    return _layout(fig, title, height=80 + 240 * n_rows)


# --------------------------------------------------------------------------------------------------
# embeddings
def _class_names(report: dict) -> dict:
    names = report.get("class_names")
    classes = report.get("classes") or sorted(set(report.get("labels") or []))
    if isinstance(names, dict):
        return {c: str(names.get(c, names.get(str(c), c))) for c in classes}
    if isinstance(names, (list, tuple)):
        return {c: str(names[c]) if isinstance(c, int) and 0 <= c < len(names) else str(c) for c in classes}
    return {c: str(c) for c in classes}


VIEWS = {"hpca": ("points_hpca", "hyperbolic PCA"), "umap": ("points_umap", "UMAP (hyperbolic distances)"),
         "euclid": ("points_euclid", "Euclidean PCA")}


def embedding_frame(report: dict, view: str = "hpca") -> pd.DataFrame:
    """The plotted points of one view: x, y, label, class name, distance from the centre."""
    key = VIEWS[view][0]
    xy = report.get(key)
    if xy is None:
        return pd.DataFrame(columns=["point", "x", "y", "label", "class", "norm"])
    xy = np.asarray(xy, dtype=np.float64)
    labels = list(report.get("labels") or [])
    names = _class_names(report)
    indices = report.get("indices") or list(range(len(labels)))
    return pd.DataFrame({"point": indices, "x": xy[:, 0], "y": xy[:, 1], "label": labels,
                         "class": [names.get(label, str(label)) for label in labels],
                         "norm": np.linalg.norm(xy, axis=1)})


CENTROID_KIND = {"hpca": "Fréchet mean (hyperbolic centre)", "umap": "medoid (the class's most central image)",
                 "euclid": "mean"}


def embedding_scatter(report: dict, view: str = "hpca", title: str | None = None, height: int = 560) -> go.Figure:
    """Points by class with class centres (large crosses); each point carries its image index, so a
    click (the app) can show the image. Drawn in SVG: a report holds at most `max_points` points (1,000
    by default), and SVG points take clicks in every browser, WebGL-less ones included. The legend
    sits under the plot, where it cannot run into the title however many classes there are.

    Disk views (`hpca`, `umap`) draw the boundary of the Poincaré disk (the unit circle) with a
    square aspect; the `euclid` view is the Euclidean contrast.
    """
    key, view_name = VIEWS[view]
    title = title or view_name
    frame = embedding_frame(report, view)
    if frame.empty:
        return empty_figure(f"no {view_name} view in this report", title)
    disk = view != "euclid"
    classes = report.get("classes") or sorted(frame["label"].unique())
    names = _class_names(report)
    cents = (report.get("centroids") or {}).get(view)
    radius = (report.get("centroids") or {}).get("radius")
    fig = go.Figure()
    if disk:
        fig.add_shape(type="circle", x0=-1, y0=-1, x1=1, y1=1, line=dict(color="#444", width=1.5), layer="below")
    for i, c in enumerate(classes):
        part = frame[frame["label"] == c]
        fig.add_trace(go.Scatter(  # SVG, not WebGL: at most `max_points` points, and a click works everywhere
            x=part["x"], y=part["y"], mode="markers", name=names.get(c, str(c)), legendgroup=str(c),
            marker=dict(size=5, color=color(i), opacity=0.75),
            # plain lists: a numpy array travels as a typed array, and a clicked point's customdata then
            # comes back to Streamlit as {"0": ..., "1": ...} instead of [image, radius]
            customdata=np.stack([part["point"], part["norm"]], axis=-1).tolist(),
            hovertemplate=f"<b>{names.get(c, c)}</b> · image %{{customdata[0]}}"
                          f"<br>{'radius in the disk (1 = the circle)' if disk else 'distance from centre'} "
                          "%{customdata[1]:.3f}<br>click to see the image<extra></extra>"))
        if cents is not None and i < len(cents):
            extra = f"<br>hyperbolic distance of the class's Fréchet mean from the origin {radius[i]:.3f}" \
                if radius is not None and i < len(radius) and radius[i] is not None else ""
            fig.add_trace(go.Scatter(
                x=[cents[i][0]], y=[cents[i][1]], mode="markers", legendgroup=str(c), showlegend=False,
                marker=dict(symbol="x-thin", size=18, line=dict(width=3, color=color(i))),
                hovertemplate=f"<b>{names.get(c, c)}</b>: {CENTROID_KIND[view]}{extra}<extra></extra>"))
    if disk:
        fig.update_xaxes(range=[-1.05, 1.05], zeroline=False, showgrid=False, visible=False)
        fig.update_yaxes(range=[-1.05, 1.05], zeroline=False, showgrid=False, visible=False,
                         scaleanchor="x", scaleratio=1)
        fig.update_layout(plot_bgcolor="rgba(0,0,0,0)")
    else:
        fig.update_xaxes(title_text="PC 1", zeroline=False)
        fig.update_yaxes(title_text="PC 2", zeroline=False, scaleanchor="x", scaleratio=1)
    return _layout(fig, title, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0.0, title_text="class"))


def _metric(report: dict, name: str) -> float | None:
    return next((m.get("value") for m in report.get("metrics") or [] if m.get("name") == name), None)


def embedding_caption(report: dict, view: str = "hpca") -> str:
    """What the chart of one report shows, in numbers read from it (never a claim it does not bear
    out): where the points sit in the disk, what the crosses are, and how separated the classes are."""
    key, _ = VIEWS[view]
    xy = report.get(key)
    if not xy:
        return ""
    radii = np.linalg.norm(np.asarray(xy, dtype=np.float64), axis=1)
    params = report.get("params") or {}
    median, far = float(np.median(radii)), float(radii.max())
    parts = []
    if view == "hpca":
        flat = far < 0.7
        parts.append(f"Half the {len(radii)} images sit within {median:.2f} of the disk's radius from its centre, the "
                     f"farthest at {far:.2f}. " + (
                         f"At curvature c = {params.get('c')} the points stay in the ball's nearly flat middle, "
                         "where hyperbolic and Euclidean distances almost agree: raise c (Analysis settings) to "
                         "push them towards the circle, where distances grow fastest." if flat else
                         "Near the circle hyperbolic distances grow fast, so points close together there on "
                         "screen can still be far apart."))
    elif view == "umap":
        parts.append("UMAP lays out the hyperbolic distances between images in the disk; it keeps neighbours "
                     "together but not distances or radii, so read clusters, not positions.")
    else:
        parts.append("The first two principal components of the features, in Euclidean space: the contrast with "
                     "the disk views.")
    parts.append(f"Crosses: each class's {CENTROID_KIND[view]}.")
    sil = _metric(report, "silhouette_hyperbolic" if view != "euclid" else "silhouette_euclidean")
    knn = _metric(report, "knn_accuracy_hyperbolic" if view != "euclid" else "knn_accuracy_euclidean")
    if sil is not None:
        word = "well separated" if sil > 0.5 else "separated but touching" if sil > 0.25 else "overlapping"
        parts.append(f"Silhouette {sil:.2f} (1 = tight, far-apart classes; 0 = overlap): the classes are {word} "
                     "in the full feature space" + (f"; {params.get('k', 5)} nearest neighbours name the class of "
                                                    f"{100 * knn:.1f}% of held-out images." if knn is not None
                                                    else "."))
    parts.append("Click a point to see its image.")
    return " ".join(parts)


METRIC_NAMES = {"silhouette_hyperbolic": "silhouette (hyperbolic)", "silhouette_euclidean": "silhouette (Euclidean)",
                "knn_accuracy_hyperbolic": "k-NN accuracy (hyperbolic)",
                "knn_accuracy_euclidean": "k-NN accuracy (Euclidean)",
                "davies_bouldin_tangent": "Davies-Bouldin (tangent space)",
                "delta_rel_hyperbolic": "Gromov δ_rel (hyperbolic)", "delta_rel_euclidean": "Gromov δ_rel (Euclidean)",
                "curvature_estimate": "suggested curvature c"}


# an empty cell of a table the page renders with st.table, whose cells are markdown: a bare "-" would be a
# list bullet
NO_VALUE = "n/a"


def metrics_frame_from_report(report: dict) -> pd.DataFrame:
    """The separability metric table of an embedding report, in words."""
    rows = report.get("metrics") or []
    return pd.DataFrame([{"metric": METRIC_NAMES.get(m.get("name"), m.get("name")), "value": m.get("value"),
                          "better": {True: "higher", False: "lower"}.get(m.get("higher_is_better"), NO_VALUE),
                          "meaning": m.get("meaning")} for m in rows],
                        columns=["metric", "value", "better", "meaning"])


def _interval_text(interval) -> str:
    return NO_VALUE if not interval else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"


def comparison_frame(comparison: dict) -> pd.DataFrame:
    """`compare_embeddings`/`compare_run_embeddings` rows as a table: both values, the difference
    (second - first) with its 95 % bootstrap interval, the verdict, and what the metric means."""
    names = comparison.get("names") or ["a", "b"]
    rows = comparison.get("rows") or []
    diff = f"{names[1]} − {names[0]}"
    return pd.DataFrame([{"metric": METRIC_NAMES.get(r.get("name"), r.get("name")), names[0]: r.get(names[0]),
                          names[1]: r.get(names[1]), diff: r.get("difference"),
                          "95% interval": _interval_text(r.get("interval")), "verdict": r.get("verdict"),
                          "meaning": r.get("meaning")} for r in rows],
                        columns=["metric", names[0], names[1], diff, "95% interval", "verdict", "meaning"])


# --------------------------------------------------------------------------------------------------
# comparison of methods
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
    return _layout(fig, title, height=460)


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


# --------------------------------------------------------------------------------------------------
# sweeps
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
    fig = _layout(fig, title, height=520, legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0.0))
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
    return _layout(fig, title, height=420)


# --------------------------------------------------------------------------------------------------
# the pruning criterion against reality (e2vpt.analysis.ablation)


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
    return _layout(fig, title, height=460)
