"""The inference cost of each method (issue 31): latency at batch 1 and throughput at batch 64, against the
frozen backbone, in PyTorch and in onnxruntime.

E2VPT's pruning removes prompt tokens, so every layer's sequence gets shorter: does that buy inference
speed, or only parameters? For each backbone (the demo ViT; ViT-B/16 at 224 with random weights, which
time exactly like trained ones) and each prompt length (the defaults' p = 8, and a long p = 64), it
builds the frozen backbone, linear, full, VPT-deep and E2VPT before pruning and after each of the
default rounds. Masks are drawn as the default schedule prunes (the counts per round exact, the
positions random: the cost depends on how many tokens remain, not on which). Every model runs with its
prompts fixed (`fix_prompts`: a static graph, as exported), in one process, the variants alternating
in every repeat so that a slow moment of the machine hits them all alike (onnxruntime without its memory
arena, so that every session can stay open: with arenas, ViT-B's eleven sessions passed 24 GB).

"Expected x" is the sums: the model's multiply-adds over the frozen backbone's (patch embedding,
every layer's projections and MLP at its sequence length, attention over its keys including key-value
prompts, the head). A measured ratio far from it is explained in benchmarks/README.md.

    python benchmarks/inference.py                   # the published numbers (about 35 min on 2 cores)
    python benchmarks/inference.py --quick           # smoke test: demo only, 1 repeat (inference_quick.csv)

Writes benchmarks/results/inference.csv (each row with the commit, the defaults' digest and the machine)
and the README block `inference`. Last line:
`inference: e2vpt pruned X x frozen, vpt-deep Y x, e2vpt unpruned Z x (batch 64, demo)`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, busy_warning, print_table, provenance, provenance_line, read_csv,  # noqa: E402
                    set_threads, write_csv, write_readme_block)

BACKBONES = {"demo": 32, "vit_base_patch16_224": 224}
PROMPT_LENGTHS = (8, 64)
CLASSES = 10
BATCH = 64
# calls per measurement (batch 1, batch 64) per backbone: enough to be stable, few enough for ViT-B on 2 cores
CALLS = {"demo": (50, 10), "vit_base_patch16_224": (3, 1)}
REPEATS = {"demo": 5, "vit_base_patch16_224": 2}


def variants(name: str, seed: int = 0):
    """[(label, prompt length or None, model)] for one backbone: frozen, linear, full, then for each prompt
    length VPT-deep and E2VPT before pruning and after each default round."""
    import torch

    from e2vpt.config import TrainConfig
    from e2vpt.models.backbones import create_backbone
    from e2vpt.models.pruning import min_segments_for, prune_segments, prune_tokens
    from e2vpt.models.prompted import build_model

    torch.manual_seed(seed)
    base = create_backbone(name, pretrained=name == "demo").eval()  # ViT-B: random weights time the same
    out = [("frozen backbone", None, base)]
    out += [(method, None, build_model(TrainConfig(method=method), base, CLASSES)) for method in ("linear", "full")]
    generator = torch.Generator().manual_seed(seed)
    for prompt_len in PROMPT_LENGTHS:
        out.append(("vpt-deep", prompt_len, build_model(TrainConfig(method="vpt-deep", prompt_len=prompt_len), base,
                                                        CLASSES)))
        config = TrainConfig(method="e2vpt", prompt_len=prompt_len)
        model = build_model(config, base, CLASSES)
        for round_index in range(config.prune_rounds + 1):
            if round_index:  # the trainer's two calls, on random scores
                t = model.tuned
                tokens = prune_tokens(t.token_mask, torch.rand(t.token_mask.shape, generator=generator),
                                      config.prune_ratio, config.mask_scope, count=config.prune_count)
                segments = prune_segments(tokens, t.segment_mask,
                                          torch.rand(t.segment_mask.shape, generator=generator), config.segment_ratio,
                                          min_segments_for(config.segments), config.mask_scope,
                                          per_token=config.segment_rank == "per-token", count=config.prune_count)
                model.set_masks(tokens, segments)
            fixed = build_model(config, base, CLASSES)
            fixed.load_tuned_state(model.tuned_state())
            out.append((f"e2vpt round {round_index}", prompt_len, fixed))
    for _, _, module in out[1:]:
        module.fix_prompts()
    return out


def multiply_adds(model, img_size: int) -> tuple[float, float]:
    """(multiply-adds of one image, mean sequence length over the layers): the sums the timings are judged by."""
    from e2vpt.models.base import PromptTuned

    backbone = model.backbone if isinstance(model, PromptTuned) else model
    d, layers = backbone.embed_dim, len(backbone.blocks)
    hidden = backbone.blocks[0].mlp.fc1.out_features
    patches = backbone.patch_embed.num_patches
    total = patches * 3 * backbone.patch_embed.patch_size[0] * backbone.patch_embed.patch_size[1] * d
    lengths = []
    for layer in range(layers):
        prompts, kv = 0, 0
        if isinstance(model, PromptTuned):
            entering = model.prompts_entering(layer)
            if entering is not None and model.fixed_prompts is not None:
                fixed = getattr(model.fixed_prompts, f"set_{entering}")
                prompts = 0 if fixed is None else fixed.shape[0]
            kv = model.kv_len
        n = backbone.num_prefix_tokens + patches + prompts
        lengths.append(n)
        total += n * (4 * d * d + 2 * d * hidden) + 2 * n * (n + kv) * d
    if isinstance(model, PromptTuned):
        total += d * CLASSES
    return total, statistics.mean(lengths)


def timed(call, calls: int) -> float:
    """Median seconds of `calls` calls (the caller warms every model up first)."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(name: str, repeats: int, threads: int, tmp: Path, engines: tuple[str, ...]) -> list[dict]:
    """One row per (variant, engine): medians over `repeats` passes in which every variant runs in turn."""
    import torch

    from e2vpt.data.preprocess import ImageRule
    from e2vpt.deploy.onnx_model import export_onnx, onnx_session

    size = BACKBONES[name]
    models = variants(name)
    x1 = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    x64 = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(2))
    runners = {}
    for label, prompt_len, model in models:
        if "torch" in engines:
            runners[(label, prompt_len, "pytorch")] = lambda x, m=model: m(x)
        if "onnx" in engines:
            path = tmp / f"{name}-{prompt_len}-{label.replace(' ', '_')}.onnx"
            export_onnx(model, ImageRule(size, (0.5,) * 3, (0.5,) * 3, "bicubic", "rgb"), path, threads)
            session = onnx_session(path, threads, arena=False)  # many sessions at once: no arenas kept
            runners[(label, prompt_len, "onnxruntime")] = lambda x, s=session: s.run(None, {"images": x.numpy()})
    calls1, calls64 = CALLS[name]
    samples = {key: {"b1": [], "b64": []} for key in runners}
    busy = ""
    with torch.inference_mode():
        for run in runners.values():  # warm-up: first calls allocate and pick kernels
            run(x1), run(x64)
        for _ in range(repeats):
            busy = busy or busy_warning() or ""
            for key, run in runners.items():
                samples[key]["b1"].append(timed(lambda: run(x1), calls1))
                samples[key]["b64"].append(timed(lambda: run(x64), calls64))
    sums = {(label, prompt_len): multiply_adds(model, size) for label, prompt_len, model in models}
    frozen_sum = sums[("frozen backbone", None)][0]
    rows = []
    for (label, prompt_len, engine), got in samples.items():
        b1, b64 = statistics.median(got["b1"]), statistics.median(got["b64"])
        frozen = samples[("frozen backbone", None, engine)]
        f1, f64 = statistics.median(frozen["b1"]), statistics.median(frozen["b64"])
        rows.append({"backbone": name, "img_size": size, "prompt_len": prompt_len or "", "variant": label,
                     "engine": engine, "tokens_per_layer": round(sums[(label, prompt_len)][1], 1),
                     "expected_x": round(sums[(label, prompt_len)][0] / frozen_sum, 3),
                     "latency_ms": round(1000 * b1, 3), "latency_x": round(b1 / f1, 3),
                     "images_per_s": round(BATCH / b64, 1), "batch64_x": round(b64 / f64, 3),
                     "repeats": repeats, "busy": busy})
    return rows


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `inference`, from inference.csv's rows."""
    if not rows:
        return "No result yet: run `python benchmarks/inference.py`.\n"
    lines = [f"Batch 1 latency and batch 64 throughput, each method against the frozen backbone in the same engine; "
             f"{provenance_line(rows[0])}, {rows[0]['threads']} threads, medians of {rows[0]['repeats']} alternating "
             "repeats. x: the method's time over the frozen backbone's (1.10 = 10 % slower); expected: the sums "
             "(multiply-adds).", ""]
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        part = [r for r in rows if r["backbone"] == backbone]
        lines += [f"**{backbone} @ {part[0]['img_size']}**", "",
                  "| method | p | engine | tokens / layer | expected x | latency ms | latency x | images/s (64) | "
                  "batch 64 x |", "|" + "---|" * 9]
        lines += [f"| {r['variant']} | {r['prompt_len'] or '-'} | {r['engine']} | {float(r['tokens_per_layer']):.1f} "
                  f"| {float(r['expected_x']):.2f} | {float(r['latency_ms']):.1f} | {float(r['latency_x']):.2f} | "
                  f"{float(r['images_per_s']):.1f} | {float(r['batch64_x']):.2f} |" for r in part]
        lines.append("")
    lines += [conclusion(rows), ""]
    if any(r["busy"] for r in rows):
        lines.append("WARNING: the machine was busy during a measurement; timings not comparable.")
    return "\n".join(lines).rstrip() + "\n"


def conclusion(rows: list[dict]) -> str:
    """What the table shows, in numbers taken from it: the noise floor, and what pruning buys at each p."""
    parts = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        for engine in dict.fromkeys(r["engine"] for r in rows):
            part = [r for r in rows if r["backbone"] == backbone and r["engine"] == engine]
            # linear and full run the frozen graph plus a 768x10 head: their spread around 1 is the noise
            floor = max(abs(float(r["batch64_x"]) - 1) for r in part if r["variant"] in ("linear", "full"))
            gains = []
            for p in sorted({r["prompt_len"] for r in part if r["prompt_len"]}, key=int):
                rounds = sorted((r for r in part if r["prompt_len"] == p and r["variant"].startswith("e2vpt")),
                                key=lambda r: r["variant"])
                first, last = rounds[0], rounds[-1]
                measured = float(first["batch64_x"]) - float(last["batch64_x"])
                promised = float(first["expected_x"]) - float(last["expected_x"])
                gains.append(f"p = {p}: {float(first['batch64_x']):.2f}x -> {float(last['batch64_x']):.2f}x, "
                             f"{100 * measured:+.0f} points of the frozen time where the sums promise "
                             f"{100 * promised:+.0f} ({float(first['expected_x']):.2f}x -> "
                             f"{float(last['expected_x']):.2f}x)")
            parts.append(f"{backbone}, {engine}: noise floor +/-{100 * floor:.0f} %; E2VPT unpruned -> last round, "
                         "batch 64: " + "; ".join(gains))
    return ("**What it shows.** Linear and full fine-tuning run the frozen graph plus a small head, so how far "
            "they land from 1.00x is what this machine's noise does to one number (the noise floor). "
            + ". ".join(parts) + ".")


def headline(rows: list[dict]) -> str:
    """The last line: the demo's pruned, VPT-deep and unpruned E2VPT at batch 64, at the defaults' p."""
    pick = [r for r in rows if r["backbone"] == "demo" and str(r["prompt_len"]) in ("", str(PROMPT_LENGTHS[0]))
            and r["engine"] == "pytorch"]
    last = max((r for r in pick if r["variant"].startswith("e2vpt round")), key=lambda r: r["variant"])

    def x(variant: str) -> str:
        return f"{float(next(r for r in pick if r['variant'] == variant)['batch64_x']):.2f}"

    return (f"inference: e2vpt pruned {float(last['batch64_x']):.2f} x frozen, vpt-deep {x('vpt-deep')} x, "
            f"e2vpt unpruned {x('e2vpt round 0')} x (batch 64, demo)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, help="alternating passes (default: 5 on the demo, 2 on ViT-B)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    p.add_argument("--quick", action="store_true", help="demo only, 1 repeat, to inference_quick.csv")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/inference.csv)")
    args = p.parse_args()
    if args.quick:
        args.backbones, args.repeats = ["demo"], 1
    set_threads(args.threads)
    stamp = {**provenance("cpu"), "defaults_used": True}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            repeats = args.repeats or REPEATS[name]
            rows += [{**row, **stamp} for row in measure(name, repeats, args.threads, Path(tmp), tuple(args.engines))]
    columns = ["backbone", "variant", "prompt_len", "engine", "tokens_per_layer", "expected_x", "latency_ms",
               "latency_x", "images_per_s", "batch64_x"]
    print_table("Inference cost against the frozen backbone (CPU)", columns, [[r[c] for c in columns] for r in rows])
    out_csv = Path(args.out) if args.out else RESULTS / ("inference_quick.csv" if args.quick else "inference.csv")
    write_csv(out_csv, rows)
    if not args.out and not args.quick:  # the published numbers: the default file, by this script only
        write_readme_block("inference", render(read_csv(out_csv)))
    print(headline(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
