"""Numbers as a person reads them on a page: percentages, durations, remaining times."""

from __future__ import annotations

import time

import pandas as pd


def fmt_pct(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def elapsed(seconds) -> str:
    if seconds is None or pd.isna(seconds):
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(float(seconds))) if seconds >= 60 else f"{seconds:.0f} s"


def about(seconds: float) -> str:
    """A remaining time as a person says it: about 40 s, about 3 min, about 1 h 10 min."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60} min"
