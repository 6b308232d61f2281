"""The paper's table in miniature: every method x the built-in tasks on the demo backbone, offline.

Protocol (fixed before the table ran; the test split never chooses anything):
  - backbone `demo` (shipped weights), every method from the same engine (`e2vpt.train`,
    in this process), `TrainConfig` defaults except the epochs, rounds and lr named here (p, l,
    batch, optimiser, schedule: today's defaults, whose digest every row records);
  - the same epochs for every training phase: `--epochs` (default 3) for every method, and for
    e2vpt also after each pruning round (`--retrain-epochs` defaults to `--epochs`, the paper's
    recipe of retraining the rewound survivors as long as the first training; the CLI's demo uses
    2 to stay fast). E2VPT's extra phases are part of the method and of its cost (s/run column);
  - learning rate: the method's default rate (`e2vpt.methods`) times each `--lr-grid` multiplier (default 1 and 3), run on
    the first seed; the lr with the best *validation* accuracy (the run's selected round for
    e2vpt) is kept per method x task (ties: the multiplier closest to 1, then the smaller lr);
    the other seeds then run at that lr and the first seed's run at that lr is reused. Why {1, 3}:
    the 45-minute budget allows two points; a three-point grid {0.3, 1, 3} on digits (seed 0,
    validation only) never chose 0.3 and chose or tied 3 for four of six methods;
  - reported: test accuracy mean and sample std (ddof=1) over the seeds at the chosen lr; the
    average over tasks of those means; tuned parameters as % of the backbone's, head included
    (`tuned_pct`) and without the head (the paper's habit), averaged over tasks;
  - seeds change initialisation, data order and dropout, never the data (fixed VTAB-style splits).

Budget: on 2 idle cores one run takes about 8 s (linear), 17 s (full, VPT, e2vpt-noprune) and 56 s
(e2vpt: 3 phases + 2 scoring passes) at 3 epochs; the default table is 5 tasks x 6 methods x
(2 grid + 2 more seeds) = 120 runs, about 44 minutes.

Resumable: every finished run is appended to `mini_table_runs.csv` at once (with the commit, the
defaults' digest and the machine), and configurations already there with today's defaults are
skipped, so an interrupted table continues where it stopped (same flags); rows from before results
carried provenance, or from other defaults, are dropped from the file when a table starts.

    python benchmarks/mini_table.py                              # the full table
    python benchmarks/mini_table.py --tasks digits --methods linear e2vpt --seeds 0 1
    python benchmarks/mini_table.py --quick                      # smoke test, written to a temp folder
    python benchmarks/mini_table.py --plan                       # list what would run, with an estimate

Writes benchmarks/results/mini_table_runs.csv (every run), mini_table.csv (aggregates, stamped with
the runs' commits and CPUs) and mini_table.md; the default table (no option) also writes the README
block `mini_table` (`render`). The last line is exactly `mean acc: e2vpt=X vpt-deep=X linear=X`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, append_csv_row, busy_warning, cpu_model, defaults_digest, markdown_table,  # noqa: E402
                    print_table, provenance, read_csv, set_threads, write_csv, write_readme_block, write_text)
from common import provenance_line, start_afresh_unless_current  # noqa: E402

from e2vpt.methods import METHODS  # noqa: E402  (the registry: every method, in its order)
TASKS = ("digits", "fashion-mnist", "dsprites-loc", "dsprites-ori", "clevr-count")
DEFAULT_EPOCHS = 3
DEFAULT_GRID = (1.0, 3.0)
RUN_FIELDS = ["task", "method", "seed", "lr", "lr_mult", "epochs", "retrain_epochs", "prune_rounds", "stage",
              "val_acc", "test_acc", "tuned_pct", "tuned_pct_no_head", "tuned_params", "selected_round",
              "wall_s", "busy", "torch_threads", "error", "finished", "variant", "defaults_used", "commit", "defaults", "date",
              "cpu", "cores", "torch", "threads", "device", "python"]
STAMP = ["defaults_used", "commit", "defaults", "date", "cpu", "cores", "torch", "threads", "device", "python"]


def shared_machine(threads: int) -> bool:
    """Whether other work shared the machine during the run just ended: the load over the last minute
    (which covers most runs) above this run's own threads, or another heavy process right now."""
    return os.getloadavg()[0] > threads + 1 or busy_warning() is not None


def key(task, method, seed, lr, epochs, retrain, rounds, variant="") -> tuple:
    return (task, method, int(seed), f"{float(lr):.3g}", int(epochs), int(retrain), int(rounds), variant or "")


def grid_lr(method: str, mult: float) -> float:
    """The method's default rate x mult, rounded to 3 significant digits (the value the run uses and the CSV keeps)."""
    from e2vpt.methods import method_named

    return float(f"{method_named(method).lr * mult:.3g}")


def row_key(r: dict) -> tuple:
    return key(r["task"], r["method"], r["seed"], r["lr"], r["epochs"], r["retrain_epochs"], r["prune_rounds"],
               r.get("variant"))


def available_tasks() -> list[str]:
    from e2vpt.data.builtin import fashion_mnist_available

    return [t for t in TASKS if t != "fashion-mnist" or fashion_mnist_available()]


def run_one(task, method, seed, lr, args, pretrained) -> dict:
    from e2vpt.config import TrainConfig
    from e2vpt.errors import UserError
    from e2vpt import train

    cfg = TrainConfig(method=method, backbone="demo", pretrained=pretrained, dataset=task, epochs=args.epochs,
                      retrain_epochs=args.retrain_epochs, prune_rounds=args.prune_rounds, lr=lr, seed=seed,
                      device=args.device, **args.overrides)
    t0 = time.perf_counter()
    try:
        s = train(cfg, None, quiet=True)
    except UserError as exc:  # e.g. the loss diverged at a high lr: recorded, never selected
        return {"val_acc": float("nan"), "test_acc": float("nan"), "error": str(exc)[:200],
                "wall_s": round(time.perf_counter() - t0, 2)}
    return {"val_acc": s["val_acc"], "test_acc": s["test_acc"], "tuned_pct": s["tuned_pct"],
            "tuned_pct_no_head": s["tuned_pct_no_head"], "tuned_params": s["tuned_params"],
            "selected_round": s["selected_round"], "wall_s": round(time.perf_counter() - t0, 2),
            "torch_threads": s["torch_threads"], "error": ""}


def _f(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def choose_lr(grid_rows: list[dict]) -> dict | None:
    """Best validation accuracy; ties go to the multiplier closest to 1 (then the smaller lr)."""
    ok = [r for r in grid_rows if not math.isnan(_f(r["val_acc"]))]
    if not ok:
        return None
    best = max(_f(r["val_acc"]) for r in ok)
    tied = [r for r in ok if _f(r["val_acc"]) >= best - 1e-12]
    return min(tied, key=lambda r: (abs(math.log(_f(r["lr_mult"]))), _f(r["lr"])))


def aggregate(rows: list[dict], args) -> tuple[list[dict], dict]:
    """Per method x task at the chosen lr: mean/std over seeds; per method: means over tasks."""

    index = {row_key(r): r for r in rows}
    per_cell = []
    for method in args.methods:
        for task in args.tasks:
            grid = [index.get(key(task, method, args.seeds[0], grid_lr(method, m), args.epochs,
                                  args.retrain_epochs, args.prune_rounds, args.variant)) for m in args.lr_grid]
            if any(g is None for g in grid):
                continue
            chosen = choose_lr(grid)
            if chosen is None:
                continue
            runs = [index.get(key(task, method, s, chosen["lr"], args.epochs, args.retrain_epochs,
                                  args.prune_rounds, args.variant)) for s in args.seeds]
            runs = [r for r in runs if r is not None and not math.isnan(_f(r["test_acc"]))]
            accs = [_f(r["test_acc"]) for r in runs]
            per_cell.append({
                "method": method, "task": task, "lr": _f(chosen["lr"]), "lr_mult": _f(chosen["lr_mult"]),
                "seeds": len(accs), "complete": len(accs) == len(args.seeds),
                "test_mean": statistics.mean(accs), "test_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "val_mean": statistics.mean(_f(r["val_acc"]) for r in runs),
                "tuned_pct": statistics.mean(_f(r["tuned_pct"]) for r in runs),
                "tuned_pct_no_head": statistics.mean(_f(r["tuned_pct_no_head"]) for r in runs),
                "wall_s": statistics.mean(_f(r["wall_s"]) for r in runs),
                "busy_runs": sum(r.get("busy") == "True" for r in runs),
                "run_commits": " ".join(sorted({r.get("commit") or "?" for r in runs})),
                "run_cpus": "; ".join(sorted({r.get("cpu") or "?" for r in runs}))})
    return per_cell, method_means(per_cell)


def method_means(cells: list[dict]) -> dict:
    """Per method, over its complete tasks: mean test accuracy, tuned %, s/run (cells as numbers or strings)."""
    means = {}
    for method in dict.fromkeys(c["method"] for c in cells):
        done = [c for c in cells if c["method"] == method and str(c["complete"]) == "True"]
        if done:
            means[method] = {k: statistics.mean(_f(c[k]) for c in done)
                             for k in ("test_mean", "tuned_pct", "tuned_pct_no_head", "wall_s")}
            means[method]["mean"] = means[method].pop("test_mean")
    return means


def table(cells: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the published table, from per-cell rows (numbers, or mini_table.csv's strings)."""
    cell = {(c["method"], c["task"]): c for c in cells}
    tasks, means = list(dict.fromkeys(c["task"] for c in cells)), method_means(cells)
    rows = []
    for m in dict.fromkeys(c["method"] for c in cells):
        line = [m]
        for t in tasks:
            c = cell.get((m, t))
            line.append("-" if c is None else f"{100 * _f(c['test_mean']):.1f} ± {100 * _f(c['test_std']):.1f}"
                        + ("" if str(c["complete"]) == "True" else f" ({c['seeds']} seeds)"))
        pm = means.get(m)
        line += [f"{100 * pm['mean']:.1f}", f"{pm['tuned_pct']:.3f}", f"{pm['tuned_pct_no_head']:.3f}",
                 f"{pm['wall_s']:.0f}"] if pm else ["-"] * 4
        rows.append(line)
    return ["method", *tasks, "mean", "tuned %", "tuned % no head", "s/run"], rows


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `mini_table`, from mini_table.csv's rows: the table and the goals' answers."""
    if not rows:
        return "No result yet: run `python benchmarks/mini_table.py`.\n"
    line = provenance_line(rows[0])
    commits = sorted({c for r in rows for c in r.get("run_commits", "").split()})
    cpus = sorted({c for r in rows for c in r.get("run_cpus", "").split("; ") if c})
    if rows[0].get("commit") and (commits != [rows[0]["commit"]] or cpus != [rows[0]["cpu"]]):
        line += f"; its runs at commit {', '.join(f'`{c}`' for c in commits)} on {'; '.join(cpus)}"
    cols, body = table(rows)
    text = [f"Table written from its runs: {line}.", "", markdown_table(cols, body).rstrip("\n")]
    m = method_means(rows)
    if all(k in m for k in ("e2vpt", "vpt-deep", "linear")):
        e2, vd, lin = m["e2vpt"], m["vpt-deep"], m["linear"]
        yes = lambda ok: "yes" if ok else "no"  # noqa: E731
        text += ["", f"Goals, on the mean over tasks: E2VPT >= VPT-deep: {yes(e2['mean'] >= vd['mean'])} "
                 f"({100 * e2['mean']:.1f} vs {100 * vd['mean']:.1f}); VPT-deep >= linear probing: "
                 f"{yes(vd['mean'] >= lin['mean'])} ({100 * vd['mean']:.1f} vs {100 * lin['mean']:.1f}); E2VPT's "
                 f"tuned parameters <= VPT-deep's (head excluded): "
                 f"{yes(e2['tuned_pct_no_head'] <= vd['tuned_pct_no_head'])} ({e2['tuned_pct_no_head']:.3f} % vs "
                 f"{vd['tuned_pct_no_head']:.3f} %)."]
    busy = sum(int(r.get("busy_runs") or 0) for r in rows)
    if busy:
        text += ["", f"s/run: {busy} of {sum(int(r['seeds']) for r in rows)} reported runs shared the machine with other "
                 "work, so that column is not an idle machine's time; the accuracies do not depend on it."]
    return "\n".join(text) + "\n"


def report(rows: list[dict], args, out_dir: Path, final: bool) -> dict:
    per_cell, per_method = aggregate(rows, args)
    write_csv(out_dir / "mini_table.csv", [{**c, **args.stamp} for c in per_cell],
              ["method", "task", "lr", "lr_mult", "seeds", "complete", "test_mean", "test_std", "val_mean",
               "tuned_pct", "tuned_pct_no_head", "wall_s", "busy_runs", "run_commits", "run_cpus", *STAMP])
    cell = {(c["method"], c["task"]): c for c in per_cell}
    cols, table_rows = table(per_cell)
    tasks = cols[1:-4]
    lr_cols = ["method", *tasks]
    lr_table = [[m, *[("-" if (m, t) not in cell else f"{cell[(m, t)]['lr']:.3g} (x{cell[(m, t)]['lr_mult']:g})")
                      for t in tasks]] for m in args.methods]
    if final:
        print_table(f"test accuracy % (mean ± std over seeds {args.seeds}), demo backbone, {args.epochs} epochs"
                    + (f", {args.variant}" if args.variant else ""),
                    cols, table_rows)
        print_table("learning rate chosen on validation (seed %d)" % args.seeds[0], lr_cols, lr_table)
    md = [f"# Mini table (demo backbone)\n\nTest accuracy %, mean ± sample std over seeds {args.seeds}; "
          f"`--epochs {args.epochs}` for every method (e2vpt then {args.prune_rounds} pruning rounds x "
          f"{args.retrain_epochs} retraining epochs); lr = the method's default rate x one of {list(args.lr_grid)}, "
          f"chosen per method x task by validation accuracy on seed {args.seeds[0]}. 'mean' averages the "
          f"per-task means over tasks; tuned % is of the backbone's {1.80:.2f} M parameters, averaged over "
          f"tasks. Machine: {cpu_model()}, `torch.set_num_threads({args.threads})`."
          + (f" Variant (TrainConfig overrides): `{args.variant}`." if args.variant else "") + "\n\n",
          markdown_table(cols, table_rows), "\nChosen learning rates:\n\n", markdown_table(lr_cols, lr_table)]
    write_text(out_dir / "mini_table.md", "".join(md))
    return per_method


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=None, help="built-in tasks (default: all present)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the first one chooses the lr")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="first-phase epochs, every method")
    p.add_argument("--retrain-epochs", type=int, default=None,
                   help="e2vpt: epochs after each pruning round (default: --epochs, every phase equally long)")
    p.add_argument("--prune-rounds", type=int, default=2, help="e2vpt: pruning rounds")
    p.add_argument("--lr-grid", nargs="+", type=float, default=list(DEFAULT_GRID),
                   help="multipliers of the method's default rate tried on the first seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results (--quick: a temp folder)")
    p.add_argument("--quick", action="store_true", help="smoke test: digits, seed 0, 1 epoch, 1 round, one lr")
    p.add_argument("--plan", action="store_true", help="print the runs still to do and an estimate, then stop")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig override for every run (repeatable), e.g. --set kv_shared=true "
                   "--set prune_ratio=0.25: an investigation variant, kept apart in the CSV (`variant` column); "
                   "use with --out-dir")
    args = p.parse_args(argv)
    published = vars(args) == vars(p.parse_args([]))  # the README's table: the default protocol, written here
    if args.quick:
        args.tasks = args.tasks or ["digits"]
        args.seeds, args.epochs, args.retrain_epochs, args.prune_rounds, args.lr_grid = [0], 1, 1, 1, [1.0]
    args.tasks = args.tasks or available_tasks()
    if args.retrain_epochs is None:
        args.retrain_epochs = args.epochs
    args.overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        try:
            args.overrides[field.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            args.overrides[field.strip().replace("-", "_")] = value
    args.variant = ";".join(f"{k}={json.dumps(v)}" for k, v in sorted(args.overrides.items()))
    out_dir = Path(args.out_dir) if args.out_dir else (
        Path(tempfile.gettempdir()) / "e2vpt_mini_table_quick" if args.quick else RESULTS)
    runs_csv = out_dir / "mini_table_runs.csv"

    from e2vpt.models.backbones import DEMO_WEIGHTS

    threads = set_threads(args.threads)
    pretrained = DEMO_WEIGHTS.is_file()
    if not pretrained:
        print("NOTE: demo weights missing: random-init backbone (smoke test only, accuracies meaningless)")
    warning = busy_warning()
    if warning:
        print(warning)
    if not args.plan:
        start_afresh_unless_current(runs_csv)
    args.stamp = {**provenance(args.device), "defaults_used": True, "threads": threads}
    rows = [r for r in read_csv(runs_csv) if r.get("defaults") == defaults_digest()]  # reused: today's defaults
    done = {row_key(r) for r in rows}

    # the plan: grid on the first seed per (task, method), then the other seeds at the chosen lr
    grid_todo = [(t, m, args.seeds[0], grid_lr(m, mult), mult) for t in args.tasks for m in args.methods
                 for mult in args.lr_grid]
    grid_todo = [g for g in grid_todo
                 if key(*g[:4], args.epochs, args.retrain_epochs, args.prune_rounds, args.variant) not in done]
    seeds_todo = len(args.tasks) * len(args.methods) * (len(args.seeds) - 1)
    walls = {}
    for r in rows:
        walls.setdefault(r["method"], []).append(_f(r["wall_s"]))
    guess = {m: statistics.median(walls[m]) if m in walls else (60.0 if m == "e2vpt" else 25.0) for m in args.methods}
    estimate = sum(guess[g[1]] for g in grid_todo) + (len(args.seeds) - 1) * len(args.tasks) * sum(guess.values())
    print(f"{len(rows)} runs already in {runs_csv}; to do: {len(grid_todo)} lr-grid runs + up to {seeds_todo} "
          f"seed runs (estimate <= {estimate / 60:.0f} min); torch.set_num_threads({threads})", flush=True)
    if args.plan:
        for g in grid_todo:
            print(f"  grid {g[0]} {g[1]} seed {g[2]} lr {g[3]:.3g}")
        return 0

    started = time.perf_counter()
    n_done = 0

    def record(task, method, seed, lr, mult, stage):
        nonlocal n_done
        k = key(task, method, seed, lr, args.epochs, args.retrain_epochs, args.prune_rounds, args.variant)
        if k in done:
            return
        result = run_one(task, method, seed, lr, args, pretrained)
        row = {"task": task, "method": method, "seed": seed, "lr": f"{lr:.3g}", "lr_mult": mult,
               "epochs": args.epochs, "retrain_epochs": args.retrain_epochs, "prune_rounds": args.prune_rounds,
               "stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "variant": args.variant, **result,
               "busy": shared_machine(args.threads), **args.stamp}
        append_csv_row(runs_csv, row, RUN_FIELDS)
        rows.append({k2: str(v) for k2, v in row.items()})
        done.add(k)
        n_done += 1
        print(f"[{time.perf_counter() - started:6.0f} s] {task:<13} {method:<13} seed {seed} lr {lr:<7.3g} "
              f"val {result['val_acc']:.3f} test {result['test_acc']:.3f} ({result['wall_s']:.0f} s)"
              f"{' ' + result['error'] if result['error'] else ''}", file=sys.stderr, flush=True)

    for task in args.tasks:
        for method in args.methods:
            for mult in args.lr_grid:
                record(task, method, args.seeds[0], grid_lr(method, mult), mult, "grid")
            grid = [r for r in rows if row_key(r) in {key(task, method, args.seeds[0], grid_lr(method, m),
                                                           args.epochs, args.retrain_epochs, args.prune_rounds,
                                                           args.variant)
                                                       for m in args.lr_grid}]
            chosen = choose_lr(grid)
            if chosen is None:
                print(f"{task} {method}: every lr failed; skipped", file=sys.stderr)
                continue
            for seed in args.seeds[1:]:
                record(task, method, seed, _f(chosen["lr"]), _f(chosen["lr_mult"]), "seed")
            report(rows, args, out_dir, final=False)

    per_method = report(rows, args, out_dir, final=True)
    if published:
        write_readme_block("mini_table", render(read_csv(out_dir / "mini_table.csv")))
    print(f"wrote {runs_csv}, {out_dir / 'mini_table.csv'}, {out_dir / 'mini_table.md'}; "
          f"{n_done} runs this time in {(time.perf_counter() - started) / 60:.1f} min")
    if warning:
        print(warning)
    get = lambda m, f="mean": per_method[m][f] if m in per_method else float("nan")  # noqa: E731
    if all(m in per_method for m in ("e2vpt", "vpt-deep", "linear")):
        print(f"goals: e2vpt >= vpt-deep: {'yes' if get('e2vpt') >= get('vpt-deep') else 'NO'}; vpt-deep >= linear: "
              f"{'yes' if get('vpt-deep') >= get('linear') else 'NO'}; e2vpt tuned <= vpt-deep tuned (no head "
              f"{get('e2vpt', 'tuned_pct_no_head'):.3f}% vs {get('vpt-deep', 'tuned_pct_no_head'):.3f}%): "
              f"{'yes' if get('e2vpt', 'tuned_pct_no_head') <= get('vpt-deep', 'tuned_pct_no_head') else 'NO'}")
    print(f"mean acc: e2vpt={get('e2vpt'):.3f} vpt-deep={get('vpt-deep'):.3f} linear={get('linear'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
