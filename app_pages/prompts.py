"""Prompts: which prompt tokens and segments mattered, round by round."""

import streamlit as st

from e2vpt import charts
from e2vpt.analysis.ablation import cached_ablation, estimate_seconds, prompt_ablation
from e2vpt.analysis.attention import prompt_attention
from e2vpt.analysis.embeddings import split_images
from e2vpt.analysis.pruning_views import importance_maps, score_criterion
from e2vpt.config import prompts_trained
from e2vpt.errors import RunDirError
from e2vpt.methods import METHODS, method_named
from ui.current_run import current_run, run_banner, run_splits
from ui.errors import user_errors
from ui.figures import show_chart

st.title("Prompts")
run = current_run()
run_banner(run, needs_done="Importance maps appear after the first training phase")
try:
    settings = run.config()
except RunDirError:  # an unreadable config.json: the maps still show, without the rule's numbers
    settings = {}
ratio = settings.get("prune_ratio")
share = f"{ratio:.0%}" if isinstance(ratio, (int, float)) else "a share"
if settings.get("mask_scope") == "shared":
    rule = (f"Position k is scored by its scores summed over the layers, and the lowest {share} of the surviving "
            "positions are pruned in every layer at once.")
else:
    rule = (f"Scores are ranked **globally, across all layers together**, and the lowest {share} of the surviving "
            "tokens are removed (“Tokens pruned per round” on **Train**): a layer whose tokens all score low can "
            "lose every one.")
criterion = score_criterion(settings)
st.markdown("Each cell is one visual prompt token in one layer, coloured by its importance score (how much the loss "
            "reacts when the token, or its segments, are masked). **Outlined** cells survive, **red** ones are "
            "pruned in this round, **light grey** ones were pruned in an earlier round. " + rule)
st.markdown(criterion["sentence"])

with user_errors():
    maps = importance_maps(run.path)
    rounds = [m["round"] for m in maps]
    if len(rounds) > 1:
        chosen = st.select_slider("Pruning round", rounds, value=rounds[-1] if len(rounds) < 3 else rounds[1],
                                  help="Round 0 is the trained, unpruned model. Round r shows the scores that "
                                       "decided its pruning (computed on round r-1's model).")
    else:
        chosen = rounds[0]
        prunes = settings.get("method") in METHODS and method_named(settings["method"]).prune
        planned = settings.get("prune_rounds") or 0 if prunes else 0
        if planned and run.summary() is None:
            st.caption(f"Round 0 (the trained, unpruned model) is all this run has finished so far; its {planned} "
                       "pruning round(s) appear here as each one ends. The map shows which prompts exist.")
        else:
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

    st.subheader("Does the score tell the truth?")
    st.markdown(f"A token's score is an *estimate* of what removing it would cost ({criterion['token_name']}, on "
                "the training images). Here each token that was alive when the scores were computed is removed for "
                "real, alone, and the change in validation loss is measured; the rank correlation says whether the "
                "cheap estimate ranks tokens as reality does.")
    if chosen == 0 or m.get("token_scores") is None:
        st.caption("Pick a pruning round (1 or later) above to audit the decision it made.")
    else:
        audit = cached_ablation(run.path, chosen)
        passes, seconds = estimate_seconds(run.path, chosen)
        cost = f"about {seconds:.0f} s here" if seconds is not None else "time unknown: this run predates the timing"
        if audit is None:
            st.caption("Set “Audit the pruning when training ends” on **Train** to have it measured before class.")
        if audit is None and st.button(f"Measure round {chosen}'s decision ({passes} validation passes, {cost})",
                                       key="ablate", icon=":material/science:"):
            with st.spinner(f"Removing each token in turn and evaluating: {passes} passes, {cost}..."):
                audit = prompt_ablation(run.path, chosen)
        if audit is not None:
            show_chart(charts.ablation_scatter(audit, score_name=criterion["token_name"]), charts.ablation_frame(audit),
                       f"{run.id}-ablation-round-{chosen}", key="ablation")
            layer_rho = audit.get("layer_spearman")
            st.caption(f"Measured on {audit['images']} validation images from round {audit['model_round']}'s model "
                       f"(validation loss {audit['base_val_loss']:.4f}), in {audit['seconds']:.0f} s. Whole layers: "
                       + ("too few layers to rank." if layer_rho is None or layer_rho != layer_rho else
                          f"a layer's summed score against removing all its prompts, Spearman rho {layer_rho:+.2f}."))

    st.subheader("What a prompt looks at")
    state = max(chosen - 1, 0)
    st.markdown(f"Attention inside the model saved after round {state}, for one test image, averaged over heads: "
                "how much of its attention [CLS] (the token the classifier reads) gives each prompt, and where on the "
                "image each prompt token looks. Key-value prompts are only looked at: the maps show which patches "
                f"read from them. Tokens marked **pruned next** were removed by round {state + 1}'s decision.")
    method = settings.get("method")  # the prompts the method trains, not the settings it ignores
    if method not in METHODS or not any(prompts_trained(method, settings.get("prompt_len") or 0,
                                                             settings.get("kv_len") or 0)):
        st.caption("This run has no prompts to look at.")
    elif not run.round_file(state).is_file():
        st.caption(f"The model saved after round {state} is not in this run folder (yet): it is written when the "
                   "round's training ends.")
    else:
        splits = run_splits(run)
        a, b = st.columns([1, 2])
        index = a.number_input("Test image", min_value=0, max_value=len(splits.test) - 1, value=0, step=1,
                               key="attention_image")
        with st.spinner("Running the model on the image (cached in the run after the first time)…"):
            looked = prompt_attention(run.path, state, index=int(index))
        image = split_images(splits, "test", [int(index)])[0]
        a.image(image, width=160, caption=f"{looked['class_name']} (predicted {looked['predicted_name']})")
        show_chart(charts.attention_prompt_map(looked), None, f"{run.id}-attention-round-{state}-image-{index}",
                   key="attention-map")
        n_layers = len(looked["layers"])
        layer = b.select_slider("Layer", list(range(1, n_layers + 1)), value=1, key="attention_layer") \
            if n_layers > 1 else 1
        show_chart(charts.attention_over_image(image, looked, layer), None,
                   f"{run.id}-attention-round-{state}-image-{index}-layer-{layer}", key="attention-image")
