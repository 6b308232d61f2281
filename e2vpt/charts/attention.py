"""What a prompt looks at (`e2vpt.analysis.attention`): per-prompt maps and overlays on an image (the Prompts page)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import empty_figure, layout

FATE_MARKS = {"pruned next": "x", "pruned earlier": "line-ew"}

# what `e2vpt.charts` offers from here
__all__ = ["FATE_MARKS", "attention_over_image", "attention_prompt_map"]


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
    return layout(fig, title, height=max(300, 90 + 34 * len(layers)))


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
    return layout(fig, title, height=80 + 240 * n_rows)
