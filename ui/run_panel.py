"""One run's progress: live while it trains (polled), with Cancel; Resume after it stopped; its curves."""

from __future__ import annotations

import time

import streamlit as st

from e2vpt import charts, launch
from e2vpt import runs as run_store
from e2vpt.config import in_form_words
from e2vpt.errors import UserError
from e2vpt.runs import ACTIVE_STATES, RunDir

from .errors import user_errors
from .figures import show_chart
from .formats import about, elapsed, fmt_pct

POLL_SECONDS = 2.0


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
