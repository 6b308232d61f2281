"""Wall time of the default offline demo: `python -m e2vpt train --backbone demo --dataset digits --method e2vpt`.

Target (issue 6): <= 90 s on 2 CPU cores. The command is run exactly as a user types it (all
`TrainConfig` defaults: 4 epochs, 2 pruning rounds with 4 retraining epochs each, batch 64, AdamW),
in a fresh process started from the repository root, with `OMP_NUM_THREADS=<threads>` so torch's
intra-op thread count is explicit (the trainer records what torch used as `torch_threads` in
summary.json; it is printed and checked). The time is the whole process, from `exec` to exit:
interpreter start, imports, data, backbone, training, two scoring passes, rewinds, evaluations and
writing the run directory. The breakdown comes from the run's own records (summary.json,
pruning.json).

    python benchmarks/demo_time.py                 # once; --repeats 3 reports the median
    python benchmarks/demo_time.py --quick         # smoke test: 1 epoch, 1 round, 1 retrain epoch

Writes benchmarks/results/demo_time.csv (one row per repeat, each with the commit, the defaults'
digest and the machine) and, for that default file, the README block `demo_time`: the latest
invocation's runs (`render`). The last line is exactly `demo: X.X s`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, append_csv_row, busy_warning, cpu_model, met, print_table, provenance,  # noqa: E402
                    provenance_line, read_csv, start_afresh_unless_current, write_readme_block)

COMMAND = ["-m", "e2vpt", "train", "--backbone", "demo", "--dataset", "digits", "--method", "e2vpt"]
QUICK = ["--epochs", "1", "--retrain-epochs", "1", "--prune-rounds", "1"]
TARGET_S = 90.0
FIELDS = ["time", "invocation", "wall_s", "in_fit_s", "train_s", "score_s", "startup_s", "test_acc", "val_acc",
          "tuned_pct", "tuned_pct_no_head", "tuned_params", "selected_round", "rounds_test_acc", "rounds_tuned_pct",
          "torch_threads", "threads_env", "pretrained", "quick", "busy", "defaults_used",
          "commit", "defaults", "date", "cpu", "cores", "torch", "threads", "device", "python"]


# --------------------------------------------------------------------------------------------------
def invocations(rows: list[dict]) -> list[list[dict]]:
    """The rows grouped by the command that wrote them: by `invocation`, or for rows written before that
    column existed, consecutive rows each finished within its own wall time (+30 s) of the previous."""
    def finished(r):
        return time.mktime(time.strptime(r["time"], "%Y-%m-%dT%H:%M:%S"))

    groups: list[list[dict]] = []
    for r in rows:
        prev = groups[-1][-1] if groups else None
        if prev is not None and (r.get("invocation") == prev.get("invocation") if r.get("invocation") else
                                 finished(r) - finished(prev) <= float(r["wall_s"]) + 30):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `demo_time`: the latest invocation's runs, from demo_time.csv's rows."""
    if not rows:
        return "No result yet: run `python benchmarks/demo_time.py --repeats 3`.\n"
    runs = invocations(rows)[-1]
    last = runs[-1]
    wall = statistics.median(float(r["wall_s"]) for r in runs)
    quick = " (`--quick`: 1 epoch, 1 round of 1 retraining epoch)" if last["quick"] == "True" else ""
    lines = [f"Latest measurement: {len(runs)} run(s) of the default demo command{quick}, "
             f"`OMP_NUM_THREADS={last['threads_env']}`; {provenance_line(last)}.", "",
             "| run | wall s | start + setup s | training s | scoring s | other s | test acc | tuned % |",
             "|" + "---|" * 8]
    for i, r in enumerate(runs, 1):
        other = float(r["in_fit_s"]) - float(r["train_s"]) - float(r["score_s"])
        lines.append(f"| {i} | {float(r['wall_s']):.1f} | {float(r['startup_s']):.1f} | {float(r['train_s']):.1f} "
                     f"| {float(r['score_s']):.1f} | {other:.1f} | {float(r['test_acc']):.3f} "
                     f"| {float(r['tuned_pct']):.3f} |")
    lines += ["", f"Median **{wall:.1f} s** (target <= {TARGET_S:.0f} s on 2 cores: "
              f"{met(wall <= TARGET_S)}); test accuracy **{float(last['test_acc']):.3f}** with "
              f"**{float(last['tuned_pct']):.3f} %** of the backbone tuned (head included; "
              f"{float(last['tuned_pct_no_head']):.3f} % without), round {last['selected_round']} kept."]
    if last.get("rounds_test_acc"):
        accs, pcts = last["rounds_test_acc"].split(), last["rounds_tuned_pct"].split()
        lines[-1] += (f" Rounds {'/'.join(map(str, range(len(accs))))}: test accuracy {' / '.join(accs)} "
                      f"at {' / '.join(pcts)} % tuned.")
    if last["pretrained"] == "False":
        lines[-1] += " The demo weights were missing (random-init backbone): accuracy meaningless."
    if any(r["busy"] == "True" for r in runs):
        lines[-1] += " WARNING: the machine was busy during a run; timings not comparable."
    return "\n".join(lines) + "\n"


def run_once(threads: int, quick: bool, run_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    from e2vpt.models.backbones import DEMO_WEIGHTS

    cmd = [sys.executable, *COMMAND, *extra, "--run-dir", str(run_dir), "--quiet"]
    pretrained = DEMO_WEIGHTS.is_file()
    if quick:
        cmd += QUICK
    if not pretrained:  # before the shipped weights exist (smoke tests only): random init
        cmd += ["--no-pretrained"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"the demo command failed ({out.returncode}):\n{out.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    pruning = json.loads((run_dir / "pruning.json").read_text())
    return {"wall_s": wall, "in_fit_s": summary["wall_s"], "train_s": summary["train_s"], "score_s": summary["score_s"],
            "startup_s": wall - summary["wall_s"], "test_acc": summary["test_acc"], "val_acc": summary["val_acc"],
            "tuned_pct": summary["tuned_pct"], "tuned_pct_no_head": summary["tuned_pct_no_head"],
            "tuned_params": summary["tuned_params"], "selected_round": summary["selected_round"],
            "torch_threads": summary["torch_threads"], "threads_env": threads, "pretrained": pretrained,
            "quick": quick, "rounds": pruning["rounds"], "command": " ".join(["python", *cmd[1:]]),
            "rounds_test_acc": " ".join(f"{rd['test_acc']:.3f}" for rd in pruning["rounds"]),
            "rounds_tuned_pct": " ".join(f"{rd['tuned_pct']:.3f}" for rd in pruning["rounds"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for the demo process (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs; the median is reported")
    p.add_argument("--quick", action="store_true", help="smoke test with 1 epoch and 1 pruning round")
    p.add_argument("--keep", default=None, help="keep the run directories under this folder")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/demo_time.csv)")
    args = p.parse_args(argv)
    out_csv = Path(args.out) if args.out else RESULTS / ("demo_time_quick.csv" if args.quick else "demo_time.csv")
    start_afresh_unless_current(out_csv)
    stamp = {**provenance("cpu"), "invocation": time.strftime("%Y-%m-%dT%H:%M:%S"), "defaults_used": True}

    warning = busy_warning()
    if warning:
        print(warning)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; demo process runs with OMP_NUM_THREADS={args.threads}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        for i in range(args.repeats):
            run_dir = base / f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{i}"
            r = run_once(args.threads, args.quick, run_dir)
            r.update(stamp, busy=bool(warning or busy_warning()), time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     threads=r["torch_threads"])
            results.append(r)
            append_csv_row(out_csv, r, FIELDS)
            print(f"run {i + 1}/{args.repeats}: {r['wall_s']:.1f} s", file=sys.stderr, flush=True)
    r = results[-1]
    print(f"command: {r['command'].replace(str(run_dir), 'RUN_DIR')}")
    if not r["pretrained"]:
        print("NOTE: demo weights missing, ran with --no-pretrained (accuracy meaningless)")
    if r["torch_threads"] != args.threads:
        print(f"NOTE: torch used {r['torch_threads']} threads, not {args.threads}")
    rows = [[f"{i + 1}", f"{x['wall_s']:.1f}", f"{x['startup_s']:.1f}", f"{x['train_s']:.1f}", f"{x['score_s']:.1f}",
             f"{x['in_fit_s'] - x['train_s'] - x['score_s']:.1f}", f"{x['test_acc']:.3f}", f"{x['tuned_pct']:.3f}",
             f"{x['tuned_pct_no_head']:.3f}", str(x["torch_threads"])] for i, x in enumerate(results)]
    print_table("default demo run (e2vpt, digits, demo backbone)",
                ["run", "wall s", "start+setup s", "train s", "score s", "other s", "test acc", "tuned %",
                 "tuned % (no head)", "threads"], rows)
    phases = [[str(rd["round"]), f"{rd['train_s']:.1f}", f"{rd['score_s']:.1f}", f"{rd['val_acc']:.3f}",
               f"{rd['test_acc']:.3f}", str(rd["kept_tokens"]), f"{rd['tuned_pct']:.3f}"] for rd in r["rounds"]]
    print_table("per round (last run)", ["round", "train s", "score s", "val acc", "test acc", "kept tokens", "tuned %"],
                phases)
    wall = statistics.median(x["wall_s"] for x in results)
    print(f"target <= {TARGET_S:.0f} s on 2 cores: {met(wall <= TARGET_S)}; "
          f"test acc {r['test_acc']:.3f}, tuned {r['tuned_pct']:.3f}% of the backbone (head included)")
    if not args.out and not args.quick:  # the published numbers: the default file, by this script only
        write_readme_block("demo_time", render(read_csv(out_csv)))
    print(f"demo: {wall:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
