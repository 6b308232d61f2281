"""Embeddings: how the classes sit in feature space, in the Poincaré disk and in Euclidean space."""

import inspect

import streamlit as st

from e2vpt import charts, launch
from e2vpt import runs as run_store
from e2vpt.analysis.embeddings import compare_run_embeddings, run_embedding_report
from pages._common import current_run, run_banner, runs, show_chart, through_app, user_errors

through_app()

st.title("Embeddings")
st.markdown("The final [CLS] features of the test images, mapped into the Poincaré disk (hyperbolic space: "
            "distances grow quickly towards the circle, so tight, far-apart class clusters near the edge mean "
            "well-separated classes). Crosses mark class centroids. Switch to the Euclidean view for contrast, "
            "or put a second run beside this one.")

run = current_run()
status = run_banner(run, needs_done="Embeddings need the trained weights")

FROZEN = "__frozen__"
DEFAULTS = {name: p.default for name, p in inspect.signature(run_embedding_report).parameters.items()}


@st.cache_data(show_spinner=False, max_entries=32)
def report(path: str, stamp: float, frozen: bool, **params) -> dict:
    return run_embedding_report(path, frozen=frozen, **params)


@st.cache_data(show_spinner=False, max_entries=16)
def comparison(path_a: str, path_b: str, stamps: tuple, **params) -> dict:
    return compare_run_embeddings(path_a, path_b, **params)


def stamp(path) -> float:
    weights = path / "weights.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


if not run.weights_file.is_file():
    st.info("This run has no final weights " + ("yet, so there is nothing to embed. Come back when it is done."
                                                if status.get("state") != "done" else
                                                "(weights.safetensors is missing), so there is nothing to embed."),
            icon=":material/hourglass_empty:")
    st.stop()

views = {"Poincaré disk (hyperbolic PCA)": "hpca", "Poincaré disk (UMAP)": "umap", "Euclidean (PCA)": "euclid"}
c1, c2 = st.columns([2, 1])
view_label = c1.radio("View", list(views), horizontal=True,
                      help="Hyperbolic vs Euclidean: the same features, two geometries.")
others = [r for r in runs() if r["state"] == "done" and r["id"] != run.id]
partner_options = ["", FROZEN] + [r["id"] for r in others]
partner = c2.selectbox("Side by side with", partner_options,
                       format_func=lambda i: {"": "(nothing)", FROZEN: "the frozen backbone (no prompts)"}.get(i, i))
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

with user_errors():
    launch.check_run_data(run)
    with st.spinner("Embedding the images and measuring the geometry (cached after the first time)…"):
        main = report(str(run.path), stamp(run.path), False, **params)
        side = None
        if partner == FROZEN:
            side = ("frozen backbone", report(str(run.path), stamp(run.path), True, **params))
        elif partner:
            other = run_store.open_run(partner)
            launch.check_run_data(other)
            side = (partner, report(str(other.path), stamp(other.path), False, **params))
    if side is None:
        show_chart(charts.embedding_scatter(main, view, title=f"{run.id}: {view_label}"),
                   charts.embedding_frame(main, view), f"{run.id}-{view}", key="emb-main")
        st.subheader("Separability")
        st.dataframe(charts.metrics_frame_from_report(main), hide_index=True)
    else:
        left, right = st.columns(2)
        with left:
            show_chart(charts.embedding_scatter(main, view, title=f"{run.id}", height=480),
                       charts.embedding_frame(main, view), f"{run.id}-{view}", key="emb-left")
        with right:
            show_chart(charts.embedding_scatter(side[1], view, title=side[0], height=480),
                       charts.embedding_frame(side[1], view), f"{side[0]}-{view}", key="emb-right")
        st.subheader("Separability, side by side")
        if partner == FROZEN:
            from e2vpt.analysis import compare_embeddings

            table = compare_embeddings(main, side[1], names=(run.id, "frozen backbone"))
        else:
            table = comparison(str(run.path), str(other.path), (stamp(run.path), stamp(other.path)), **{
                k: v for k, v in params.items() if k != "umap"})
        st.markdown(table.get("summary", ""))
        frame = charts.comparison_frame(table)
        st.dataframe(frame, hide_index=True)
        st.download_button("Comparison (CSV)", frame.to_csv(index=False), file_name=f"{run.id}-vs-{side[0]}.csv",
                           mime="text/csv", on_click="ignore", icon=":material/table:")
