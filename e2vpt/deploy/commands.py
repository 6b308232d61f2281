"""`python -m e2vpt predict` and `python -m e2vpt export`: a trained run used outside the studio.

Kept apart from `cli.py` so the command line's module stays its table of contents; `cli.py` adds
these two parsers. Nothing here imports torch until a command runs (`--help` stays instant).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..roots import run_argument


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run folder (or the id of a run under the runs root), or an adapter folder "
                                  "written by `export`")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns "
                                             "(quoted: 'shots/*.png')")
    p.add_argument("--round", type=int, help="a run's pruning round to use (default: the round the run reports)")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image, most probable first (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda[:N]")
    p.add_argument("--out", help="also write the predictions to this .csv or .json file")
    p.add_argument("--backbone", help="an adapter's backbone: a timm name or demo (default: the one it records)")
    p.add_argument("--weights", help="an adapter's backbone weights as a local .safetensors file")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder, or the id of a run under the runs root")
    p.add_argument("--out", required=True, help="the adapter folder to write (new, empty, or an adapter to replace)")
    p.add_argument("--round", type=int, help="the pruning round to export (default: the round the run reports)")
    p.add_argument("--format", choices=("adapter", "onnx"), default="adapter",
                   help="adapter: adapter_config.json + adapter_model.safetensors + README.md (load with "
                        "e2vpt.load_adapter); onnx: the same plus model.onnx, the whole prompted and pruned "
                        "model for onnxruntime (default: adapter)")


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit 0 when every image was predicted, 1 when some were skipped (each named on stderr)."""
    from .adapter import CONFIG_FILE
    from .predict import check_request, find_images, open_predictor, predict_files, table, write_predictions

    check_request(args.top_k, args.batch_size, args.out)
    paths, problems = find_images(args.images)
    for what, why in problems:
        print(f"skipped {what}: {why}", file=sys.stderr)
    source = args.source if (Path(args.source).expanduser() / CONFIG_FILE).is_file() else run_argument(args.source)
    predictor = open_predictor(source, args.round, args.device, args.backbone, args.weights)

    def progress(done: int, total: int) -> None:
        if not args.quiet and total > args.batch_size:
            print(f"\rpredicting: {done}/{total} images", end="" if done < total else "\n", file=sys.stderr)

    rows, skipped = predict_files(predictor, paths, args.top_k, args.batch_size, progress)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if rows:
        print(table(rows))
    if args.out:
        print(f"wrote {write_predictions(rows, args.out)} ({len(rows)} image(s))", file=sys.stderr)
    print(f"{len(rows)} image(s) predicted by {predictor.label}"
          + (f"; {len(skipped) + len(problems)} skipped" if skipped or problems else ""), file=sys.stderr)
    return 0 if not skipped and not problems and rows else 1


def cmd_export(args: argparse.Namespace) -> int:
    from .adapter import export_adapter

    result = export_adapter(run_argument(args.run), args.out, args.round, onnx=args.format == "onnx")
    config = result["config"]
    print(f"wrote {result['folder']}: round {config['run']['round']} of {config['run']['id']}, "
          f"test accuracy {100 * config['accuracy']['test']:.2f} %, {config['tuned_params']:,} tuned parameters")
    print(f"adapter_model.safetensors: {result['bytes']:,} bytes (with nothing pruned: "
          f"{result['unpruned_bytes']:,} bytes)")
    if result["onnx_bytes"]:
        print(f"model.onnx: {result['onnx_bytes']:,} bytes (checked against onnxruntime)")
    return 0
