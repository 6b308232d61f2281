"""Errors on a page: a `UserError` as its one line, anything unexpected as a short message (the
details go to the server log), never a stack trace."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import streamlit as st

from e2vpt.config import in_form_words
from e2vpt.errors import UserError

log = logging.getLogger("e2vpt.app")


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
