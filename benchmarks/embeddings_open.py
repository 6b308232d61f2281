"""How long the Embeddings page of a finished run takes to open, as a user opens it: in AppTest, the
app's own script run from the Train page, then switched to Embeddings with `?run=<id>`.

Target (issue 15): <= 3 s for a finished demo run. Why it can be met: training writes the run's
test features and the page's default report into `<run>/analysis/` when it ends, so the first open
only reads them. Timed twice: as the run was left by training, and (--cold) with `analysis/` moved
aside first, which is what every open cost before (features and geometry computed on demand).
The Streamlit and page imports are paid once before the timed opens (a served app has them).

Usage: python benchmarks/embeddings_open.py RUN_DIR [--cold]
The last line is exactly `embeddings page: first open X.XX s`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def as_served() -> None:
    """Pages as a server runs them after its first request (tests/conftest.py `served_app` says why)."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init


def open_embeddings(run_dir: Path, expect_chart: bool = True) -> float:
    """Seconds from a fresh AppTest session to the Embeddings page drawn for this run."""
    from streamlit.testing.v1 import AppTest

    start = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params["run"] = run_dir.name
    at.run()
    at.switch_page("pages/embeddings.py")
    at.run()
    seconds = time.perf_counter() - start
    if at.exception or at.error:
        raise SystemExit(f"the page failed: {[e.value for e in at.exception] or [e.value for e in at.error]}")
    if expect_chart and not at.get("plotly_chart"):
        raise SystemExit("the page drew no chart")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--cold", action="store_true", help="move analysis/ aside first (computed on demand)")
    args = parser.parse_args()
    source = args.run_dir.resolve()
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the user's run is never touched
        run_dir = Path(tmp) / "runs" / source.name
        shutil.copytree(source, run_dir)
        if args.cold:
            shutil.rmtree(run_dir / "analysis", ignore_errors=True)
        os.environ["E2VPT_RUNS_ROOT"] = str(run_dir.parent)
        as_served()
        warm = Path(tmp) / "runs" / "warm-up"  # pays the imports, as a served app has already
        shutil.copytree(source, warm, ignore=shutil.ignore_patterns("analysis"))
        (warm / "weights.safetensors").unlink()
        open_embeddings(warm, expect_chart=False)
        seconds = open_embeddings(run_dir)
    print(f"embeddings page: first open {seconds:.2f} s")


if __name__ == "__main__":
    main()
