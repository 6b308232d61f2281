"""The Streamlit glue the app's pages share (`app_pages/`), one job per module.

- `errors`: a page shows a user's mistake as one line and never a stack trace;
- `current_run`: the run every page shows (in the URL, so a refresh finds it), and the sidebar picker;
- `figures`: a chart with its downloads (PNG, HTML, CSV);
- `formats`: percentages, durations and estimates as a person reads them;
- `run_panel`: one run's progress, live while it trains, with Cancel and Resume.

Only Streamlit arrangement lives here; runs are started, read and analysed by `e2vpt`, which knows
nothing of Streamlit (import-linter checks both).
"""
