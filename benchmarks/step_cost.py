"""What one training step costs: E2VPT against linear probing, VPT-deep and full fine-tuning.

Issue 6's efficiency claim as ratios anyone can re-run. Step time: the configurations of one table
(e.g. full, linear, vpt-deep, e2vpt, frozen+grad on ViT-B/16) are built in *one* process, every
frozen one on the same shared backbone (full fine-tuning on an identical copy; random init: cost
does not depend on the weights), and timed *interleaved*: `--warmup` rounds, then `--steps` rounds
(default 10 for ViT-B/16; `--demo-steps`, default 30, for the demo's cheaper and noisier steps) of
one step of each model in a rotating order; the median per configuration is reported. Interleaving matters here: the same configuration measured in two fresh processes
differs by up to 8% on this VM, which would swamp the 3% the issue asks about. A step is exactly the
trainer's step (`e2vpt/training/trainer.py: Trainer._train_epoch`): forward (bf16 autocast on CUDA, as
`--precision auto` does), cross-entropy, `zero_grad`, backward, AdamW step, `zero_pruned()`, and the
`.item()` reads the trainer does. Images are one fixed random batch (no data loading in the
timing), and on the CPU `torch.use_deterministic_algorithms(True, warn_only=True)` is on, as the
trainer sets it. Every child process runs `torch.set_num_threads(--threads)` (default 2).

Peak memory
  - CPU: torch's allocations bypass `tracemalloc`, so the child process measures its resident set:
    `peak` = `ru_maxrss` (the kernel's high-water mark of RSS) after the steps minus the RSS
    after importing torch/timm/e2vpt and before building anything. It therefore includes the
    weights, gradients, AdamW state, activations and allocator slack, like CUDA's figure below.
    `train` = the same peak minus the RSS once the model, batch and optimiser exist (what the
    steps themselves add). A fresh process per configuration (one warm-up + `--memory-steps`
    steps; AdamW's state exists from the first step) keeps one peak from hiding another.
  - CUDA: `torch.cuda.max_memory_allocated()` over the steps (weights included).

Configurations (p visual prompts per layer, l key-value prompts per layer; defaults p=8, l=4,
issue 6's setting; every other model setting is `TrainConfig`'s default):
  linear, vpt-deep(p), e2vpt(p, l) before pruning (= e2vpt-noprune, the phase where most
  training happens), e2vpt after two default pruning rounds (25% of tokens, 9 of 16 segments kept),
  full (AdamW over every weight), and the reference the prompts are judged against:
  `frozen+grad(n)`: the frozen timm ViT (timm's own Block/Attention forward) on the same sequence
  with n extra tokens, the input tokens requiring grad so the backward runs through every block
  but computes no weight gradient; only a linear head is trained.
Pruned tokens (issue 14): e2vpt with p=50 and 25 tokens pruned (all segments kept), the pruned tokens
removed from the sequence (`--pruned-tokens remove`: studio, paper) or kept as zeros (`zero`: the
official code), timed interleaved; goal: removed <= 0.9x zeroed. Counting multiply-adds per layer
(ViT-B/16: 247 vs 222 tokens, linear layers ~N, attention ~N^2) the best possible ratio is 0.894.
Growth (on `--growth-backbones`): frozen+grad(p) and vpt-deep(p) for p in 0, 10, 50, 100; e2vpt
with p fixed and l in 0, 10, 50, 100.
Pruned layer: one block, forward + backward to its input, median of `--layer-repeats` interleaved
repeats: timm's frozen block, the `PromptedViT` path for a layer whose prompts are all pruned (checked to be
`_layer_prompts(...) is None`, so the model runs `prompted_block(block, x, kv...)` with no
concatenation), the same with its l key-value prompts, and a layer with p live prompts.

    python benchmarks/step_cost.py                      # ViT-B/16 @224 batch 8 + demo @32 batch 64
    python benchmarks/step_cost.py --quick              # smoke test (demo only, few steps)
    python benchmarks/step_cost.py --backbones vit_b --sections pruned-tokens --steps 20   # removed vs zeroed
    python benchmarks/step_cost.py --profile e2vpt --backbones vit_b   # torch.profiler op table

Writes benchmarks/results/step_cost.csv and step_cost.md (`--sections pruned-tokens` alone:
step_cost_pruned_tokens.csv and .md), every row with the commit, the defaults' digest (frozen+grad
rows build no `TrainConfig`: `defaults_used` False) and the machine; the first two commands above also
write their README block, `step_cost` or `step_cost_pruned_tokens` (`render`). The last line is
exactly `ratio e2vpt/full: step=X.XX memory=X.XX` (ViT-B/16, e2vpt before pruning).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, busy_warning, fmt, machine_info, markdown_table, print_table,  # noqa: E402
                    provenance, read_csv, set_threads, write_csv, write_readme_block, write_text)
from step_cost_report import LABELS, TARGETS, met, render  # noqa: E402

BACKBONES = {"vit_b": ("vit_base_patch16_224", 224), "demo": ("demo", 32)}
GROWTH_P = (0, 10, 50, 100)
GROWTH_L = (0, 10, 50, 100)
PRUNED_KEEP = 0.25  # two default rounds at --prune-ratio 0.5 keep a quarter of the tokens
PRUNED_SEGMENTS = 9  # ... and 16 * 0.75 * 0.75 = 9 of 16 segments per kept token
HALF_PRUNED_P = 50  # the removed-vs-zeroed rows: p=50 with 25 tokens pruned
SECTIONS = ("main", "pruned-tokens", "growth", "layer")


# ==================================================================================================
# child process: one configuration
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _frozen_tokens_model(backbone, num_classes: int, extra: int):
    """A frozen timm ViT over [prefix; `extra` tokens; patches] whose input requires grad."""
    import torch
    from torch import nn

    class FrozenWithInputGrad(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            for p in backbone.parameters():
                p.requires_grad_(False)
            self.head = nn.Linear(backbone.embed_dim, num_classes)
            # fixed values drawn like visual prompts (not zeros: values, not just shapes, are realistic)
            g = torch.Generator().manual_seed(1)
            self.register_buffer("tokens", (torch.rand(extra, backbone.embed_dim, generator=g) * 2 - 1) * 0.02)

        def forward(self, images):
            bb = self.backbone
            with torch.no_grad():
                x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))
            if extra:
                n = bb.num_prefix_tokens
                tokens = self.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :n], tokens, x[:, n:]], dim=1)
            x = x.requires_grad_()  # input gradients: backward through every block, no weight grads
            x = bb.norm(bb.blocks(x))
            return self.head(bb.forward_head(x, pre_logits=True))

        def train(self, mode: bool = True):
            super().train(mode)
            self.backbone.eval()
            return self

    return FrozenWithInputGrad()


def build(spec: dict, device, backbone=None):
    """(model, optimiser, image size) for one configuration, on `device`.

    `backbone`: a frozen backbone to share (interleaved timing); full fine-tuning always gets its own.
    """
    import torch

    from e2vpt.config import TrainConfig
    from e2vpt.methods import method_named
    from e2vpt.models.backbones import create_backbone
    from e2vpt.models.prompted import build_model

    name, size = BACKBONES[spec["backbone"]]
    torch.manual_seed(0)
    if backbone is None or spec.get("method") == "full":
        backbone = create_backbone(name, pretrained=False)
    if spec["kind"] == "frozen":
        model, lr = _frozen_tokens_model(backbone, 10, spec["p"]), 1e-2
    else:
        method = spec["method"]
        cfg = TrainConfig(method=method, backbone=name, pretrained=False, prompt_len=max(spec.get("p", 8), 1),
                          kv_len=spec.get("l", 4), pruned_tokens=spec.get("pruned", "remove"))
        model, lr = build_model(cfg, backbone, 10), method_named(method).lr
        if spec.get("keep") is not None:
            t = model.tuned
            keep = max(1, round(model.prompt_len * spec["keep"]))
            token = torch.zeros_like(t.token_mask)
            token[:, :keep] = 1
            segment = torch.zeros_like(t.segment_mask)
            segment[:, :, :spec.get("segments_kept", PRUNED_SEGMENTS)] = 1
            model.set_masks(token, segment)
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=lr, weight_decay=1e-4), size


def make_step(model, optimizer, images, labels, device):
    """The trainer's step (see `Trainer._train_epoch`), as a closure."""
    import contextlib

    import torch
    import torch.nn.functional as F

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    zero_pruned = getattr(model, "zero_pruned", lambda: None)

    def step():
        with autocast():
            logits = model(images)
        local_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
        loss = local_sum / labels.numel()
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        zero_pruned()
        local_sum.item()
        (logits.argmax(1) == labels).sum().item()

    return step


def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": 1000 * statistics.median(times), "p25_ms": 1000 * q[0], "p75_ms": 1000 * q[2],
            "min_ms": 1000 * min(times), "n_steps": len(times)}


def run_child(spec: dict) -> dict:
    import torch

    import e2vpt.models.backbones  # noqa: F401  (imports counted in the baseline, not in the peak)
    import e2vpt.models.prompted  # noqa: F401

    threads = set_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    rss0 = _rss_mb()
    if spec["kind"] == "layer":
        return {"layers": run_layer(spec, device), "threads": threads}
    if spec["kind"] == "group":
        return {"items": run_group(spec, device), "threads": threads}
    model, optimizer, size = build(spec, device)
    model.train()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(spec["batch"], 3, size, size, generator=g).to(device)
    labels = torch.randint(0, 10, (spec["batch"],), generator=g).to(device)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss1 = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2**20
    times = _interleave([make_step(model, optimizer, images, labels, device)], spec["steps"], spec["warmup"], device)[0]
    out = _summary(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        out.update(peak_mb=peak, train_mb=peak - base_cuda, memory_method="cuda max_memory_allocated")
    else:
        peak = _peak_rss_mb()
        out.update(peak_mb=peak - rss0, train_mb=peak - rss1, memory_method="peak RSS delta (ru_maxrss)")
    out.update(weights_mb=weights_mb, trainable=trainable, threads=threads, device=str(device))
    return out


def run_group(spec: dict, device) -> list[dict]:
    """Time several configurations in one process, interleaved step by step.

    Every frozen configuration shares one backbone (same weights, same memory), full fine-tuning
    gets an identical copy, and each round takes one step of every model in a rotating order.
    Differences between processes (memory placement, frequency) then cancel in the ratios; they
    move a single process's median by several percent on this machine.
    """
    import torch

    from e2vpt.models.backbones import create_backbone

    name, size = BACKBONES[spec["backbone"]]
    torch.manual_seed(0)
    shared = create_backbone(name, pretrained=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(spec["batch"], 3, size, size, generator=g).to(device)
    labels = torch.randint(0, 10, (spec["batch"],), generator=g).to(device)
    steps = []
    for item in spec["items"]:
        model, optimizer, _ = build(dict(item, backbone=spec["backbone"]), device, backbone=shared)
        model.train()
        steps.append(make_step(model, optimizer, images, labels, device))
    return [_summary(t) for t in _interleave(steps, spec["steps"], spec["warmup"], device)]


def _interleave(fns, steps: int, warmup: int, device) -> list[list[float]]:
    """Seconds of each of `fns`, run round-robin (rotating order) for `warmup` + `steps` rounds."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in fns]
    n = len(fns)
    for rnd in range(warmup + steps):
        for j in range(n):
            k = (j + rnd) % n  # rotate the order so no configuration always runs first
            sync()
            t0 = time.perf_counter()
            fns[k]()
            sync()
            if rnd >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def run_layer(spec: dict, device) -> list[dict]:
    """Forward + backward of one block: frozen timm block vs PromptedViT's fully pruned / prompted layer."""
    import torch

    from e2vpt.models.backbones import create_backbone
    from e2vpt.config import TrainConfig
    from e2vpt.models.prompted import build_model
    from e2vpt.models.vit import prompted_block

    name, size = BACKBONES[spec["backbone"]]
    torch.manual_seed(0)
    p, l = spec["p"], spec["l"]
    model = build_model(TrainConfig(method="e2vpt", backbone=name, prompt_len=p, kv_len=l),
                        create_backbone(name, pretrained=False), 10).to(device)
    layer = 0
    token = model.tuned.token_mask.clone()
    token[layer] = 0  # layer 0 fully pruned: the model must skip its prompts entirely
    model.set_masks(token, model.tuned.segment_mask.clone())
    model.train()
    assert model._layer_prompts(layer, 1, None, None) is None, "a fully pruned layer still reads prompts"
    block = model.backbone.blocks[layer]
    n_tokens = model.num_prefix + model.backbone.patch_embed.num_patches
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(spec["batch"], n_tokens, model.dim, generator=g).to(device)
    live = torch.randn(p, model.dim, generator=g).to(device).requires_grad_()
    key, value = model._kv(layer)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None
    n = model.num_prefix

    def timed(fn):
        def step():
            x = x0.detach().requires_grad_()
            if autocast:
                with autocast():
                    y = fn(x)
            else:
                y = fn(x)
            y.float().sum().backward()
        return step

    def with_prompts(x, kv):
        prompts = live.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :n], prompts, x[:, n:]], dim=1)
        y = prompted_block(block, x, *(kv if kv else (None, None)))
        return torch.cat([y[:, :n], y[:, n + p:]], dim=1)

    def frozen_extra(x):
        x = torch.cat([x[:, :n], live.detach().unsqueeze(0).expand(x.shape[0], -1, -1), x[:, n:]], dim=1)
        return block(x)

    variants = [
        ("frozen timm block", lambda x: block(x)),
        ("fully pruned layer (no kv)", lambda x: prompted_block(block, x, None, None)),
        (f"fully pruned layer + kv l={l}", lambda x: prompted_block(block, x, key, value)),
        (f"frozen timm block, {p} extra tokens", frozen_extra),
        (f"layer with {p} live prompts", lambda x: with_prompts(x, None)),
        (f"layer with {p} live prompts + kv l={l}", lambda x: with_prompts(x, (key, value))),
    ]
    times = _interleave([timed(fn) for _, fn in variants], spec["steps"], spec["warmup"], device)
    return [{"label": label, **_summary(t)} for (label, _), t in zip(variants, times)]


# ==================================================================================================
# parent: the plan, subprocesses, tables
def spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def label_of(item: dict) -> str:
    if item["kind"] == "frozen":
        return f"frozen+grad({item['p']} tok)"
    m = item["method"]
    if m in ("linear", "full"):
        return m
    if m == "vpt-deep":
        return f"vpt-deep p={item['p']}"
    pruned = " pruned" if item.get("keep") is not None else ""
    how = f" ({ {'remove': 'removed', 'zero': 'zeroed'}[item['pruned']]})" if "pruned" in item else ""
    return f"{m}{pruned} p={item['p']} l={item['l']}{how}"


def plan(args) -> list[dict]:
    """Groups of configurations timed together (interleaved in one process), plus layer groups."""
    groups = []

    def group(section, backbone, items):
        batch = args.batch if backbone == "vit_b" else args.demo_batch
        groups.append({"section": section, "backbone": backbone, "batch": batch, "items": items})

    pl, kl = args.prompt_len, args.kv_len
    for bb in args.backbones:
        group("main", bb, [
            dict(kind="method", method="full"), dict(kind="method", method="linear"),
            dict(kind="method", method="vpt-deep", p=pl), dict(kind="method", method="e2vpt", p=pl, l=kl),
            dict(kind="method", method="e2vpt", p=pl, l=kl, keep=PRUNED_KEEP),
            dict(kind="frozen", p=0), dict(kind="frozen", p=pl)])
        # issue 14: half the tokens pruned, removed from the sequence (studio) or zeroed in it (official)
        group("pruned-tokens", bb, [dict(kind="method", method="e2vpt", p=HALF_PRUNED_P, l=kl, keep=0.5,
                                         segments_kept=16, pruned=how) for how in ("remove", "zero")])
    for bb in args.growth_backbones:
        group("growth-p", bb, [dict(kind="frozen", p=p) for p in args.growth_p]
              + [dict(kind="method", method="vpt-deep", p=p) for p in args.growth_p if p])
        group("growth-l", bb, [dict(kind="method", method="e2vpt", p=pl, l=l) for l in args.growth_l])
    for bb in args.backbones:
        groups.append({"section": "layer", "backbone": bb, "batch": args.batch if bb == "vit_b" else args.demo_batch,
                       "items": []})
    return [g for g in groups if g["section"].split("-")[0] in args.sections or g["section"] in args.sections]


def profile(args) -> None:
    """torch.profiler over a few steps of one configuration, in this process; prints the op table."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    bb = args.backbones[0]
    name = args.profile
    if name.startswith("frozen"):
        spec = dict(kind="frozen", p=0 if name == "frozen0" else args.prompt_len)
    else:
        spec = dict(kind="method", method=name, p=args.prompt_len, l=args.kv_len)
    model, optimizer, size = build(dict(spec, backbone=bb), device)
    model.train()
    batch = args.batch if bb == "vit_b" else args.demo_batch
    images, labels = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    step = make_step(model, optimizer, images, labels, device)
    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=args.profile_shapes) as prof:
        for _ in range(args.profile_steps):
            step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {label_of(spec)} on {LABELS[bb]}, batch {batch}, {args.profile_steps} steps, "
          f"torch.set_num_threads({torch.get_num_threads()})")
    averages = prof.key_averages(group_by_input_shape=args.profile_shapes)
    print(averages.table(sort_by=sort, row_limit=args.profile_rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=["vit_b", "demo"], choices=list(BACKBONES))
    p.add_argument("--growth-backbones", nargs="*", default=None, choices=list(BACKBONES),
                   help="backbones for the prompt/kv length growth tables (default: demo)")
    p.add_argument("--growth-p", type=int, nargs="+", default=list(GROWTH_P))
    p.add_argument("--growth-l", type=int, nargs="+", default=list(GROWTH_L))
    p.add_argument("--batch", type=int, default=8, help="ViT-B/16 batch (default 8)")
    p.add_argument("--demo-batch", type=int, default=64, help="demo batch (default 64, TrainConfig's)")
    p.add_argument("--prompt-len", type=int, default=8, help="p for the method rows (default 8)")
    p.add_argument("--kv-len", type=int, default=4, help="l for the method rows (default 4, issue 6's)")
    p.add_argument("--steps", type=int, default=10, help="timed ViT-B/16 steps per configuration (median reported)")
    p.add_argument("--demo-steps", type=int, default=30,
                   help="timed demo steps per configuration (cheap steps, noisier: more of them)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory-steps", type=int, default=1, help="steps (after one warm-up) of each memory process")
    p.add_argument("--layer-repeats", type=int, default=30, help="timed repeats per variant in the layer table")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every child (default 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS),
                   help="tables to measure (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke test: demo only, 3 steps, short growth")
    p.add_argument("--out", default=None, help="CSV path (default benchmarks/results/step_cost.csv)")
    p.add_argument("--profile", default=None, help="profile one configuration instead: linear, vpt-deep, e2vpt, "
                   "e2vpt-noprune, full, frozen (p extra tokens) or frozen0")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--profile-shapes", action="store_true", help="group the profile by input shapes")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.backbones, args.steps, args.demo_steps, args.warmup, args.layer_repeats = ["demo"], 3, 3, 1, 3
        args.growth_p, args.growth_l = [0, 10], [0, 10]
    if args.growth_backbones is None:
        args.growth_backbones = ["demo"]
    if args.profile:
        profile(args)
        return 0
    name = "step_cost_quick" if args.quick else "step_cost_pruned_tokens" if args.sections == ["pruned-tokens"] \
        else "step_cost"
    out_csv = Path(args.out) if args.out else RESULTS / f"{name}.csv"
    published = not args.out and (name == "step_cost_pruned_tokens" and args.backbones == ["vit_b"]
                                  or name == "step_cost" and set(args.sections) == set(SECTIONS)
                                  and args.backbones == ["vit_b", "demo"])

    threads = set_threads(args.threads)
    info, stamp = machine_info(args.device), provenance(args.device)  # the code and defaults this run starts with
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, torch.set_num_threads({threads}), "
          f"device {args.device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}")
    warnings = []
    base = dict(device=args.device, threads=args.threads)
    memory: dict[str, dict] = {}
    rows = []
    t_start = time.perf_counter()
    groups = plan(args)
    for gi, grp in enumerate(groups, 1):
        bb, batch, section = grp["backbone"], grp["batch"], grp["section"]
        warning = busy_warning()
        if warning:
            warnings.append(warning)
            print(warning, file=sys.stderr)
        print(f"[{gi}/{len(groups)}] {section} {LABELS[bb]} batch {batch}: "
              f"{', '.join(label_of(i) for i in grp['items']) or 'one block'} ...", file=sys.stderr, flush=True)
        if section == "layer":
            res = spawn(dict(base, kind="layer", backbone=bb, batch=batch, p=args.prompt_len, l=args.kv_len,
                             steps=args.layer_repeats, warmup=args.warmup), args.timeout)
            for r in res["layers"]:
                rows.append({"section": "layer", "backbone": bb, "batch": batch, "config": r["label"],
                             "p": args.prompt_len, "l": args.kv_len, "threads": res["threads"], "device": args.device,
                             **{k: r[k] for k in ("median_ms", "p25_ms", "p75_ms", "min_ms", "n_steps")}})
            continue
        steps = args.steps if bb == "vit_b" else args.demo_steps
        timing = spawn(dict(base, kind="group", backbone=bb, batch=batch, items=grp["items"], steps=steps,
                            warmup=args.warmup), args.timeout)
        for item, t in zip(grp["items"], timing["items"]):
            mkey = json.dumps(dict(item, backbone=bb, batch=batch), sort_keys=True)
            if mkey not in memory:
                memory[mkey] = spawn(dict(base, **item, backbone=bb, batch=batch, steps=args.memory_steps, warmup=1),
                                     args.timeout)
            m = memory[mkey]
            rows.append({"section": section, "backbone": bb, "batch": batch, "config": label_of(item),
                         "method": item.get("method", "frozen+grad"), "p": item.get("p", 0), "l": item.get("l", 0),
                         "keep": item.get("keep", ""), **t, "threads": timing["threads"], "device": args.device,
                         **{k: m[k] for k in ("peak_mb", "train_mb", "weights_mb", "trainable", "memory_method")}})
    total_s = time.perf_counter() - t_start

    def find(section, backbone, config):
        return next((r for r in rows if r["section"] == section and r["backbone"] == backbone and r["config"] == config),
                    None)

    for r in rows:
        if r["section"] == "layer":
            continue
        full = find("main", r["backbone"], "full")
        if full and r["section"] == "main":  # step ratios only within one interleaved group
            r["step_vs_full"] = r["median_ms"] / full["median_ms"]
        if full:
            r["mem_vs_full"] = r["peak_mb"] / full["peak_mb"]
        if r.get("method") in ("vpt-deep", "e2vpt") and not r.get("keep"):
            ref = find(r["section"], r["backbone"], f"frozen+grad({r['p']} tok)")
            if ref:
                r["vs_frozen_same_tokens"] = r["median_ms"] / ref["median_ms"] - 1

    mem_how = ("CUDA max_memory_allocated" if args.device.startswith("cuda")
               else "peak RSS delta (ru_maxrss minus RSS after imports), one fresh process per configuration")
    md = [f"# Step cost\n\nMachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"`torch.set_num_threads({threads})`, device `{args.device}`"
          f"{' (' + info['gpu'] + ')' if 'gpu' in info else ''}. Step time: median of {args.steps} (ViT-B/16) or "
          f"{args.demo_steps} (demo) steps after "
          f"{args.warmup} warm-up steps, the configurations of one table interleaved step by step in one process. "
          f"Peak memory: {mem_how}. Total {total_s:.0f} s.\n"
          f"Command: `python benchmarks/step_cost.py{' ' + ' '.join(argv) if argv else ' ' + ' '.join(sys.argv[1:])}`\n"]
    for w in dict.fromkeys(warnings):
        md.append(f"\n**{w}**\n")

    def tables(title, cols, table):
        print_table(title, cols, table)
        md.extend([f"\n## {title}\n\n", markdown_table(cols, table)])

    cols = ["config", "step ms", "IQR ms", "×full step", "peak MB", "train MB", "×full mem", "trainable",
            "vs frozen+grad same tokens"]
    for bb in args.backbones:
        sel = [r for r in rows if r["section"] == "main" and r["backbone"] == bb]
        if not sel:
            continue
        tables(f"{LABELS[bb]}, batch {sel[0]['batch']}: one training step (AdamW)", cols,
               [[r["config"], fmt(r["median_ms"], 0), f"{r['p25_ms']:.0f}-{r['p75_ms']:.0f}", fmt(r.get("step_vs_full")),
                 fmt(r["peak_mb"], 0), fmt(r["train_mb"], 0), fmt(r.get("mem_vs_full")), f"{r['trainable']:,}",
                 f"{100 * r['vs_frozen_same_tokens']:+.1f}%" if "vs_frozen_same_tokens" in r else "-"] for r in sel])
    for bb in args.growth_backbones:
        sel = [r for r in rows if r["section"] == "growth-p" and r["backbone"] == bb]
        if sel:
            f0 = find("growth-p", bb, f"frozen+grad({args.growth_p[0]} tok)")
            table = []
            for pp in args.growth_p:
                fr = find("growth-p", bb, f"frozen+grad({pp} tok)")
                vd = find("growth-p", bb, f"vpt-deep p={pp}")
                table.append([pp, fmt(fr["median_ms"], 0), f"{fr['median_ms'] / f0['median_ms']:.2f}",
                              fmt(vd["median_ms"], 0) if vd else "= linear",
                              f"{100 * vd['vs_frozen_same_tokens']:+.1f}%" if vd else "-",
                              fmt(fr["peak_mb"], 0), fmt(vd["peak_mb"], 0) if vd else "-",
                              fmt(vd.get("mem_vs_full")) if vd else "-"])
            tables(f"{LABELS[bb]}, batch {sel[0]['batch']}: growth with prompt length p",
                   ["p", "frozen+grad ms", f"× p={args.growth_p[0]}", "vpt-deep ms", "vpt vs frozen+grad",
                    "frozen peak MB", "vpt peak MB", "vpt ×full mem"], table)
        sel = [r for r in rows if r["section"] == "growth-l" and r["backbone"] == bb]
        if sel:
            l0 = sel[0]["median_ms"]
            tables(f"{LABELS[bb]}, batch {sel[0]['batch']}: growth with key-value length l (e2vpt, p={args.prompt_len})",
                   ["l", "e2vpt ms", f"vs l={sel[0]['l']}", "peak MB", "×full mem", "trainable"],
                   [[r["l"], fmt(r["median_ms"], 0), f"{100 * (r['median_ms'] / l0 - 1):+.1f}%", fmt(r["peak_mb"], 0),
                     fmt(r.get("mem_vs_full")), f"{r['trainable']:,}"] for r in sel])
    for bb in args.backbones:
        sel = [r for r in rows if r["section"] == "pruned-tokens" and r["backbone"] == bb]
        if not sel:
            continue
        zeroed = sel[1]["median_ms"]
        tables(f"{LABELS[bb]}, batch {sel[0]['batch']}: p={HALF_PRUNED_P} with {HALF_PRUNED_P // 2} tokens pruned, "
               "removed (studio, paper) or zeroed in the sequence (official)",
               ["config", "step ms", "IQR ms", "× zeroed", "peak MB"],
               [[r["config"], fmt(r["median_ms"], 0), f"{r['p25_ms']:.0f}-{r['p75_ms']:.0f}",
                 f"{r['median_ms'] / zeroed:.2f}", fmt(r["peak_mb"], 0)] for r in sel])
    for bb in args.backbones:
        sel = [r for r in rows if r["section"] == "layer" and r["backbone"] == bb]
        if not sel:
            continue
        ref = sel[0]["median_ms"]
        tables(f"{LABELS[bb]}, batch {sel[0]['batch']}: one block, forward + backward to its input "
               f"(median of {sel[0]['n_steps']})", ["layer", "ms", "IQR ms", "vs frozen block"],
               [[r["config"], fmt(r["median_ms"], 2), f"{r['p25_ms']:.2f}-{r['p75_ms']:.2f}",
                 f"{100 * (r['median_ms'] / ref - 1):+.1f}%"] for r in sel])

    fields = ["section", "backbone", "batch", "config", "method", "p", "l", "keep", "median_ms", "p25_ms", "p75_ms",
              "min_ms", "n_steps", "step_vs_full", "vs_frozen_same_tokens", "peak_mb", "train_mb", "mem_vs_full",
              "weights_mb", "trainable", "memory_method", "defaults_used", "commit", "defaults", "date", "cpu", "cores",
              "torch", "threads", "device", "python", "gpu"]
    write_csv(out_csv, [{**stamp, "defaults_used": r.get("method") != "frozen+grad", **r} for r in rows], fields)
    if published:  # the published numbers: the default file of a full or a pruned-tokens run, by this script only
        write_readme_block(name, render(read_csv(out_csv)))
    head = "vit_b" if "vit_b" in args.backbones else args.backbones[0]
    e2 = find("main", head, f"e2vpt p={args.prompt_len} l={args.kv_len}")
    vd = find("main", head, f"vpt-deep p={args.prompt_len}")
    half = [r for r in rows if r["section"] == "pruned-tokens" and r["backbone"] == head]
    checks = []
    if e2 and vd:
        worst = max(vd["vs_frozen_same_tokens"], e2["vs_frozen_same_tokens"])
        checks.append(
            f"e2vpt step {e2['step_vs_full']:.2f}x full (target <= {TARGETS['step']}: "
            f"{met(e2['step_vs_full'] <= TARGETS['step'])}); "
            f"e2vpt peak memory {e2['mem_vs_full']:.2f}x full (target <= {TARGETS['memory']}: "
            f"{met(e2['mem_vs_full'] <= TARGETS['memory'])}); "
            f"prompts over frozen+grad with the same tokens: vpt-deep {100 * vd['vs_frozen_same_tokens']:+.1f}%, e2vpt "
            f"(with its kv prompts) {100 * e2['vs_frozen_same_tokens']:+.1f}% (target <= +3%: "
            f"{met(worst <= TARGETS['prompts'])})")
    if half:
        removed_vs_zeroed = half[0]["median_ms"] / half[1]["median_ms"]
        checks.append(f"p={HALF_PRUNED_P} half pruned: removed {removed_vs_zeroed:.2f}x the zeroed step (target <= "
                      f"{TARGETS['removed']}: {met(removed_vs_zeroed <= TARGETS['removed'])})")
    check = f"targets ({LABELS[head]}): " + "; ".join(checks)
    md += ["\n", check, "\n"]
    write_text(out_csv.with_suffix(".md"), "".join(md))
    print(f"\n{check}")
    if warnings:
        print(warnings[-1])
    print(f"wrote {out_csv} and {out_csv.with_suffix('.md')} ({total_s:.0f} s)")
    if head != "vit_b":
        print("(ViT-B/16 not measured: the ratios below are for the demo backbone)")
    if half:
        print(f"ratio removed/zeroed (p={HALF_PRUNED_P}, {HALF_PRUNED_P // 2} pruned): step={removed_vs_zeroed:.2f}")
    if e2:
        print(f"ratio e2vpt/full: step={e2['step_vs_full']:.2f} memory={e2['mem_vs_full']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
