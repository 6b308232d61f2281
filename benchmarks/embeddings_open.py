"""The Embeddings page of finished default demo runs: how long it takes to open, side by side included,
and what the side-by-side comparison shows (issues 15 and 29).

Trains the default demo (`python -m e2vpt train`: E2VPT) and the default VPT-deep demo in a temporary
runs root, or reads two finished runs (`--e2vpt RUN --vpt RUN`, copied: never touched; their `analysis/`
as it is, less any frozen-backbone features). Then, in AppTest
with the Streamlit and page imports paid beforehand (a served app has them), each `--repeats` times on
a fresh copy of the runs:
  - the page's first open, as training left the run (its test features and default report written when
    it ended; target <= 3 s), and with `analysis/` moved aside (everything computed on demand);
  - "Side by side with" the frozen backbone (its features computed on request: the 15.6 s a teacher
    waited for in issue 29) and with the VPT-deep run.
And `compare_run_embeddings` of E2VPT against VPT-deep and against its own frozen backbone.

    python benchmarks/embeddings_open.py [--e2vpt RUN --vpt RUN] [--repeats 2]

Writes benchmarks/results/embeddings_open.csv (one row per timed open) and embeddings_compare.csv (one
row per metric and comparison), each row with the commit, the defaults' digest and the machine, and the
blocks `embeddings_open` and `embeddings_compare` of benchmarks/README.md (when it trained the runs
itself). Last line: `embeddings page: first open X.XX s, side by side with the frozen backbone Y.YY s`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, busy_warning, provenance, provenance_line, read_csv, write_csv,  # noqa: E402
                    write_readme_block)

FROZEN = "__frozen__"  # the page's option for the run's own frozen backbone
RESAMPLES = 1000  # the page's paired bootstrap
MEASURES = {"open": "first open, as training left the run (target <= 3 s)",
            "open_cold": "first open, `analysis/` moved aside (everything computed on demand)",
            "side_frozen": "side by side with the frozen backbone (its features computed on request)",
            "side_vpt": "side by side with the VPT-deep run"}


def as_served() -> None:
    """Pages as a server runs them after its first request (tests/conftest.py `served_app` says why)."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init


def _page(run_id: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("app_pages/embeddings.py")
    return at


def _checked(at) -> None:
    if at.exception or at.error:
        raise SystemExit(f"the page failed: {[e.value for e in at.exception] or [e.value for e in at.error]}")
    if not at.get("plotly_chart"):
        raise SystemExit("the page drew no chart")


def timed_open(run_id: str) -> float:
    """Seconds from a fresh session on the Train page to the Embeddings page drawn for `run_id`."""
    start = time.perf_counter()
    at = _page(run_id)
    at.run()
    seconds = time.perf_counter() - start
    _checked(at)
    return seconds


def timed_side_by_side(run_id: str, partner: str) -> float:
    """Seconds from choosing `partner` in "Side by side with" to both sides and their comparison drawn."""
    at = _page(run_id)
    at.run()
    box = next(s for s in at.selectbox if s.label == "Side by side with")
    start = time.perf_counter()
    box.set_value(partner).run()
    seconds = time.perf_counter() - start
    _checked(at)
    if len(at.get("plotly_chart")) < 2:
        raise SystemExit("the side by side view drew fewer than two charts")
    return seconds


def fresh_copy(sources: dict[str, Path], root: Path, cold: bool = False) -> Path:
    """The runs copied into a new runs root (optionally without their analyses); the root."""
    shutil.rmtree(root, ignore_errors=True)
    for name, source in sources.items():
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("analysis") if cold else None)
    return root


def train_runs(root: Path) -> dict[str, Path]:
    from e2vpt.config import TrainConfig
    from e2vpt import train

    out = {"e2vpt": root / "e2vpt", "vpt": root / "vpt"}
    train(TrainConfig(), out["e2vpt"], quiet=True)
    train(TrainConfig(method="vpt-deep"), out["vpt"], quiet=True)
    return out


def comparisons(e2vpt: Path, vpt: Path) -> list[dict]:
    from e2vpt.analysis.embeddings import compare_run_embeddings
    from e2vpt.charts import METRIC_NAMES

    rows = []
    for against, other in (("vpt-deep", vpt), ("frozen backbone", None)):
        start = time.perf_counter()
        result = compare_run_embeddings(e2vpt, other, resamples=RESAMPLES)
        seconds = time.perf_counter() - start
        first, second = result["names"]
        for r in result["rows"]:
            low, high = r["interval"] or (None, None)
            rows.append({"against": against, "metric": METRIC_NAMES.get(r["name"], r["name"]),
                         "e2vpt": r[first], "other": r[second], "other_minus_e2vpt": r["difference"],
                         "low": low, "high": high, "verdict": r["verdict"].replace(first, "e2vpt"),
                         "resamples": RESAMPLES, "seconds": round(seconds, 3)})
    return rows


def _num(v, digits=3, sign=False) -> str:
    return "n/a" if v in ("", None) else f"{float(v):{'+' if sign else ''}.{digits}f}"


def render(rows: list[dict]) -> str:
    """The block `embeddings_open` from embeddings_open.csv, or `embeddings_compare` from
    embeddings_compare.csv (told apart by their columns)."""
    if not rows:
        return "No result yet: run `python benchmarks/embeddings_open.py`.\n"
    first = rows[0]
    head = (f"Default demo runs: E2VPT {100 * float(first['e2vpt_test_acc']):.1f} % and VPT-deep "
            f"{100 * float(first['vpt_test_acc']):.1f} % test accuracy on digits; {provenance_line(first)}."
            + (" The machine was busy during the run: the times are not comparable." if first.get("busy") == "True"
               else ""))
    if "measure" in first:
        lines = [head, "", "| what | seconds, each repeat |", "|---|---|"]
        for key, text in MEASURES.items():
            times = [float(r["seconds"]) for r in rows if r["measure"] == key]
            if times:
                lines.append(f"| {text} | " + ", ".join(f"{t:.2f}" for t in times) + " |")
        lines += ["", f"Writing the test features and the default report cost the E2VPT training run "
                      f"{float(first['embeddings_s']):.1f} s (`embeddings_s` in its summary), inside its wall time."]
        return "\n".join(lines) + "\n"
    lines = [head]
    for against in dict.fromkeys(r["against"] for r in rows):
        part = [r for r in rows if r["against"] == against]
        lines += ["", f"E2VPT against {against} on the same test images (`compare_run_embeddings`, "
                      f"{int(part[0]['resamples']):,} paired bootstrap resamples, {float(part[0]['seconds']):.1f} s):",
                  "",
                  f"| metric | E2VPT | {against} | {against} - E2VPT | 95 % interval | verdict |",
                  "|---|---|---|---|---|---|"]
        for r in part:
            interval = "n/a" if r["low"] == "" else f"[{_num(r['low'], sign=True)}, {_num(r['high'], sign=True)}]"
            lines.append(f"| {r['metric']} | {_num(r['e2vpt'])} | {_num(r['other'])} | "
                         f"{_num(r['other_minus_e2vpt'], sign=True)} | {interval} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--e2vpt", type=Path, default=None, help="a finished E2VPT run (default: train the demo)")
    p.add_argument("--vpt", type=Path, default=None, help="a finished VPT-deep run on the same data")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=None, help="where the CSVs go (default benchmarks/results)")
    args = p.parse_args()
    if (args.e2vpt is None) != (args.vpt is None):
        p.error("give both --e2vpt and --vpt, or neither")
    warning = busy_warning()
    if warning:
        print(warning)
    stamp = {**provenance(), "defaults_used": args.e2vpt is None, "busy": bool(warning)}
    with tempfile.TemporaryDirectory(prefix="e2vpt-embeddings-") as tmp:
        tmp = Path(tmp)
        sources = train_runs(tmp / "trained") if args.e2vpt is None else \
            {"e2vpt": args.e2vpt.resolve(), "vpt": args.vpt.resolve()}
        from e2vpt.runs import RunDir

        summary = {k: RunDir(v).summary() or {} for k, v in sources.items()}
        stamp.update(e2vpt_test_acc=summary["e2vpt"].get("test_acc"), vpt_test_acc=summary["vpt"].get("test_acc"),
                     embeddings_s=summary["e2vpt"].get("embeddings_s"))
        root = tmp / "runs"
        os.environ["E2VPT_RUNS_ROOT"] = str(root)
        as_served()
        import streamlit as st

        fresh_copy(sources, root, cold=True)
        shutil.rmtree(root / "vpt")
        (root / "e2vpt" / "weights.safetensors").unlink()
        _page("e2vpt").run()  # pays the imports, as a served app has already (no weights: nothing computed)
        opens = []
        for i in range(args.repeats):
            for measure, cold, timing in (
                    ("open", False, lambda: timed_open("e2vpt")),
                    ("open_cold", True, lambda: timed_open("e2vpt")),
                    ("side_frozen", False, lambda: timed_side_by_side("e2vpt", FROZEN)),
                    ("side_vpt", False, lambda: timed_side_by_side("e2vpt", "vpt"))):
                fresh_copy(sources, root, cold=cold)
                for cached in (root / "e2vpt" / "analysis").glob("features_*_frozen.safetensors"):
                    cached.unlink()  # a given run may hold them from an earlier side by side: computed on request
                st.cache_data.clear()  # the page's caches live in this process, as in a served app: each
                st.cache_resource.clear()  # measure starts as a server that never showed these runs
                opens.append({"measure": measure, "repeat": i + 1, "seconds": round(timing(), 3), **stamp})
                print(f"{MEASURES[measure]}: {opens[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
        fresh_copy(sources, root)  # the copies: a given run is never written to
        compared = [{**r, **stamp} for r in comparisons(root / "e2vpt", root / "vpt")]
    out_dir = args.out_dir or RESULTS
    write_csv(out_dir / "embeddings_open.csv", opens)
    write_csv(out_dir / "embeddings_compare.csv", compared)
    if args.out_dir is None and args.e2vpt is None:
        write_readme_block("embeddings_open", render(read_csv(out_dir / "embeddings_open.csv")))
        write_readme_block("embeddings_compare", render(read_csv(out_dir / "embeddings_compare.csv")))
    print(render(read_csv(out_dir / "embeddings_open.csv")) + "\n" + render(read_csv(out_dir / "embeddings_compare.csv")))
    median = {m: statistics.median(r["seconds"] for r in opens if r["measure"] == m) for m in MEASURES}
    print(f"embeddings page: first open {median['open']:.2f} s, side by side with the frozen backbone "
          f"{median['side_frozen']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
