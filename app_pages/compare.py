"""Compare: methods on the same data, accuracy against tuned parameters."""

import streamlit as st

from e2vpt import charts
from ui.current_run import runs
from ui.errors import user_errors
from ui.figures import show_chart

st.title("Compare")
st.markdown("Each point is a finished run: how accurate it is for how many parameters it tuned (log scale). "
            "Parameter-efficient methods sit on the left; the best ones are also high. Compare runs on the "
            "same dataset and backbone.")

with user_errors():
    every = runs()
    frame = charts.runs_frame(every)
    current = st.session_state.get("current_run")
    current_row = next((r for r in every if r["id"] == current), None)
    if frame.empty:
        st.info("No finished runs yet. Train a few methods on the same dataset (e.g. linear, vpt-deep and e2vpt "
                "on digits) and come back.", icon=":material/insights:")
        st.stop()
    preselected = [i for i in st.session_state.get("compare_ids", []) if i in set(frame["id"])]
    sweeps = sorted(frame["sweep"].dropna().unique())
    if sweeps:
        source = st.selectbox("Runs from", ["every run", *sweeps], key="compare_sweep",
                              format_func=lambda s: s if s == "every run" else f"sweep {s}",
                              help="A sweep's trials only (its frontier, averaged over seeds, is on **Sweeps**).")
        if source != "every run":
            frame = frame[frame["sweep"] == source]
            preselected = [i for i in preselected if i in set(frame["id"])]
    c1, c2 = st.columns(2)
    datasets = sorted(frame["dataset"].dropna().unique())
    own = current_row.get("dataset") if current_row else None  # the current run's data first
    default_ds = frame[frame["id"].isin(preselected)]["dataset"].iloc[0] if preselected else \
        (own if own in datasets else datasets[0])
    dataset = c1.selectbox("Dataset", datasets, index=datasets.index(default_ds))
    part = frame[frame["dataset"] == dataset]
    backbones = sorted(part["backbone"].dropna().unique())
    backbone = c2.selectbox("Backbone", backbones)
    part = part[part["backbone"] == backbone]
    chosen = st.multiselect("Runs", list(part["id"]), default=[i for i in preselected if i in set(part["id"])]
                            or list(part["id"]))
    part = part[part["id"].isin(chosen)]
    if current_row and current_row.get("dataset") == dataset and current not in set(frame["id"]):
        st.info(f"The current run `{current}` is not on the chart: it is {current_row.get('state')}, and only "
                "finished runs have a test accuracy to compare.", icon=":material/hourglass_empty:")
    table = charts.runs_table(part)
    show_chart(charts.accuracy_vs_params(part, title=f"Accuracy vs tuned parameters on {dataset} ({backbone})"),
               table, f"compare-{dataset}-{backbone}", key="compare")
    st.caption("The accuracy axis is zoomed to these runs: read differences from the numbers, not only the heights.")
    st.dataframe(table, hide_index=True, column_config={  # the run id stays in view when scrolled sideways
        "run": st.column_config.TextColumn("run", pinned=True),
        "tuned parameters": st.column_config.NumberColumn(format="localized")})
