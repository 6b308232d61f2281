"""`python -m e2vpt pretrain`: how the shipped demo backbone (`e2vpt/assets/demo_vit.safetensors`) was made.

Why it exists: prompt tuning only means something on a *pretrained* backbone, and the demo must work
offline. The backbone (`models.backbones.build_demo_vit()`) is trained from scratch, on this machine's CPU,
to classify augmented font glyphs (`glyphs.py`), data disjoint from every built-in task.

Reproducibility: the weights are a function of (seed, steps, schedule, threads). Each step's batch is
regenerated from (seed, step); the learning-rate schedule depends only on `--schedule-steps`, never on
the wall clock, so a run cut short by `--minutes` after K steps is reproduced exactly by
`--steps K --schedule-steps N` (both are written into the file's metadata).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from ..models.backbones import DEMO_CONFIG, DEMO_MEAN, DEMO_STD, DEMO_WEIGHTS, build_demo_vit
from .glyphs import TARGET_SIZE, GlyphBank, GlyphBatches

RECIPE_NAME = "glyphs-multitask-v3"


def lr_at(step: int, peak: float, warmup: int, schedule_steps: int, floor: float) -> float:
    """Linear warm-up, then cosine from `peak` down to `floor * peak` at `schedule_steps`, flat after.

    It depends on the step alone (not on wall time), which is what makes a time-limited run
    reproducible from its recorded step count.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, schedule_steps - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the pretraining head: exactly the keys `create_backbone("demo")` loads."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}


def save_backbone(model: torch.nn.Module, out: Path, metadata: dict) -> None:
    """Atomic write (temp file + os.replace) so a reader never sees a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    save_file(backbone_state(model), str(tmp), metadata=meta)
    os.replace(tmp, out)


def pretrain(out: str | Path = DEMO_WEIGHTS, steps: int = 3000, schedule_steps: int | None = None,
             minutes: float | None = None, seed: int = 0, batch_size: int = 64, lr: float = 5e-4,
             weight_decay: float = 0.05, warmup: int = 100, lr_floor: float = 0.05,
             label_smoothing: float = 0.1, shape_weight: float = 20.0, threads: int = 2, save_every_minutes: float = 5.0,
             log_path: str | Path | None = None, progress: bool = True,
             fonts: list[Path] | None = None) -> dict:
    """Train the demo ViT on augmented glyphs and write the head-less backbone as safetensors.

    Args:
        out: destination `.safetensors` (rewritten atomically every `save_every_minutes` and at the end).
        steps: optimiser steps to run at most.
        schedule_steps: length of the cosine schedule (default `steps`); give it with `--steps K` to
            reproduce a run that a time limit stopped after K steps.
        minutes: wall-clock limit; the run stops early (after a whole step) and records the step count.
        seed: model init and data seed.
        threads: torch intra-op threads (results are bit-reproducible for a fixed thread count).
        log_path: optional JSON-lines log of loss/accuracy/lr every 25 steps.
        fonts: font files to render (default: every installed face `glyphs.find_fonts()` picks);
            tests pass a few to stay fast.

    Returns:
        The metadata written into the file (steps_done, wall_s, final loss and accuracy, ...).
    """
    t0 = time.time()
    torch.set_num_threads(threads)
    schedule_steps = steps if schedule_steps is None else schedule_steps
    out = Path(out)
    bank = GlyphBank.build(font_files=fonts)
    data = GlyphBatches(bank, batch_size, seed, mean=DEMO_MEAN[0], std=DEMO_STD[0])
    torch.manual_seed(seed)
    model = build_demo_vit(num_classes=bank.num_classes)
    # Second head on the same pre-logits ([CLS] after the final norm, what prompt tuning reads):
    # regress the clean 8x8 shape. Its dense gradient gets the ViT off the chance-level plateau that
    # classification alone sat on for 225+ steps here, and keeps spatial layout in the [CLS] token.
    torch.manual_seed(seed + 1)
    shape_head = torch.nn.Linear(DEMO_CONFIG["embed_dim"], TARGET_SIZE * TARGET_SIZE)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n
                                                                and "cls_token" not in n)]
    opt = torch.optim.AdamW([{"params": decay + [shape_head.weight], "weight_decay": weight_decay},
                             {"params": no_decay + [shape_head.bias], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999))
    recipe = dict(name=RECIPE_NAME, task="glyph-identity classification (cross-entropy) + shape_weight * MSE "
                  f"regression of the clean {TARGET_SIZE}x{TARGET_SIZE} glyph mask, both from the [CLS] pre-logits",
                  shape_weight=shape_weight, optimizer="AdamW",
                  lr=lr, betas=[0.9, 0.999], weight_decay=weight_decay, warmup=warmup,
                  schedule=f"linear warm-up {warmup} steps, cosine to {lr_floor}*lr at schedule_steps",
                  schedule_steps=schedule_steps, lr_floor=lr_floor, label_smoothing=label_smoothing,
                  grad_clip=1.0, batch_size=batch_size, classes=bank.num_classes,
                  augmentation=GlyphBatches.__doc__.split("\n\n", 1)[1].strip())
    base_meta = {"format": "e2vpt-demo-backbone", "architecture": DEMO_CONFIG, "mean": list(DEMO_MEAN),
                 "std": list(DEMO_STD), "recipe": recipe, "seed": seed, "threads": threads,
                 "glyph_classes": "".join(bank.chars), "fonts": bank.fonts,
                 "excluded_digit_like": "".join(bank.excluded_digit_like),
                 "bank_images": int(bank.images.shape[0]), "torch": torch.__version__, "timm": timm.__version__,
                 "machine": f"{platform.machine()} {os.cpu_count()} cpu"}
    log = open(log_path, "a") if log_path else None
    deadline = t0 + minutes * 60 if minutes else None
    last_save = time.time()
    ema_loss = ema_acc = ema_shape = None
    step = 0
    stopped_by = "steps"

    def meta() -> dict:
        return dict(base_meta, steps_done=step, stopped_by=stopped_by, wall_s=round(time.time() - t0, 1),
                    train_loss_ema=ema_loss, train_acc_ema=ema_acc, train_shape_mse_ema=ema_shape,
                    reproduce=f"--steps {step} --schedule-steps {schedule_steps} --seed {seed} "
                              f"--batch-size {batch_size} --lr {lr} --warmup {warmup} --shape-weight {shape_weight} "
                              f"--threads {threads}")

    bar = tqdm(total=steps, disable=not progress, desc="pretrain", unit="step")
    try:
        while step < steps:
            if deadline is not None and time.time() >= deadline:
                stopped_by = "time"
                break
            cur_lr = lr_at(step, lr, warmup, schedule_steps, lr_floor)
            for group in opt.param_groups:
                group["lr"] = cur_lr
            x, y, shape = data.batch(step)
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.head(feats)
            shape_loss = F.mse_loss(shape_head(feats), shape)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing) + shape_weight * shape_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(shape_head.parameters()), 1.0)
            opt.step()
            step += 1
            acc = (logits.argmax(1) == y).float().mean().item()
            ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
            ema_shape = shape_loss.item() if ema_shape is None else 0.98 * ema_shape + 0.02 * shape_loss.item()
            ema_acc = acc if ema_acc is None else 0.98 * ema_acc + 0.02 * acc
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", lr=f"{cur_lr:.2e}")
                if log:
                    log.write(json.dumps({"step": step, "loss": round(ema_loss, 4), "acc": round(ema_acc, 4),
                                          "shape_mse": round(ema_shape, 5),
                                          "lr": cur_lr, "wall_s": round(time.time() - t0, 1)}) + "\n")
                    log.flush()
            if time.time() - last_save >= save_every_minutes * 60:
                save_backbone(model, out, dict(meta(), stopped_by="checkpoint"))
                last_save = time.time()
    finally:
        bar.close()
        if log:
            log.close()
    final = meta()
    save_backbone(model, out, final)
    return final


if __name__ == "__main__":
    from . import add_pretrain_arguments, run_pretrain

    parser = argparse.ArgumentParser(prog="python -m e2vpt.demo_backbone.pretrain",
                                     description=__doc__.split("\n\n")[0])
    add_pretrain_arguments(parser)
    raise SystemExit(run_pretrain(parser.parse_args()))
