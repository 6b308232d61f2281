"""Embeddings: how the classes sit in feature space, in the Poincaré disk and in Euclidean space."""

import inspect
from pathlib import Path

import streamlit as st

from e2vpt import charts, launch
from e2vpt import runs as run_store
from e2vpt.analysis.embeddings import compare_run_embeddings, run_embedding_report, run_label, split_images
from e2vpt.runs import RunDir
from ui.current_run import current_run, run_banner, run_splits, runs
from ui.errors import user_errors
from ui.figures import show_chart

st.title("Embeddings")
st.markdown("Each dot is one test image: the features the classifier reads (the final [CLS] token), mapped into "
            "the Poincaré disk, a model of hyperbolic space whose distances grow without bound towards the circle. "
            "Classes that form tight groups far apart are easy to tell apart. Below each chart, what it shows, read "
            "from its numbers; switch to the Euclidean view for contrast, or put a second run or the frozen "
            "backbone beside this one.")

run = current_run()
status = run_banner(run, needs_done="Embeddings need the trained weights")

FROZEN = "__frozen__"
DEFAULTS = {name: p.default for name, p in inspect.signature(run_embedding_report).parameters.items()}
SHOWN_IMAGES = 12


@st.cache_data(show_spinner=False, max_entries=32)
def report(path: str, stamp: float, frozen: bool, **params) -> dict:
    return run_embedding_report(path, frozen=frozen, **params)


@st.cache_data(show_spinner=False, max_entries=16)
def comparison(path_a: str, path_b: str | None, stamps: tuple, **params) -> dict:
    return compare_run_embeddings(path_a, path_b, **params)


def stamp(path) -> float:
    weights = path / "weights.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


def show_selected_images(event, run_path, split: str, frame) -> None:
    """The images of the points clicked or box-selected in a chart (plotly hover labels are text only)."""
    points = [p for p in ((event or {}).get("selection") or {}).get("points", []) if p.get("customdata")]
    if not points:
        return
    rows = [int(p["customdata"][0]) for p in points][:SHOWN_IMAGES]
    with st.spinner("Loading the images…"):
        images = split_images(run_splits(run_path), split, rows)
    classes = dict(zip(frame["point"], frame["class"]))
    more = f" (the first {SHOWN_IMAGES} of {len(points)})" if len(points) > SHOWN_IMAGES else ""
    st.markdown(f"**Selected images{more}**, as the model saw them:")
    st.image(list(images), width=96, caption=[f"{classes.get(r, '?')} · image {r}" for r in rows])


if not run.weights_file.is_file():
    if status.get("state") == "done":
        message = "(weights.safetensors is missing), so there is nothing to embed."
    elif status.get("state") in ("running", "queued"):
        message = "yet, so there is nothing to embed. Come back when it is done."
    else:
        message = f"(it ended {status.get('state') or 'without finishing'}), so there is nothing to embed."
    st.info("This run has no final weights " + message, icon=":material/hourglass_empty:")
    st.stop()

views = {"Poincaré disk (hyperbolic PCA)": "hpca", "Poincaré disk (UMAP)": "umap", "Euclidean (PCA)": "euclid"}
c1, c2 = st.columns([2, 1])
view_label = c1.radio("View", list(views), horizontal=True,
                      help="Hyperbolic vs Euclidean: the same features, two geometries.")
# partners: finished runs on the same data (the comparison pairs the same images) that kept their weights
# (an evidence file's trials, for one, have none)
own_dataset = run.config().get("dataset")
others = [r for r in runs() if r["state"] == "done" and r["id"] != run.id and r.get("dataset") == own_dataset
          and RunDir(Path(r["path"])).weights_file.is_file()]
partner_options = ["", FROZEN] + [r["id"] for r in others]
methods = {r["id"]: r.get("method") or "" for r in others}
partner = c2.selectbox("Side by side with", partner_options,
                       format_func=lambda i: {"": "(nothing)", FROZEN: "the frozen backbone (no prompts)"}.get(
                           i, f"{methods.get(i, '')} · {i}"))
with st.expander("Analysis settings"):
    a, b, c, d = st.columns(4)
    split = a.radio("Images", ["test", "val"], horizontal=True)
    curvature = b.number_input("Curvature c", min_value=0.01, max_value=10.0, value=float(DEFAULTS["c"]), step=0.05,
                               help="The ball has curvature -c; larger c pushes points towards the boundary.")
    clip_r = c.number_input("Feature clipping radius", min_value=0.1, max_value=20.0,
                            value=float(DEFAULTS["clip_r"] or 2.3), step=0.1)
    max_points = d.number_input("Points at most", min_value=100, max_value=5000,
                                value=int(DEFAULTS["max_points"]), step=100)
view = views[view_label]
params = dict(split=split, c=float(curvature), clip_r=float(clip_r), umap=view == "umap", max_points=int(max_points))
label = run_label(run.path)

with user_errors():
    launch.check_run_data(run)
    with st.spinner("Embedding the images and measuring the geometry (cached after the first time)…"):
        main = report(str(run.path), stamp(run.path), False, **params)
        side, other = None, None
        if partner == FROZEN:
            side = ("frozen backbone (no prompts)", report(str(run.path), stamp(run.path), True, **params), run)
        elif partner:
            other = run_store.open_run(partner)
            launch.check_run_data(other)
            side = (f"{run_label(other.path)} · {other.id}", report(str(other.path), stamp(other.path), False,
                                                                     **params), other)
    if side is None:
        frame = charts.embedding_frame(main, view)
        event = show_chart(charts.embedding_scatter(main, view, title=f"{label} · {run.id}: {view_label}"),
                           frame, f"{run.id}-{view}", key="emb-main", selectable=True)
        st.caption(charts.embedding_caption(main, view))
        show_selected_images(event, run.path, split, frame)
        st.subheader("Separability")
        st.table(charts.metrics_frame_from_report(main).round(4))
    else:
        left, right = st.columns(2)
        for column, (title, shown, shown_run), key in zip(
                (left, right), ((f"{label} · {run.id}", main, run), side), ("emb-left", "emb-right")):
            with column:
                frame = charts.embedding_frame(shown, view)
                event = show_chart(charts.embedding_scatter(shown, view, title=title, height=520), frame,
                                   f"{title}-{view}", key=key, selectable=True)
                st.caption(charts.embedding_caption(shown, view))
                show_selected_images(event, shown_run.path, split, frame)
        st.subheader("Separability, side by side")
        with st.spinner("Measuring each difference with 1,000 paired resamples of the images…"):
            table = comparison(str(run.path), None if other is None else str(other.path),
                               (stamp(run.path), 0.0 if other is None else stamp(other.path)),
                               **{k: v for k, v in params.items() if k != "umap"})
        st.markdown(table.get("summary", ""))
        st.caption("Each difference comes with a 95 % interval from resampling the images (the same draw for both "
                   "sides): \"no clear difference\" when the interval contains 0, however the values look. A clear "
                   "difference can still be a small one, and the intervals resample images, not training runs: "
                   "another seed moves the values more than they show.")
        frame = charts.comparison_frame(table)
        st.table(frame.round(4))
        st.download_button("Comparison (CSV)", frame.to_csv(index=False), file_name=f"{run.id}-vs-{side[0]}.csv",
                           mime="text/csv", on_click="ignore", icon=":material/table:")
