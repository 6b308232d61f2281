"""Pruning: what each round cost and kept."""

import streamlit as st

from e2vpt import charts
from e2vpt.analysis.pruning_views import load_pruning, pruning_trajectory, selection_note
from ui.current_run import current_run, run_banner
from ui.errors import user_errors
from ui.figures import show_chart

st.title("Pruning")
st.markdown("E2VPT prunes prompts in rounds and retrains after each. Here: how accuracy and the number of tuned "
            "parameters move from round to round, how many prompt tokens each layer keeps, and when each prompt "
            "died. A good run loses parameters without losing accuracy.")

run = current_run()
run_banner(run, needs_done="The trajectory grows with every finished round")

with user_errors():
    record = load_pruning(run.path)
    trajectory = pruning_trajectory(run.path)
    n_rounds = len(trajectory["rounds"]) - 1
    if n_rounds == 0:
        st.info(f"This run ({record.get('method')}) has no pruning rounds (yet): only round 0, the trained model.")
    show_chart(charts.trajectory_figure(trajectory["rounds"], selected_round=record.get("selected_round")),
               trajectory["rounds"], f"{run.id}-trajectory", key="trajectory")
    note = selection_note(run.path)
    if note:
        st.caption(note)
    left, right = st.columns(2)
    with left:
        show_chart(charts.layer_fraction_figure(trajectory["layers"]), trajectory["layers"],
                   f"{run.id}-kept-per-layer", key="layers")
    with right:
        show_chart(charts.lifetime_figure(trajectory["lifetimes"], n_rounds), trajectory["lifetimes"],
                   f"{run.id}-lifetimes", key="lifetimes")
