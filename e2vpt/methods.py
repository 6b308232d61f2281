"""The method registry: one row per method, and everything else reads it.

A row says what the method trains (visual prompts and where they go, key-value prompts, the backbone,
the head always), whether it prunes, its default learning rates and the words the app shows for it.
`TrainConfig` takes its choices, default rates and checks from here; `models.prompted.build_model`
builds the model a row describes; the charts order methods by it; the Train form labels them with it;
the benchmarks and tests iterate over it. Adding a method is one row here, plus code only where its
forward differs from the prompted models' (docs/EXTENDING.md).

Why this is not in `models/`: the settings (`config.py`), the command line's `--help` and the Train form
need the rows without importing torch, so the registry is plain data, below `models/` in the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Placement = Literal["none", "shallow", "deep"]


@dataclass(frozen=True)
class Method:
    """One method. `visual`: where its visual prompts go (`deep`: a set of tokens entering every layer,
    replaced at the next; `shallow`: one set entering the first layer, whose outputs flow through the
    rest; `none`). `kv`: key-value prompts in every attention. `prune`: token- and segment-wise pruning
    rounds with rewinding. `train_backbone`: the backbone is trained too (full fine-tuning). `lr` and
    `sgd_lr`: default learning rates with AdamW and with SGD (a user's `--lr` wins)."""

    name: str
    label: str
    trains: str
    visual: Placement
    kv: bool
    prune: bool
    train_backbone: bool
    lr: float
    sgd_lr: float


# Rates: AdamW's work for each family on the demo backbone. SGD's (the official recipe; base rates,
# times batch / 256) were chosen on validation accuracy on the demo (digits, 4 epochs; docs/RECIPES.md):
# e2vpt under the official recipe 0.01/0.5/2.5/10 -> val 0.855/0.955/0.94/0.90, used for every prompt
# method and the linear probe; full 0.015/0.05/0.15 -> 0.945/0.93/0.195.
# The order is the order of every chart and table: fewest tuned parameters first, E2VPT last.
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("linear", "Linear probe", "the head only", visual="none", kv=False, prune=False, train_backbone=False,
           lr=1e-2, sgd_lr=0.5),
    Method("full", "Full fine-tuning", "everything", visual="none", kv=False, prune=False, train_backbone=True,
           lr=3e-4, sgd_lr=0.015),
    Method("vpt-shallow", "VPT-shallow", "visual prompts in the first layer", visual="shallow", kv=False,
           prune=False, train_backbone=False, lr=1e-2, sgd_lr=0.5),
    Method("vpt-deep", "VPT-deep", "visual prompts in every layer", visual="deep", kv=False, prune=False,
           train_backbone=False, lr=1e-2, sgd_lr=0.5),
    Method("e2vpt-noprune", "E2VPT without pruning", "visual + key-value prompts", visual="deep", kv=True,
           prune=False, train_backbone=False, lr=1e-2, sgd_lr=0.5),
    Method("e2vpt", "E2VPT", "visual + key-value prompts, pruned and rewound", visual="deep", kv=True, prune=True,
           train_backbone=False, lr=1e-2, sgd_lr=0.5),
)}
METHODS = tuple(REGISTRY)


def method_named(name: str) -> Method:
    """The row of `name` (a `KeyError` for an unknown name: settings are checked before this is asked)."""
    return REGISTRY[name]


def method_words() -> dict[str, str]:
    """How the Train form names each method: its name, label and what it trains."""
    return {m.name: f"{m.name} ({m.label}: {m.trains})" for m in REGISTRY.values()}


def methods_help() -> str:
    """What each method trains, in one line (the `--method` help and the form's)."""
    return "which parameters are trained: " + ", ".join(f"{m.name} ({m.trains})" for m in REGISTRY.values())
