"""The Poincaré-ball embeddings of a run's test images, their captions and metric tables (the Embeddings page)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import color, empty_figure, layout

# what `e2vpt.charts` offers from here
__all__ = ["CENTROID_KIND", "METRIC_NAMES", "NO_VALUE", "VIEWS", "comparison_frame", "embedding_caption",
           "embedding_frame", "embedding_scatter", "metrics_frame_from_report"]


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
    return layout(fig, title, height=height,
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
