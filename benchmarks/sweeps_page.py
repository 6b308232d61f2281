"""How long a visit to the Sweeps page takes in a real browser, and what its parallel coordinates cost.

Issue 29: a teacher measured 4.5-5 s on every visit to the Sweeps page. The page's own script runs in
about 0.3 s; the rest was the browser drawing Plotly's parallel coordinates, a WebGL chart, which a
machine without a graphics card renders in software. The page now draws that chart only on request.

`streamlit run app.py` on a free port with its own runs root holding the shipped class comparison,
driven by Debian's headless Chromium (never a downloaded browser): each visit goes Runs -> Sweeps
through the sidebar and is timed until the verdict and the frontier are drawn and the app is idle;
then, on the same page, the parallel coordinates are switched on and timed until drawn. Visits and
switches alternate, so both see the same machine. A Runs-page visit is the baseline.

    python benchmarks/sweeps_page.py [--visits 5]

Writes benchmarks/results/sweeps_page.csv (one row per visit, with the commit, the defaults' digest and
the machine) and the block `sweeps_page` of benchmarks/README.md. Last line: `sweeps page: visit X.XX s
(runs page Y.YY s), parallel coordinates +Z.ZZ s`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, busy_warning, provenance, provenance_line, read_csv, write_csv,  # noqa: E402
                    write_readme_block)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SWEEP = "class-comparison"
VERDICT = "final model"


def _serve(runs: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, E2VPT_RUNS_ROOT=str(runs), E2VPT_DATA_ROOT=str(runs.parent / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1"], cwd=REPO, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=5)
            return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit(f"streamlit did not answer; its log: {log}")


def _idle(page) -> None:
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=120_000)


def _visit(page, title: str, until) -> float:
    start = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    until()
    _idle(page)
    return time.perf_counter() - start


def measure(visits: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    from e2vpt.sweeps import evidence

    rows = []
    with tempfile.TemporaryDirectory(prefix="e2vpt-sweeps-page-") as tmp:
        runs = Path(tmp) / "runs"
        sweep = evidence.open_shipped(SWEEP, runs)
        proc, url = _serve(runs, Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{url}/sweeps?sweep={sweep.id}")  # the first visit loads the app's scripts: not timed
                page.get_by_text(VERDICT).first.wait_for(timeout=300_000)
                _idle(page)
                plots = page.locator(".js-plotly-plot")
                for i in range(visits):
                    runs_s = _visit(page, "Runs", lambda: page.get_by_role("heading", name="Runs", level=1).wait_for())
                    sweeps_s = _visit(page, "Sweeps", lambda: (page.get_by_text(VERDICT).first.wait_for(),
                                                               plots.first.wait_for()))
                    start = time.perf_counter()
                    page.get_by_text("Settings against accuracy").click()
                    plots.nth(1).wait_for(timeout=120_000)
                    _idle(page)
                    rows.append({"visit": i + 1, "runs_page_s": round(runs_s, 3), "sweeps_page_s": round(sweeps_s, 3),
                                 "parcoords_s": round(time.perf_counter() - start, 3)})
                    print(f"visit {i + 1}: runs {runs_s:.2f} s, sweeps {sweeps_s:.2f} s, parallel coordinates "
                          f"+{rows[-1]['parcoords_s']:.2f} s", file=sys.stderr, flush=True)
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return rows


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block: medians of the visits in the result file."""
    if not rows:
        return "No result yet: run `python benchmarks/sweeps_page.py`.\n"
    med = {k: statistics.median(float(r[k]) for r in rows) for k in ("runs_page_s", "sweeps_page_s", "parcoords_s")}
    busy = " The machine was busy during the run: these times are not comparable." if rows[0].get("busy") == "True" \
        else ""
    return (f"{len(rows)} visits in headless Chromium ({provenance_line(rows[0])}), medians: a visit to the Sweeps "
            f"page with the shipped class comparison, until its verdict and frontier are drawn and the app is idle, "
            f"**{med['sweeps_page_s']:.2f} s** (a visit to the Runs page: {med['runs_page_s']:.2f} s); switching on "
            f"the parallel coordinates adds **{med['parcoords_s']:.2f} s** (the page drew them on every visit "
            f"before they were made a choice).{busy}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visits", type=int, default=5)
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/sweeps_page.csv)")
    args = p.parse_args()
    if not Path(CHROMIUM).is_file():
        print(f"sweeps page: not measured ({CHROMIUM} is missing: Debian's chromium package)")
        return 1
    warning = busy_warning()
    if warning:
        print(warning)
    stamp = {**provenance(), "defaults_used": False, "busy": bool(warning)}  # no training: no default matters
    rows = [{**r, **stamp} for r in measure(args.visits)]
    out = Path(args.out) if args.out else RESULTS / "sweeps_page.csv"
    write_csv(out, rows)
    if not args.out:
        write_readme_block("sweeps_page", render(read_csv(out)))
    print(render(read_csv(out)), end="")
    med = {k: statistics.median(r[k] for r in rows) for k in ("runs_page_s", "sweeps_page_s", "parcoords_s")}
    print(f"sweeps page: visit {med['sweeps_page_s']:.2f} s (runs page {med['runs_page_s']:.2f} s), parallel "
          f"coordinates +{med['parcoords_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
