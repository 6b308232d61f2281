"""`python -m e2vpt ...`: the command line over the library, the same calls the app makes.

train    train one method into a run directory (or --resume one)
eval     re-evaluate a saved run
runs     list the runs under a folder
predict  class probabilities of image files, from a run (any finished round) or an adapter
export   a run's round as an adapter folder (peft's layout; --format onnx adds model.onnx)
sweep    train many settings, methods and seeds on Ray Tune into one sweep folder;
         sweep export SWEEP / sweep open FILE: a finished sweep as one evidence file, and back
settings print every training setting (docs/SETTINGS.md)
pretrain make the shipped demo backbone
Errors a user can fix print one line and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import (GROUPS, TrainConfig, bounds_text, default_text, flag, kind, load_config_file, meta, settings,
                     settings_markdown)
from .errors import Cancelled, RunDirError, UserError
from .roots import run_argument


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` setting, generated from its declaration (help, choices, bounds).

    Defaults are None so that a --config file is only overridden by flags that were actually given;
    the help shows the real default."""
    p.add_argument("--config", help="YAML or JSON file of settings (the names below, dashes or underscores); "
                                    "flags override it")
    p.add_argument("--run-dir", help="where the run is written (default: <runs root>/<time>-<method>-<dataset>, "
                                     "the runs root being $E2VPT_RUNS_ROOT, else ./runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch "
                                                       "(a run folder, or the id of a run under the runs root)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_setting_arguments(p)


def add_setting_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per `TrainConfig` setting (but those in `skip`), grouped as in docs/SETTINGS.md."""
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    for f in settings():
        if f.name in skip:
            continue
        m, (base, choices, optional) = meta(f), kind(f)
        default = f"{default_text(f)} = {m['none_means']}" if f.default is None else default_text(f)
        if optional and f.default is not None:
            default += f"; unset = {m['none_means']}"
        extra = f"; {bounds_text(f)}" if bounds_text(f) and not choices else ""
        text = f"{m['help']} (default: {default}{extra})".replace("%", "%%")
        group = groups[m["group"]]
        if base is bool:
            group.add_argument(flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif choices:
            group.add_argument(flag(f), dest=f.name, choices=choices, default=None, help=text)
        else:
            group.add_argument(flag(f), dest=f.name, type=base, default=None, metavar=f.name.upper(), help=text)


def given_settings(args: argparse.Namespace) -> dict:
    """The settings given as flags (those left out are None and not returned)."""
    return {f.name: getattr(args, f.name) for f in settings() if getattr(args, f.name, None) is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    values.update(given_settings(args))
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from .launch import start_warnings
    from .runs import RunDir, new_run_id, runs_root, with_data_root
    from .workflow import train

    if args.resume:
        run = RunDir(run_argument(args.resume))
        if not run.exists():
            raise RunDirError(f"{run.path} holds no run to resume; start one with --run-dir")
        config = TrainConfig.from_dict(run.config())
        summary = train(config, run.path, resume=True, quiet=args.quiet)
    else:
        config = with_data_root(config_from_args(args))
        for warning in start_warnings(config):  # the form asks before starting; a command line just says so
            print(f"warning: {warning}", file=sys.stderr)
        run_dir = args.run_dir or runs_root() / new_run_id(config)
        summary = train(config, run_dir, quiet=args.quiet)
        print(f"run directory: {run_dir}")
    print(json.dumps({k: summary[k] for k in ("method", "dataset", "test_acc", "val_acc", "tuned_params",
                                              "tuned_pct", "wall_s")}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .training.build import evaluate_run

    print(json.dumps(evaluate_run(run_argument(args.run_dir), device=args.device), indent=1))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import list_runs, root_or_default, runs_root

    root = root_or_default(args.root, runs_root)
    rows = list_runs(root)
    if not rows:
        print(f"no runs under {root}")
    for r in rows:
        if r["state"] == "unreadable":
            print(f"{r['id']:<40} unreadable: {r['message']}")
            continue
        acc = f"{r['test_acc']:.3f}" if r.get("test_acc") is not None else "-"
        pct = f"{r['tuned_pct']:.3f}%" if r.get("tuned_pct") is not None else "-"
        print(f"{r['id']:<40} {r['state']:<12} {r['method'] or '-':<14} {r['dataset'] or '-':<14} acc {acc:<6} tuned {pct}")
    return 0


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="YAML or JSON sweep spec (base, methods, grid, random, samples, seeds, "
                                           "scheduler; docs/SWEEPS.md); the flags below override it")
    p.add_argument("--prepared", metavar="NAME", help="start from a prepared sweep of the Sweeps page: "
                                                       "'class comparison', 'learning rate x weight decay, VPT "
                                                       "protocol' or 'pruning search against pruning rounds'; the "
                                                       "flags below change it")
    p.add_argument("--out", help="the sweep folder (default: <runs root>/sweep-<time>); the same folder again "
                                 "continues the sweep, training only what did not finish")
    p.add_argument("--methods", nargs="+", help="methods to compare, e.g. linear vpt-deep e2vpt")
    p.add_argument("--grid", nargs="+", metavar="NAME=V1,V2", help="settings to sweep; every combination is a trial, "
                                                                  "e.g. lr=0.01,0.03 prompt_len=1,2,4,8")
    p.add_argument("--random", nargs="+", metavar="NAME=DIST:A:B",
                   help="random search: DIST is uniform, loguniform, randint or choice, e.g. lr=loguniform:1e-3:1e-1")
    p.add_argument("--samples", type=int, help="random draws per method (with --random)")
    p.add_argument("--seeds", nargs="+", type=int, help="train every configuration once per seed (default: 0)")
    p.add_argument("--scheduler", choices=("fifo", "asha"), help="asha stops trials behind on validation accuracy "
                                                                 "early (default: fifo, every trial to the end)")
    p.add_argument("--protocol", choices=("none", "vpt", "e2vpt-search"),
                   help="vpt: the trials are a search judged on validation accuracy (lr x weight decay unless you sweep "
                        "them), then each method's best is retrained on train + val with --final-seeds and reported "
                        "on test; e2vpt-search: beside the trials, E2VPT's official pruning search: phase 0 trained "
                        "and scored once, every (token level x segment level) retrained from it, the best on "
                        "validation (default: none)")
    p.add_argument("--final-seeds", nargs="+", type=int, help="seeds of protocol vpt's final trials (default: 0 1 2)")
    p.add_argument("--token-levels", nargs="+", type=float, metavar="SHARE",
                   help="protocol e2vpt-search: shares of the prompt tokens pruned (default: 0.1 0.2 ... 0.9)")
    p.add_argument("--segment-levels", nargs="+", type=float, metavar="SHARE",
                   help="protocol e2vpt-search: shares of the segments pruned (default: 0.1 0.2 ... 0.9)")
    p.add_argument("--name", help="a label for the app")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT) instead of starting one here")
    ray.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: all)")
    ray.add_argument("--gpus", type=int, help="GPUs of the local Ray (default: all visible)")
    ray.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs one trial takes (default 1; its torch "
                                                                     "threads)")
    ray.add_argument("--gpus-per-trial", type=float, help="GPUs one trial takes (default: 1 when Ray has GPUs)")
    ray.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    ray.add_argument("--ray-temp-dir", help="where a local Ray keeps its sockets and logs")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_setting_arguments(p, skip=("method", "seed"))


def sweep_spec_from_args(args: argparse.Namespace):
    """The spec: the file's, with the flags on top; None when nothing at all was given (continue --out)."""
    from .sweeps.spec import SweepSpec, parse_grid, parse_random

    if args.spec and args.prepared:
        raise UserError("give a spec file or --prepared, not both")
    values = load_config_file(args.spec) if args.spec else {}
    if args.prepared:
        from .sweeps.prepared import PREPARED

        if args.prepared not in PREPARED:
            raise UserError(f"no prepared sweep {args.prepared!r}; choose from {', '.join(map(repr, PREPARED))}")
        values = {**PREPARED[args.prepared]["spec"], "name": args.prepared}
    base = dict(values.get("base") or {}) if isinstance(values.get("base") or {}, dict) else values.get("base")
    flags = given_settings(args)
    if isinstance(base, dict):
        base.update(flags)
        base = _absolute_paths(base)
    given = {"methods": args.methods, "grid": parse_grid(args.grid) if args.grid else None,
             "random": parse_random(args.random) if args.random else None, "samples": args.samples,
             "seeds": args.seeds, "scheduler": args.scheduler, "name": args.name, "protocol": args.protocol,
             "final_seeds": args.final_seeds, "token_levels": args.token_levels, "segment_levels": args.segment_levels}
    if not args.spec and not args.prepared and not flags and all(v is None for v in given.values()):
        return None
    values.update({k: v for k, v in given.items() if v is not None})
    if base or "base" in values:
        values["base"] = base
    return SweepSpec.from_dict(values)


def _absolute_paths(base: dict) -> dict:
    """The data paths of a sweep's base settings made absolute as `train` makes them (trials run elsewhere)."""
    from .runs import with_data_root

    try:
        resolved = with_data_root(TrainConfig.from_dict({**base, "method": "linear"}))
    except UserError:
        return base  # the spec's own check names the problem
    return {**base, **{k: getattr(resolved, k) for k in ("data_root", "weights") if getattr(resolved, k)}}


def cmd_sweep(args: argparse.Namespace) -> int:
    from .runs import runs_root
    from .sweeps import SweepDir, run_sweep

    spec = sweep_spec_from_args(args)
    out = Path(args.out) if args.out else None
    if spec is None:
        if out is None or not SweepDir(out).exists():
            raise UserError("say what to sweep (a spec file, --methods, --grid, ...) or give --out of a sweep to "
                            "continue")
        spec = SweepDir(out).spec()
    out = out or runs_root() / time.strftime("sweep-%Y%m%d-%H%M%S")
    result = run_sweep(spec, out, address=args.address, cpus=args.cpus, gpus=args.gpus,
                       cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                       max_concurrent=args.max_concurrent, ray_temp_dir=args.ray_temp_dir, quiet=args.quiet)
    return 0 if result["state"] == "done" and not result["failed"] else (3 if result["state"] == "cancelled" else 1)


def evidence_parser() -> argparse.ArgumentParser:
    """`python -m e2vpt sweep export|open ...`: a sweep as one evidence file, and back (e2vpt.sweeps.evidence)."""
    parser = argparse.ArgumentParser(prog="python -m e2vpt sweep", description="a sweep as one evidence file")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("export", help="write a finished sweep's settings, records and provenance to one file")
    p.add_argument("sweep", help="a sweep folder, or the id of a sweep under the runs root")
    p.add_argument("--out", help="the file to write (default: ./<sweep>.evidence.json.gz)")
    p = sub.add_parser("open", help="unpack an evidence file as a sweep folder under the runs root")
    p.add_argument("file", help="an evidence file, or the name of one shipped with e2vpt (class-comparison, "
                                "defaults-report)")
    p.add_argument("--as", dest="name", help="the sweep's folder name (default: the file's sweep id)")
    p.add_argument("--root", help="runs folder (default: $E2VPT_RUNS_ROOT, else ./runs)")
    return parser


def cmd_evidence(args: argparse.Namespace) -> int:
    from .runs import root_or_default, runs_root
    from .sweeps import SweepDir, evidence

    if args.action == "export":
        folder = Path(args.sweep)
        if not SweepDir(folder).exists():
            folder = runs_root() / args.sweep
        if not SweepDir(folder).exists():
            raise UserError(f"{args.sweep} is not a sweep folder (no sweep.json), here or under {runs_root()}")
        out = evidence.export(SweepDir(folder), args.out)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
        return 0
    root = root_or_default(args.root, runs_root)
    path, name = Path(args.file), args.name
    if not path.exists() and args.file in evidence.SHIPPED:  # a shipped file, by its name
        path, name = evidence.SHIPPED_DIR / f"{args.file}{evidence.SUFFIX}", name or f"shipped-{args.file}"
    sweep = evidence.open_evidence(path, root, name)
    stale = evidence.opened_from(sweep)["stale"]
    print(f"opened {sweep.path}: {len(sweep.read()['trials'])} trial(s); the Sweeps page shows it as {sweep.id}")
    from .sweeps import frontier

    for text in frontier.verdicts(frontier.summary(frontier.points(sweep))).values():
        print(text)
    if stale:
        print(f"note: {len(stale)} trial(s) ran with settings today's defaults no longer give, e.g. {stale[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m e2vpt", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a method into a run directory")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="re-evaluate a saved run")
    p.add_argument("run_dir", help="a run folder, or the id of a run under the runs root")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--root", help="runs folder (default: $E2VPT_RUNS_ROOT, else ./runs)")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("sweep", help="train many settings, methods and seeds on Ray Tune into one sweep folder; "
                                     "`sweep export SWEEP` and `sweep open FILE` carry a finished one as one file")
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("settings", help="print every training setting as a markdown table (docs/SETTINGS.md)")
    p.set_defaults(func=lambda args: print(settings_markdown()))
    from .deploy.commands import add_export_arguments, add_predict_arguments, cmd_export, cmd_predict

    p = sub.add_parser("predict", help="class probabilities of image files, from a run or an adapter")
    add_predict_arguments(p)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="a run's round as an adapter folder to share (and, --format onnx, to deploy)")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)
    from .demo_backbone import add_pretrain_arguments, run_pretrain

    p = sub.add_parser("pretrain", help="pretrain the shipped demo backbone")
    add_pretrain_arguments(p)
    p.set_defaults(func=run_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"] and argv[1:2] in (["export"], ["open"]):  # `sweep export|open`, not a spec file
        args = evidence_parser().parse_args(argv[1:])
        args.func = cmd_evidence
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # the trainer says what was kept; elsewhere nothing was under way
        print(f"stopped: {exc}" if exc.args else "stopped by the user", file=sys.stderr)
        return 130
    except Cancelled as exc:
        print(exc if exc.args else "cancelled", file=sys.stderr)
        return 3
