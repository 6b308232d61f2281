"""Sweeps: many trainings on Ray Tune, and the accuracy-per-parameter frontier they draw."""

import os

import pandas as pd
import streamlit as st

from e2vpt import charts, launch
from e2vpt.data import list_datasets
from e2vpt.runs import runs_root
from e2vpt.sweeps import evidence, frontier
from e2vpt.sweeps.prepared import PREPARED, estimate_seconds, prepared
from e2vpt.sweeps.store import eta, list_sweeps, swept_settings
from ui.current_run import runs, set_current_run
from ui.errors import user_errors
from ui.figures import show_chart
from ui.formats import elapsed
from ui.run_panel import POLL_SECONDS

st.title("Sweeps")
st.markdown("E2VPT's claim is better accuracy than VPT with fewer tuned parameters. A sweep trains many "
            "settings, methods and seeds at once (on Ray Tune: this machine's cores, or a Ray cluster from the "
            "command line) and draws the **frontier**: accuracy against tuned parameters, averaged over seeds, "
            "so you see whether the claim holds on your data, or is noise. Each trial is an ordinary run: open "
            "it on every other page.")

ACTIVE = ("queued", "running")


def start_form(open_by_default: bool) -> None:
    with st.expander("Start a sweep", expanded=open_by_default, icon=":material/add:"):
        name = st.radio("Prepared sweep", list(PREPARED), horizontal=True, key="sweep_kind")
        st.caption(PREPARED[name]["help"])
        a, b, c, d = st.columns(4)
        backbone = a.text_input("Backbone", "demo", key="sweep_backbone")
        datasets = [e["name"] for e in list_datasets() if not e["needs_root"]]
        dataset = b.selectbox("Dataset", datasets, key="sweep_dataset")
        epochs = c.number_input("Epochs", 1, 1000, 4, key="sweep_epochs")
        # under VPT's protocol the search runs one seed and the final trials the number asked for here
        seeds_key = "final_seeds" if PREPARED[name]["spec"].get("protocol") == "vpt" else "seeds"
        seeds = d.number_input("Final seeds" if seeds_key == "final_seeds" else "Seeds", 1, 10,
                               len(PREPARED[name]["spec"][seeds_key]), key=f"sweep_seeds_{name}")
        asha = st.checkbox("Stop trials that fall behind early (ASHA)", key="sweep_asha",
                           help="Ray Tune's ASHA scheduler stops trials whose validation accuracy is behind after "
                                "each epoch; the frontier then has fewer points, sooner.")
        with user_errors("This sweep cannot start: "):
            spec = prepared(name, {"backbone": backbone, "dataset": dataset, "epochs": int(epochs)},
                            **{seeds_key: list(range(int(seeds)))}, scheduler="asha" if asha else "fifo")
            guess = estimate_seconds(spec, runs(), slots=os.cpu_count() or 1)
            when = f"about {elapsed(guess['seconds'])}" if guess["seconds"] else "no estimate yet"
            st.caption(f"{'up to ' if guess['at_most'] else ''}{guess['trials']} trials, {when}: {guess['basis']}.")
            if st.button("Start sweep", type="primary", icon=":material/play_arrow:", key="sweep_start"):
                sweep = launch.start_sweep(spec)
                st.query_params["sweep"] = sweep.id
                st.toast(f"Started sweep {sweep.id}")
                st.rerun()


def shipped_buttons() -> None:
    """One click opens a finished comparison that ships with e2vpt (an evidence file, no training)."""
    files = evidence.shipped()
    if not files:
        return
    st.markdown("**Finished comparisons that ship with e2vpt** (measured on a 2-core CPU; open one to teach from it "
                "at once):")
    for item in files:
        a, b = st.columns([1, 3])
        if a.button(f"Open {item['name'].replace('-', ' ')}", key=f"shipped_{item['name']}",
                    icon=":material/inventory_2:"):
            with user_errors("This comparison cannot be opened: "):
                sweep = evidence.open_shipped(item["name"], runs_root())
                st.query_params["sweep"] = sweep.id
                st.rerun()
        b.caption(item["about"])


def provenance_note(sweep) -> None:
    """Where an opened evidence file came from, and whether today's defaults would train the same."""
    source = evidence.opened_from(sweep)
    if source is None:
        return
    made = source.get("exported_by") or {}
    packages = made.get("packages") or {}
    trained = ("trained at commit " + ", ".join(f"`{c}`" for c in source["trained_at"]) if source["trained_at"]
               else "its trials ran before runs recorded their commit")
    st.caption(f"Opened from the evidence file `{source.get('file')}`: {trained}; exported {source.get('exported')} "
               f"at commit `{made.get('commit')}` (e2vpt {made.get('e2vpt')}, torch {packages.get('torch')}, timm "
               f"{packages.get('timm')}, {made.get('cpu')}, {made.get('cores')} cores).")
    if source["stale"]:
        st.warning(f"{len(source['stale'])} trial(s) ran with settings today's defaults no longer give (e.g. "
                   f"{source['stale'][0]}): these numbers are not what this version would measure.")


def trial_labels(sweep, record: dict) -> dict[str, str]:
    """Each trial's configuration and dataset as the frontier names them (`e2vpt p=8 l=4 · digits`):
    trial ids name only the method and seed, so neighbours in a grid look alike."""
    out = {}
    for trial_id, trial in record["trials"].items():
        values = trial.get("values") or {}
        out[trial_id] = (f"{frontier.config_label(trial.get('method') or '?', values)} · "
                         f"{frontier.trial_dataset(sweep, trial_id, record, values)}")
    return out


def trial_table(rows: list[dict], labels: dict[str, str], live: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.insert(1, "configuration", frame["trial"].map(labels))
    if not frame.empty and frame["phase0_from"].isna().all():  # only the pruning search's levels share a phase 0
        frame = frame.drop(columns=["chosen", "phase0_from"])
    for column in ("val_acc", "test_acc", "progress"):
        frame[column] = frame[column].map(lambda v: None if v is None or pd.isna(v) else 100 * v)
    if not live:
        frame = frame.drop(columns=["progress", "phase", "remaining_s"])
    return frame.rename(columns={"val_acc": "val acc (latest while running)" if live else "val acc", "test_acc":
                                 "test acc", "progress": "progress (%)", "remaining_s": "left (s)"})


@st.fragment(run_every=POLL_SECONDS)
def live(sweep_id: str, shown_state: str) -> None:
    with user_errors():
        sweep = launch.open_sweep(sweep_id)
        record = sweep.read()
        state = sweep.state(record)
        if state != shown_state:  # queued -> running -> done: the whole page says the new state
            st.rerun(scope="app")
        rows = sweep.rows(record)
        done = sum(r["status"] in ("done", "stopped", "failed") for r in rows)
        running = sum(r["status"] == "running" for r in rows)
        left = eta(rows)
        when = (f"{'at least ' if left['at_least'] else 'about '}{elapsed(left['seconds'])} left ({left['basis']})"
                if left["seconds"] is not None else left["basis"])
        st.progress(sum(r["progress"] for r in rows) / max(len(rows), 1),
                    text=f"{state}: {done} of {len(rows)} trials finished, {running} running; {when}")
        if st.button("Cancel sweep", icon=":material/stop:", key="sweep_cancel",
                     help="Stops every trial; each keeps what it trained and continues when you resume the sweep."):
            launch.cancel_sweep(sweep_id)
            st.toast("Cancel requested: the trials stop at their next step")
        st.dataframe(trial_table(rows, trial_labels(sweep, record), live=True), hide_index=True)


def show(sweep_id: str) -> None:
    sweep = launch.open_sweep(sweep_id)
    record = sweep.read()
    state = sweep.state(record)
    spec = record["spec"]
    st.subheader(f"`{sweep_id}`" + (f": {spec.get('name')}" if spec.get("name") else ""))
    if state in ACTIVE:
        live(sweep_id, state)
    else:
        text = f"**{state}**" + (f": {record.get('message')}" if record.get("message") else "")
        (st.success if state == "done" else st.warning)(text)
        if state in ("interrupted", "cancelled", "failed") and st.button("Resume sweep", icon=":material/play_arrow:",
                                                                         help="Trains only what did not finish."):
            launch.resume_sweep(sweep_id)
            st.rerun()
    provenance_note(sweep)
    rows = sweep.rows(record)
    if note := frontier.protocol_note(record, rows):
        st.caption(note)
    every_round = st.toggle("Draw E2VPT's other pruning rounds", value=True, key="sweep_rounds",
                            help="Open markers: each round of E2VPT (round 0 before pruning). Only the round each run "
                                 "kept on validation counts, on the front and in the verdict.")
    table = frontier.summary(frontier.points(sweep, every_round=every_round))
    names = frontier.datasets(table)
    dataset = names[0] if names else None
    if len(names) > 1:
        dataset = st.radio("Dataset (one frontier each: datasets are never mixed)", names, horizontal=True,
                           key=f"sweep_dataset_{sweep_id}")
    shown = table[table["dataset"] == dataset] if dataset else table
    show_chart(charts.frontier_chart(shown, title=f"{dataset}: accuracy against tuned parameters"),
               shown, f"{sweep_id}-{dataset}-frontier", key="frontier")
    st.info(frontier.verdicts(table).get(dataset, "No finished trials yet."), icon=":material/insights:")
    frame = pd.DataFrame(rows)
    # Plotly draws parallel coordinates with WebGL: in a browser without a graphics card that chart alone
    # cost more than the rest of the page on every visit (benchmarks/README.md, "The Sweeps page")
    if st.toggle("Settings against accuracy (parallel coordinates)", key="sweep_parcoords",
                 help="One line per finished trial across the swept settings, coloured by test accuracy."):
        show_chart(charts.parallel_coordinates(frame, swept_settings(record)), frame, f"{sweep_id}-settings",
                   key="parcoords")
    labels = trial_labels(sweep, record)
    if state not in ACTIVE:
        st.dataframe(trial_table(rows, labels), hide_index=True)
    st.download_button("Leaderboard (CSV)", frame.to_csv(index=False), file_name=f"{sweep_id}-leaderboard.csv",
                       mime="text/csv", on_click="ignore", icon=":material/table:")
    finished = [r["trial"] for r in rows if r["status"] in ("done", "stopped", "failed")]
    if finished:
        a, b = st.columns([3, 1])
        trial = a.selectbox("Trial", finished, key="sweep_trial", format_func=lambda t: f"{t} · {labels.get(t, '')}")
        if b.button("Open on every page", icon=":material/open_in_new:"):
            set_current_run(f"{sweep_id}/{trial}")
            st.rerun()


with user_errors():
    sweeps = list_sweeps()
    start_form(open_by_default=not sweeps)
    shipped_buttons()
    if not sweeps:
        st.info("No sweeps yet. Start a prepared one above, or from a terminal: `python -m e2vpt sweep --methods "
                "linear vpt-deep e2vpt --grid prompt_len=1,2,4,8 --seeds 0 1 2`.", icon=":material/science:")
        st.stop()
    ids = [s["id"] for s in sweeps]
    wanted = st.query_params.get("sweep")
    chosen = st.selectbox("Sweep", ids, index=ids.index(wanted) if wanted in ids else 0)
    if wanted and wanted not in ids:
        st.warning(f"Sweep `{wanted}` no longer exists (deleted or moved); showing the newest.")
    if st.query_params.get("sweep") != chosen:
        st.query_params["sweep"] = chosen
    row = next(s for s in sweeps if s["id"] == chosen)
    st.caption(f"{row['state']} · {row['done']} of {row['trials']} trials done · created {row['created']}")
    if row["state"] == "unreadable":
        st.error(f"This sweep cannot be read: {row['message']}")
        st.stop()
    show(chosen)
