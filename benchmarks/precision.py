"""The default demo in fp32 and in bf16 on the CPU: accuracy and time (issue 17).

bf16 autocast is what a GPU runs by default (`--precision auto`); on the CPU it is opt-in. This runs
the default demo (`benchmarks/demo_time.py`'s command: 4 epochs, 2 pruning rounds) once per precision,
alternating, `--repeats` times, and reports each run's test accuracy and wall time. The goal: bf16
within 1 point of fp32. Time is reported, not judged: whether bf16 is faster on a CPU depends on its
bfloat16 instructions (AVX512-BF16, AMX) and on how small the demo's matrices are.

    python benchmarks/precision.py                  # once each
    python benchmarks/precision.py --quick          # smoke test: 1 epoch, 1 round

Writes benchmarks/results/precision.csv. Last line: `precision: bf16 X % vs fp32 Y % test accuracy
(Z points), bf16 time R x fp32`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, busy_warning, cpu_model, print_table, write_csv  # noqa: E402
from demo_time import run_once  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/precision.csv)")
    args = p.parse_args()
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
                             "quick": args.quick, "cpu": cpu_model(), "busy": warning or ""})
    columns = ["precision", "repeat", "wall_s", "train_s", "score_s", "test_acc", "val_acc"]
    print_table("The default demo by precision (CPU)", columns, [[r[c] for c in columns] for r in rows])
    write_csv(Path(args.out) if args.out else RESULTS / "precision.csv", rows)
    acc = {k: statistics.median(r["test_acc"] for r in rows if r["precision"] == k) for k in ("fp32", "bf16")}
    wall = {k: statistics.median(r["wall_s"] for r in rows if r["precision"] == k) for k in ("fp32", "bf16")}
    print(f"precision: bf16 {100 * acc['bf16']:.1f} % vs fp32 {100 * acc['fp32']:.1f} % test accuracy "
          f"({100 * (acc['bf16'] - acc['fp32']):+.1f} points), bf16 time {wall['bf16'] / wall['fp32']:.2f} x fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
