"""The default demo in fp32 and in bf16 on the CPU: accuracy and time (issue 17).

bf16 autocast is what a GPU runs by default (`--precision auto`); on the CPU it is opt-in. This runs
the default demo (`benchmarks/demo_time.py`'s command: 4 epochs, 2 pruning rounds) once per precision,
alternating, `--repeats` times, and reports each run's test accuracy and wall time. The goal: bf16
within 1 point of fp32. Time is reported, not judged: whether bf16 is faster on a CPU depends on its
bfloat16 instructions (AVX512-BF16, AMX) and on how small the demo's matrices are.

    python benchmarks/precision.py --repeats 2      # the published numbers (2 runs each)
    python benchmarks/precision.py --quick          # smoke test: 1 epoch, 1 round (precision_quick.csv)

Writes benchmarks/results/precision.csv (each row with the commit, the defaults' digest and the
machine) and, for that default file, the README block `precision` (`render`). Last line:
`precision: bf16 X % vs fp32 Y % test accuracy (Z points), bf16 time R x fp32`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, busy_warning, met, print_table, provenance, provenance_line, read_csv,  # noqa: E402
                    write_csv, write_readme_block)
from demo_time import run_once  # noqa: E402

GOAL_POINTS = 1.0  # issue 17: bf16 within 1 point of fp32's test accuracy


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `precision`, from precision.csv's rows."""
    if not rows:
        return "No result yet: run `python benchmarks/precision.py --repeats 2`.\n"

    def median(precision: str, column: str) -> float:
        return statistics.median(float(r[column]) for r in rows if r["precision"] == precision)

    bf16 = {"True": ", native bfloat16", "False": ", no native bfloat16"}.get(rows[0].get("cpu_bf16", ""), "")
    quick = " (`--quick`: 1 epoch, 1 round)" if rows[0]["quick"] == "True" else ""
    lines = [f"The default demo{quick}, fp32 and bf16 alternating; {provenance_line(rows[0])}{bf16}.", "",
             "| precision | run | wall s | training s | scoring s | test acc % | val acc % |", "|" + "---|" * 7]
    lines += [f"| {r['precision']} | {int(r['repeat']) + 1} | {float(r['wall_s']):.1f} | {float(r['train_s']):.1f} "
              f"| {float(r['score_s']):.1f} | {100 * float(r['test_acc']):.2f} | {100 * float(r['val_acc']):.1f} |"
              for r in rows]
    acc = {k: 100 * median(k, "test_acc") for k in ("fp32", "bf16")}
    val = {k: 100 * median(k, "val_acc") for k in ("fp32", "bf16")}
    wall = {k: median(k, "wall_s") for k in ("fp32", "bf16")}
    points = acc["bf16"] - acc["fp32"]
    lines += ["", f"Test accuracy (medians): fp32 **{acc['fp32']:.2f} %**, bf16 **{acc['bf16']:.2f} %** ({points:+.2f} "
              f"points; goal: within {GOAL_POINTS:g} point, {met(abs(points) <= GOAL_POINTS)}); "
              f"validation {val['fp32']:.1f} % vs {val['bf16']:.1f} %. Wall time (medians) {wall['fp32']:.1f} s in "
              f"fp32, {wall['bf16']:.1f} s in bf16: bf16 takes **{wall['bf16'] / wall['fp32']:.2f}x** the fp32 time."]
    if any(r["busy"] for r in rows):
        lines[-1] += " WARNING: the machine was busy during a run; timings not comparable."
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/precision.csv)")
    args = p.parse_args()
    import torch

    stamp = {**provenance("cpu"), "defaults_used": True, "threads": args.threads,
             "cpu_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported()}
    out_csv = Path(args.out) if args.out else RESULTS / ("precision_quick.csv" if args.quick else "precision.csv")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for precision in ("fp32", "bf16"):
                warning = busy_warning()
                result = run_once(args.threads, args.quick, Path(tmp) / f"{precision}-{repeat}",
                                  ("--precision", precision))
                rows.append({"precision": precision, "repeat": repeat, "wall_s": round(result["wall_s"], 1),
                             "train_s": result["train_s"], "score_s": result["score_s"],
                             "test_acc": round(result["test_acc"], 4), "val_acc": result["val_acc"],
                             "quick": args.quick, "busy": warning or "", **stamp})
    columns = ["precision", "repeat", "wall_s", "train_s", "score_s", "test_acc", "val_acc"]
    print_table("The default demo by precision (CPU)", columns, [[r[c] for c in columns] for r in rows])
    write_csv(out_csv, rows)
    if not args.out and not args.quick:  # the published numbers: the default file, by this script only
        write_readme_block("precision", render(read_csv(out_csv)))
    acc = {k: statistics.median(r["test_acc"] for r in rows if r["precision"] == k) for k in ("fp32", "bf16")}
    wall = {k: statistics.median(r["wall_s"] for r in rows if r["precision"] == k) for k in ("fp32", "bf16")}
    print(f"precision: bf16 {100 * acc['bf16']:.1f} % vs fp32 {100 * acc['fp32']:.1f} % test accuracy "
          f"({100 * (acc['bf16'] - acc['fp32']):+.1f} points), bf16 time {wall['bf16'] / wall['fp32']:.2f} x fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
