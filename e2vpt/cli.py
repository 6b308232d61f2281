"""`python -m e2vpt ...`: the command line over the library, the same calls the app makes.

train    train one method into a run directory (or --resume one)
eval     re-evaluate a saved run
runs     list the runs under a folder
pretrain make the shipped demo backbone
Errors a user can fix print one line and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .config import METHODS, TrainConfig, load_config_file
from .errors import RunDirError, UserError

def _bool_flag(parser, name: str, help: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                        default=None, help=help)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field; defaults are None so a --config file is only overridden by
    flags that were actually given."""
    p.add_argument("--config", help="YAML or JSON file of settings; flags override it")
    p.add_argument("--run-dir", help="where the run is written (default: <runs root>/<time>-<method>-<dataset>, "
                                     "the runs root being $E2VPT_RUNS_ROOT, else ./runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", help="`demo` (shipped, offline) or a timm ViT/Swin name, e.g. vit_base_patch16_224.augreg_in21k, vit_base_patch16_224.mae, swin_base_patch4_window7_224")
    _bool_flag(g, "pretrained", "load pretrained backbone weights (default: yes)")
    g.add_argument("--weights", help="local backbone weights (.safetensors) instead of the hub")
    g.add_argument("--img-size", type=int, help="input size (default: the backbone's)")
    g.add_argument("--global-pool", choices=("auto", "token", "avg"),
                   help="head features: [CLS] token or patch average (auto: avg for MAE weights, else timm's default)")
    g.add_argument("--method", choices=METHODS)
    g.add_argument("--prompt-len", type=int, help="visual prompt tokens per layer (p)")
    g.add_argument("--kv-len", type=int, help="key-value prompts per layer (l); 0 for none")
    _bool_flag(g, "kv-shared", "one tensor serves as key and value prompt (official code)")
    g.add_argument("--prompt-dropout", type=float)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="digits, fashion-mnist, dsprites-loc, dsprites-ori, clevr-count, a torchvision "
                                     "name, imagefolder, vtab or fgvc")
    g.add_argument("--data-root", help="folder of the dataset (for those that need one)")
    _bool_flag(g, "download", "let torchvision download the dataset (needs network)")
    _bool_flag(g, "train-augment", "random resized crop + flip while training")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--retrain-epochs", type=int, help="epochs after each pruning round (default: 2)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--optimizer", choices=("adamw", "sgd"))
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    _bool_flag(g, "amp", "bfloat16 autocast on CUDA")
    g = p.add_argument_group("pruning (e2vpt)")
    g.add_argument("--prune-rounds", type=int)
    g.add_argument("--prune-ratio", type=float, help="fraction of surviving tokens pruned per round")
    g.add_argument("--segment-ratio", type=float, help="fraction of surviving segments pruned per round")
    g.add_argument("--segments", type=int, help="segments per prompt token (R, official 16)")
    g.add_argument("--mask-scope", choices=("layer", "shared"))
    g.add_argument("--segment-layout", choices=("interleaved", "contiguous"))
    g.add_argument("--importance", choices=("abs", "signed"))
    g.add_argument("--rewind", choices=("init", "reinit"))
    g.add_argument("--select-round", choices=("best", "last"))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import RunDir, new_run_id, runs_root
    from .trainer import train

    if args.resume:
        run = RunDir(args.resume)
        if not run.exists():
            raise RunDirError(f"{run.path} holds no run to resume; start one with --run-dir")
        config = TrainConfig.from_dict(run.config())
        summary = train(config, run.path, resume=True, quiet=args.quiet)
    else:
        config = config_from_args(args)
        run_dir = args.run_dir or runs_root() / new_run_id(config)
        summary = train(config, run_dir, quiet=args.quiet)
        print(f"run directory: {run_dir}")
    print(json.dumps({k: summary[k] for k in ("method", "dataset", "test_acc", "val_acc", "tuned_params",
                                              "tuned_pct", "wall_s")}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .trainer import evaluate_run

    print(json.dumps(evaluate_run(args.run_dir, device=args.device), indent=1))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import list_runs, root_or_default, runs_root

    root = root_or_default(args.root, runs_root)
    rows = list_runs(root)
    if not rows:
        print(f"no runs under {root}")
    for r in rows:
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
    p.add_argument("run_dir")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--root", help="runs folder (default: $E2VPT_RUNS_ROOT, else ./runs)")
    p.set_defaults(func=cmd_runs)
    try:
        from .pretrain import add_pretrain_arguments, run_pretrain
    except ImportError:
        pass
    else:
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
    except Exception as exc:
        from .trainer import Cancelled

        if isinstance(exc, Cancelled):
            print("cancelled; partial results are kept in the run directory", file=sys.stderr)
            return 3
        raise
