"""The current run: its id lives in the URL (`?run=...`), so a refresh or a restarted server finds it;
the sidebar's picker sets it; a page asks for it (and says plainly when there is none)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from e2vpt import runs as run_store
from e2vpt.config import in_form_words
from e2vpt.errors import UserError
from e2vpt.runs import ACTIVE_STATES, RunDir

STATE_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/directions_run:",
               "done": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:",
               "interrupted": ":material/warning:", "missing": ":material/help:",
               "unreadable": ":material/broken_image:"}


def runs() -> list[dict]:
    try:
        return run_store.list_runs()
    except OSError as exc:
        st.error(f"cannot read the runs folder: {exc}")
        return []


def sidebar_run_picker() -> None:
    """The current-run picker: the run id lives in `?run=...`, so refresh and restart find it."""
    rows = runs()
    by_id = {r["id"]: r for r in rows}
    was_open = st.session_state.get("current_run")
    wanted = st.query_params.get("run") or was_open
    if not wanted and rows and "current_run" not in st.session_state:  # a fresh visit opens the newest run,
        wanted = next((r["id"] for r in rows if "/" not in r["id"]), rows[0]["id"])  # not a sweep's trial
    missing = wanted if wanted and wanted not in by_id else None
    # a run that was open in this session and is gone was deleted or moved; any other id is unknown
    # (a typo, an old link): said differently, and dropped from the address so the picker starts
    # clean; the message stays until a run is picked
    if missing:
        st.session_state["missing_run"] = (missing, missing == was_open)
        if "run" in st.query_params:
            del st.query_params["run"]
    elif wanted:
        st.session_state["missing_run"] = None
    missing = (st.session_state.get("missing_run") or (None,))[0]
    current = wanted if wanted in by_id else None
    st.session_state["current_run"] = current
    if current and st.query_params.get("run") != current:
        st.query_params["run"] = current
    # the picker reflects the URL (it changes when a run is started or opened elsewhere)
    if st.session_state.get("run_picker") != current:
        st.session_state["run_picker"] = current

    def picked() -> None:
        choice = st.session_state.get("run_picker")
        if choice is not None and choice not in by_id:
            return
        st.session_state["current_run"] = choice
        if choice:
            st.query_params["run"] = choice
        elif "run" in st.query_params:
            del st.query_params["run"]

    with st.sidebar:
        # options are plain ids: a label that changes with the run's state would no longer match the
        # browser's remembered selection once the run finishes
        st.selectbox("Current run", list(by_id), key="run_picker", format_func=lambda rid: run_label(by_id[rid]),
                     placeholder="no run picked" if rows else "no runs yet: start one on Train",
                     on_change=picked, help="Every page shows this run. Its id is in the address bar, so a "
                                            "refresh or a restarted server finds it again.")
        if missing:
            st.warning(missing_run_message(*st.session_state["missing_run"]))
        elif current and by_id[current]["state"] == "unreadable":
            st.warning(f"This run cannot be read: {by_id[current]['message']}", icon=STATE_ICONS["unreadable"])
        elif current:
            row = by_id[current]
            st.caption(f"{row.get('method') or '?'} on {row.get('dataset') or '?'} · {row.get('state')}")
        st.caption(f"Runs folder: `{run_store.runs_root()}`")


def run_label(row: dict) -> str:
    """A sweep trial's id with what tells it from its neighbours (prompts, dataset); a run's id as it is.
    Only settings: a label must not change while the run trains."""
    if "/" not in row["id"] or row.get("state") == "unreadable":
        return row["id"]
    prompts = [f"{name}={value}" for name, value in (("p", row.get("prompt_len")), ("l", row.get("kv_len"))) if value]
    return " · ".join([row["id"], *([" ".join(prompts)] if prompts else []), str(row.get("dataset") or "?")])


def missing_run_message(run_id: str, was_open: bool) -> str:
    if was_open:
        return (f"Run `{run_id}` no longer exists: its folder was deleted or moved while it was open. Pick another "
                "run in the sidebar or start one on **Train**.")
    return (f"There is no run `{run_id}` in the runs folder (`{run_store.runs_root()}`): check the address, or "
            "pick a run in the sidebar.")


@st.cache_resource(show_spinner="Loading the run's images…", max_entries=4)
def _splits(path: str, config_stamp: float):
    from e2vpt.training.build import load_run_splits

    return load_run_splits(path)


def run_splits(run):
    """A run's dataset splits as its training built them (to show its images), kept per server
    process; `run` is a RunDir or a run folder."""
    path = run.path if isinstance(run, RunDir) else Path(run)
    config = path / "config.json"
    return _splits(str(path), config.stat().st_mtime if config.is_file() else 0.0)


def set_current_run(run_id: str | None) -> None:
    """Make `run_id` the current run (URL and picker) from a page's button."""
    st.session_state["current_run"] = run_id
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


def current_run(required: bool = True) -> RunDir | None:
    """The run picked in the sidebar; with `required`, a clear message and a stop when there is none."""
    run_id = st.session_state.get("current_run")
    missing = st.session_state.get("missing_run")
    if run_id:
        try:
            return run_store.open_run(run_id)
        except UserError as exc:
            if required:
                st.warning(str(exc))
                st.stop()
    if not required:
        return None
    if missing:
        st.warning(missing_run_message(*missing), icon=":material/warning:")
    else:
        st.info("No run picked. Pick one in the sidebar, open one on **Runs**, or start one on **Train**.",
                icon=":material/arrow_back:")
    st.stop()


def run_banner(run: RunDir, needs_done: str | None = None) -> dict:
    """A one-line status of the run; while it runs or after it failed, say what is (not yet) there.

    Returns the status dict. `needs_done` names what this page shows, for the message.
    """
    status = run.status()
    state = status.get("state", "missing")
    icon = STATE_ICONS.get(state, "")
    text = f"{icon} **{run.id}** is **{state}**" + (f": {in_form_words(str(status['message']))}"
                                                     if status.get("message") else "")
    if state == "missing":
        st.warning(f"Run `{run.id}` no longer exists: its folder was deleted or moved while it was open.")
        st.stop()
    if state == "done":
        st.caption(text)
    elif state in ACTIVE_STATES:
        st.info(text + (f"  \n{needs_done} as soon as the run's records are written; this page shows what "
                        "exists so far (refresh to update)." if needs_done else ""))
    elif state == "failed":
        st.error(text + "  \nWhat the run wrote before it failed is shown below.")
    else:
        st.warning(text + "  \nResume it on **Train** or **Runs**; what it wrote so far is shown below.")
    return status
