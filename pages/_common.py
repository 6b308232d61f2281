"""What every page shares: the current run (from the URL), chart rendering with downloads, error boxes.

Only Streamlit arrangement lives here; runs are started, read and analysed by `e2vpt`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import streamlit as st

from e2vpt import charts, launch
from e2vpt.config import in_form_words
from e2vpt import runs as run_store
from e2vpt.errors import UserError
from e2vpt.runs import ACTIVE_STATES, RunDir

log = logging.getLogger("e2vpt.app")

STATE_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/directions_run:",
               "done": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:",
               "interrupted": ":material/warning:", "missing": ":material/help:",
               "unreadable": ":material/broken_image:"}
POLL_SECONDS = 2.0


# --------------------------------------------------------------------------------------------------
# the frame
def through_app() -> None:
    """Make sure a page runs inside app.py's frame (sidebar, page config), not on its own.

    Streamlit treats a `pages/` folder as the old directory-based multipage app until app.py has
    called `st.navigation` once; on a fresh server whose first request is a page URL (a refresh of
    /prompts?run=...), that page would run without the frame. Switch that mode off and rerun: the
    rerun goes through app.py and lands on the same page.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the old mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


# --------------------------------------------------------------------------------------------------
# errors
@contextlib.contextmanager
def user_errors(what: str = "") -> Iterator[None]:
    """Show a `UserError` as its one-line message and anything unexpected as a short error, never a trace."""
    try:
        yield
    except UserError as exc:
        st.error(f"{what}{in_form_words(str(exc))}", icon=":material/block:")
    except (FileNotFoundError, NotADirectoryError) as exc:
        st.error(f"{what}a file of this run is missing ({exc.filename or exc}); the run folder may have been "
                 "deleted or moved while it was open", icon=":material/block:")
    except Exception as exc:  # noqa: BLE001 - a page must never show a stack trace
        log.exception("unexpected error on a page")
        st.error(f"{what}unexpected error: {type(exc).__name__}: {exc}. The details are in the server log.",
                 icon=":material/block:")


# --------------------------------------------------------------------------------------------------
# runs and the current run
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
    from e2vpt.build import load_run_splits

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


# --------------------------------------------------------------------------------------------------
# charts
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "chart"


def show_chart(fig, frame: pd.DataFrame | None, name: str, key: str, selectable: bool = False):
    """A plotly chart with hover, PNG from its toolbar, and downloads of its HTML and its data as CSV.
    With `selectable`, clicking (or box-selecting) points reruns the page and the selection is returned."""
    event = st.plotly_chart(fig, key=f"chart-{key}", on_select="rerun" if selectable else "ignore",
                            selection_mode=("points", "box", "lasso"),
                            config={"displaylogo": False, "toImageButtonOptions": {
                                "format": "png", "filename": _slug(name), "scale": 2}})
    with st.container(horizontal=True, gap="small"):
        if frame is not None:
            st.download_button("Data (CSV)", data=charts.frame_csv(frame), file_name=f"{_slug(name)}.csv",
                               mime="text/csv", key=f"csv-{key}", on_click="ignore", icon=":material/table:",
                               disabled=frame.empty)
        st.download_button("Chart (HTML)", data=lambda f=fig: charts.figure_html(f), file_name=f"{_slug(name)}.html",
                           mime="text/html", key=f"html-{key}", on_click="ignore", icon=":material/download:")
    return event


def fmt_pct(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def elapsed(seconds) -> str:
    if seconds is None or pd.isna(seconds):
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(float(seconds))) if seconds >= 60 else f"{seconds:.0f} s"


# --------------------------------------------------------------------------------------------------
# one run's progress: live while it trains, with Cancel and Resume
def _curves(run: RunDir, key: str, live: bool) -> None:
    records = run.metrics()
    epochs, prunes = charts.metrics_frame(records), charts.prune_frame(records)
    try:
        rewind = run.config().get("rewind") if not prunes.empty else None
    except UserError:  # an unreadable config: the curves still show, without the rewind's name
        rewind = None
    fig = charts.training_curves(epochs, prunes, title="Loss and accuracy per epoch",
                                 total_steps=launch.planned_epochs(run) if live else None, rewind=rewind)
    show_chart(fig, epochs, f"{run.id}-training-curves", key)
    if rewind:
        st.caption(f"At each dotted line a pruning round removed the least important prompts and the "
                   f"{charts.REWIND_WORDS.get(rewind, rewind)} (rewind), then retraining began: the loss jumps "
                   "because the prompts start over, not because something broke.")


def about(seconds: float) -> str:
    """A remaining time as a person says it: about 40 s, about 3 min, about 1 h 10 min."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60} min"


def _progress(run: RunDir, status: dict) -> None:
    progress = float(status.get("progress") or 0.0)
    state = status.get("state")
    text = f"{state}: {in_form_words(str(status.get('message') or ''))}"
    if state in ACTIVE_STATES:
        if status.get("progress_in_epoch") is not None:
            text += f" · {100 * float(status['progress_in_epoch']):.0f}% of this epoch"
        if status.get("remaining_s") is not None:
            text += f" · {about(status['remaining_s'])} left, from the time measured so far"
    st.progress(min(max(progress, 0.0), 1.0), text=text)


def _summary(run: RunDir) -> None:
    summary = run.summary() or {}
    if not summary:
        return
    a, b, c, d = st.columns(4)
    a.metric("Test accuracy", fmt_pct(summary.get("test_acc")))
    b.metric("Validation accuracy", fmt_pct(summary.get("val_acc")))
    c.metric("Tuned parameters", f"{summary.get('tuned_params', 0):,}",
             help=f"{summary.get('tuned_pct', 0):.3f}% of the backbone's {summary.get('backbone_params', 0):,}")
    d.metric("Wall time", elapsed(summary.get("wall_s")), help=f"on {summary.get('device', '?')}")


def _resume_button(run: RunDir, key: str) -> None:
    if st.button("Resume", key=f"resume-{key}", icon=":material/play_arrow:",
                 help="Continue from the last completed epoch, in a new training process."):
        with user_errors("Cannot resume: "):
            launch.resume_run(run)
            st.toast(f"Resuming {run.id}")
            time.sleep(0.3)
            st.rerun()


@st.fragment(run_every=POLL_SECONDS)
def _live_panel(run_id: str, key: str) -> None:
    try:
        run = run_store.open_run(run_id)
    except UserError as exc:
        st.warning(f"{exc}. It was deleted while it was open.")
        return
    status = run.status()
    if status.get("state") not in ACTIVE_STATES:
        st.rerun(scope="app")  # finished, failed or cancelled: redraw the page without polling
    seen = st.session_state.setdefault("seen_states", {})
    if seen.setdefault(run_id, status["state"]) != status["state"]:  # queued -> running: the sidebar says so too
        seen[run_id] = status["state"]
        st.rerun(scope="app")
    _progress(run, status)
    if st.button("Cancel run", key=f"cancel-{key}", icon=":material/stop:",
                 help="Stops at the next step; the run becomes `cancelled` and keeps what it trained."):
        with user_errors("Cannot cancel: "):
            if launch.cancel_run(run):
                st.toast("Cancel requested: the run stops at its next step")
    with user_errors():
        _curves(run, key, live=True)


def run_panel(run_id: str, key: str = "panel") -> None:
    """Progress, curves and the actions that fit the run's state (Cancel while it trains, Resume after)."""
    with user_errors():
        run = run_store.open_run(run_id)
        status = run.status()
        state = status.get("state")
        if state in ACTIVE_STATES:
            _live_panel(run_id, key)
            return
        _progress(run, status)
        if state == "done":
            _summary(run)
        elif state == "failed":
            st.error(f"The run failed: {in_form_words(str(status.get('message')))}  \nThe training process's output is in "
                     f"`{run.log_file}`.", icon=":material/error:")
        elif state in ("cancelled", "interrupted"):
            st.warning(status.get("message") or state, icon=":material/warning:")
        if state in ("cancelled", "interrupted", "failed"):
            _resume_button(run, key)
        _curves(run, key, live=False)
