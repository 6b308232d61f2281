"""E2VPT studio: `streamlit run app.py`. The frame and router only; each page lives in `app_pages/`, what
the pages share in `ui/`."""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `e2vpt` and `ui` import from any working folder

from ui.current_run import sidebar_run_picker  # noqa: E402

st.set_page_config(page_title="E2VPT studio", page_icon="🧩", layout="wide", initial_sidebar_state="expanded")

PAGES = [
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:", default=True),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:"),
    st.Page("app_pages/prompts.py", title="Prompts", icon=":material/grid_on:"),
    st.Page("app_pages/pruning.py", title="Pruning", icon=":material/content_cut:"),
    st.Page("app_pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/sweeps.py", title="Sweeps", icon=":material/science:"),
]

page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("**E2VPT studio**  \nVisual prompt tuning with pruning, on frozen ViTs.")
sidebar_run_picker()
page.run()
