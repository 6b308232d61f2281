"""The shipped demo backbone: how `e2vpt/assets/demo_vit.safetensors` was made (`pretrain.py`), from
font glyphs drawn on this machine (`glyphs.py`). Its architecture is `models.backbones.build_demo_vit`.

This file holds only the command line of `python -m e2vpt pretrain`: building the parser must not
import torch (the CLI answers `--help` at once), so the training code loads when the command runs.
"""

from __future__ import annotations

import argparse


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `python -m e2vpt pretrain` (the CLI owner wires this in)."""
    p.add_argument("--out", default=None, help="output .safetensors (default: the shipped demo weights)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps at most (default 3000)")
    p.add_argument("--schedule-steps", type=int, default=None,
                   help="cosine schedule length (default --steps); with --steps K reproduces a time-limited run")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock limit; the step count reached is recorded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--shape-weight", type=float, default=20.0, help="weight of the clean-shape regression loss")
    p.add_argument("--threads", type=int, default=2, help="torch threads (fixed thread count = reproducible)")
    p.add_argument("--save-every-minutes", type=float, default=5.0)
    p.add_argument("--log", default=None, help="JSON-lines training log")


def run_pretrain(args: argparse.Namespace) -> int:
    """Run `pretrain` from parsed flags and report the result on stdout."""
    from ..models.backbones import DEMO_WEIGHTS
    from .pretrain import pretrain

    args.out = args.out or str(DEMO_WEIGHTS)
    info = pretrain(out=args.out, steps=args.steps, schedule_steps=args.schedule_steps, minutes=args.minutes,
                    seed=args.seed, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                    warmup=args.warmup, shape_weight=args.shape_weight, threads=args.threads,
                    save_every_minutes=args.save_every_minutes, log_path=args.log)
    print(f"wrote {args.out}: {info['steps_done']} steps ({info['stopped_by']}), {info['wall_s']:.0f} s, "
          f"train acc {info['train_acc_ema']:.3f}; reproduce with: {info['reproduce']}")
    return 0
