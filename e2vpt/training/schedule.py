"""A run's plan: its phases, seeds, optimiser and learning-rate schedule.

Every random draw of a run is seeded from (seed, phase, epoch, ...) through `seed_for`, so a resumed run
draws what an uninterrupted one would have drawn; the schedule is a pure function of the step, so a
restored scheduler continues exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import TrainConfig


@dataclass
class Phase:
    """One phase of a run: the first training (index 0) or the retraining of pruning round `index`."""

    index: int  # 0 = initial training, r = pruning round r
    epochs: int

    @property
    def name(self) -> str:
        return "train" if self.index == 0 else "retrain"


def phases_of(config: TrainConfig) -> list[Phase]:
    """Phase 0 (the first training), then one retraining phase per pruning round the method does."""
    return [Phase(0, config.epochs)] + [Phase(r, config.resolved_retrain_epochs) for r in range(1, config.rounds + 1)]


def seed_for(seed: int, *parts: int) -> int:
    """A seed for one purpose of one moment of a run (e.g. phase 1, epoch 3, the crops), from the run's seed."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**31 - 1)
    return value


def warmup_cosine(total_steps: int, warmup_steps: int, first: int = 1):
    """Multiplier for LambdaLR: linear warm-up then cosine decay to 0.

    Step k of the warm-up trains at (k + first) / warmup_steps of the rate: `first=1` here (stepped per
    batch), `first=0` in the official code (stepped per epoch, so its first epoch trains at rate 0)."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + first) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_optimizer(model, config: TrainConfig, train_images: int, epochs: int):
    """The optimiser over what the method trains, and its schedule for a phase of `epochs` epochs:
    AdamW, or SGD with momentum at the official code's rate (base rate x batch / 256); warm-up then
    cosine, stepped per batch or (the official code) per epoch."""
    params = [p for _, p in model.trainable_named_parameters()]
    lr = config.resolved_lr
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr * config.batch_size / 256, momentum=0.9,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    if config.schedule_step == "epoch":  # the official WarmupCosineSchedule
        schedule = warmup_cosine(epochs, int(round(config.warmup_epochs)), first=0)
    else:
        steps_per_epoch = math.ceil(train_images / config.batch_size)
        schedule = warmup_cosine(epochs * steps_per_epoch, int(round(config.warmup_epochs * steps_per_epoch)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
