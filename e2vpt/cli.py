"""`python -m e2vpt ...`: the command line over the library, the same calls the app makes.

train    train one method into a run directory (or --resume one)
eval     re-evaluate a saved run
runs     list the runs under a folder
settings print every training setting (docs/SETTINGS.md)
pretrain make the shipped demo backbone
Errors a user can fix print one line and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import (GROUPS, TrainConfig, bounds_text, default_text, flag, kind, load_config_file, meta, settings,
                     settings_markdown)
from .errors import Cancelled, RunDirError, UserError

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
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    for f in settings():
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    for f in settings():
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig.from_dict(values)


def run_argument(value: str) -> Path:
    """A run named on the command line: a folder path, or the id of a run under the runs root."""
    from .runs import runs_root

    path = Path(value).expanduser()
    if not path.exists() and len(path.parts) == 1 and (runs_root() / value).is_dir():
        return runs_root() / value
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import RunDir, new_run_id, runs_root, with_data_root
    from .trainer import train

    if args.resume:
        run = RunDir(run_argument(args.resume))
        if not run.exists():
            raise RunDirError(f"{run.path} holds no run to resume; start one with --run-dir")
        config = TrainConfig.from_dict(run.config())
        summary = train(config, run.path, resume=True, quiet=args.quiet)
    else:
        config = with_data_root(config_from_args(args))
        run_dir = args.run_dir or runs_root() / new_run_id(config)
        summary = train(config, run_dir, quiet=args.quiet)
        print(f"run directory: {run_dir}")
    print(json.dumps({k: summary[k] for k in ("method", "dataset", "test_acc", "val_acc", "tuned_params",
                                              "tuned_pct", "wall_s")}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .build import evaluate_run

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
    p = sub.add_parser("settings", help="print every training setting as a markdown table (docs/SETTINGS.md)")
    p.set_defaults(func=lambda args: print(settings_markdown()))
    from .pretrain import add_pretrain_arguments, run_pretrain

    p = sub.add_parser("pretrain", help="pretrain the shipped demo backbone")
    add_pretrain_arguments(p)
    p.set_defaults(func=run_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped by the user; partial results are kept in the run directory", file=sys.stderr)
        return 130
    except Cancelled:
        print("cancelled; partial results are kept in the run directory", file=sys.stderr)
        return 3
