"""Runs: every run on disk; open, compare, cancel, resume or delete one."""

import pandas as pd
import streamlit as st

from e2vpt import launch
from e2vpt import runs as run_store
from e2vpt.runs import ACTIVE_STATES
from ui.current_run import runs, set_current_run
from ui.errors import user_errors
from ui.run_panel import run_panel

st.title("Runs")
st.markdown("Every run under the runs folder, newest first. Select a row to open it on every page, tick two "
            "or more to compare them, or delete one you no longer need.")

rows = runs()
if not rows:
    st.info(f"No runs yet under `{run_store.runs_root()}`. Start one on **Train**.", icon=":material/folder_off:")
    st.stop()

table = pd.DataFrame([{
    "run": r["id"], "state": r["state"], "progress": r.get("progress") or 0.0, "method": r.get("method"),
    "dataset": r.get("dataset"), "backbone": r.get("backbone"),
    "test acc": None if r.get("test_acc") is None else 100 * r["test_acc"],
    "tuned %": r.get("tuned_pct"), "tuned params": r.get("tuned_params"), "wall time (s)": r.get("wall_s"),
    "created": r.get("created"), "message": r.get("message")} for r in rows])
# a new key after each deletion: the table forgets its selection, which would otherwise slide onto the
# run below the deleted one (and put that run's Delete button where the user just clicked)
table_key = f"runs_table-{st.session_state.setdefault('runs_table_generation', 0)}"
event = st.dataframe(
    table, hide_index=True, on_select="rerun", selection_mode="multi-row", key=table_key,
    column_config={  # the run id stays in view when a narrow screen scrolls the table sideways
        "run": st.column_config.TextColumn("run", pinned=True),
        "message": st.column_config.TextColumn("message", width="large"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "test acc": st.column_config.NumberColumn("test acc", format="%.1f%%"),
        "tuned %": st.column_config.NumberColumn("tuned %", format="%.3f%%", help="tuned parameters / backbone"),
        "tuned params": st.column_config.NumberColumn("tuned params", format="localized"),
        "wall time (s)": st.column_config.NumberColumn("wall time (s)", format="%.0f"),
    })
st.download_button("Runs table (CSV)", table.to_csv(index=False), file_name="runs.csv", mime="text/csv",
                   on_click="ignore", icon=":material/table:")

picked = [table.iloc[i]["run"] for i in event.selection.rows] if event and event.selection else []
if not picked:
    st.caption("Select a row to act on it.")
    st.stop()

if len(picked) >= 2:
    st.session_state["compare_ids"] = picked
    st.page_link("app_pages/compare.py", label=f"Compare these {len(picked)} runs", icon=":material/compare_arrows:")

run_id = picked[0]
st.subheader(f"`{run_id}`")
open_col, delete_col = st.columns([1, 1])
if open_col.button("Open in every page", icon=":material/open_in_new:", type="primary"):
    set_current_run(run_id)
    st.rerun()

state = next((r["state"] for r in rows if r["id"] == run_id), None)
if state in ACTIVE_STATES:
    delete_col.caption("A run that is training cannot be deleted; cancel it first.")
elif st.session_state.get("confirm_delete") == run_id:
    delete_col.warning(f"Delete `{run_id}` and every file it wrote? This cannot be undone. "
                       "Files that are not the run's are kept.")
    yes, no = delete_col.columns(2)
    if yes.button("Yes, delete", type="primary", icon=":material/delete_forever:"):
        with user_errors("Not deleted: "):
            kept = launch.delete_run(run_id)
            st.session_state.pop("confirm_delete", None)
            st.session_state["runs_table_generation"] += 1
            if st.session_state.get("current_run") == run_id:
                set_current_run(None)
            st.toast(f"Deleted {run_id}" + (f"; kept the files that are not the run's: {', '.join(kept[:5])}"
                                            if kept else ""))
            st.rerun()
    if no.button("Keep it"):
        st.session_state.pop("confirm_delete", None)
        st.rerun()
elif delete_col.button("Delete…", icon=":material/delete:"):
    st.session_state["confirm_delete"] = run_id
    st.rerun()

run_panel(run_id, key="runs")
