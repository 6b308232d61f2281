"""Prompts: which prompt tokens and segments mattered, round by round."""

import streamlit as st

from e2vpt import charts
from e2vpt.analysis.pruning_views import importance_maps
from pages._common import current_run, run_banner, show_chart, through_app, user_errors

through_app()

st.title("Prompts")
st.markdown("Each cell is one visual prompt token in one layer, coloured by how much the loss reacts when it is "
            "masked (its importance). A pruning round removes the least important ones: **outlined** cells "
            "survive, **grey** ones are pruned. Look for layers that keep their prompts and layers that lose them.")

run = current_run()
run_banner(run, needs_done="Importance maps appear after the first training phase")

with user_errors():
    maps = importance_maps(run.path)
    rounds = [m["round"] for m in maps]
    if len(rounds) > 1:
        chosen = st.select_slider("Pruning round", rounds, value=rounds[-1] if len(rounds) < 3 else rounds[1],
                                  help="Round 0 is the trained, unpruned model. Round r shows the scores that "
                                       "decided its pruning (computed on round r-1's model).")
    else:
        chosen = rounds[0]
        st.caption("This run has a single round (no pruning): the map shows which prompts exist.")
    m = next(x for x in maps if x["round"] == chosen)
    normalised = st.toggle("Normalise scores within the round", value=True,
                           help=m.get("normalisation") or "scores divided by the round's largest score",
                           disabled=m.get("token_scores_normalised") is None)
    show_chart(charts.importance_heatmap(m, normalised=normalised), charts.importance_frame(m),
               f"{run.id}-importance-round-{chosen}", key="importance")

    if m.get("segment_mask") is not None:
        st.subheader("Segments of one layer")
        st.markdown("Each surviving token is split into segments (groups of channels); segment pruning removes "
                    "the least important segments inside the tokens that survived.")
        layers = m["segment_mask"].shape[0]
        layer = st.slider("Layer", 1, layers, 1, disabled=layers < 2) if layers > 1 else 1
        show_chart(charts.segment_heatmap(m, layer - 1), charts.segment_frame(m, layer - 1),
                   f"{run.id}-segments-round-{chosen}-layer-{layer}", key="segments")
