"""A chart as every page shows it: hover, PNG from its toolbar, and downloads of its HTML and its data."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from e2vpt import charts


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
