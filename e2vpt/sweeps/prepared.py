"""Prepared sweeps (the Sweeps page's starting points) and the time estimate shown before one starts.

The estimate is measured, not guessed (`e2vpt.training.estimates`): each trial's epochs are priced at the median
epoch time of finished runs of the same backbone and dataset on this machine (per method when there
are some), plus one epoch per pruning round for scoring. With nothing measured yet it says so.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..training.estimates import epoch_costs, priced_epochs
from .spec import SweepSpec

PREPARED = {
    "class comparison": {
        "help": "linear probe, VPT-deep at p = 1, 2, 4, 8 and E2VPT at p = 8 x l = 1, 4 (every pruning round a "
                "point), 3 seeds each: "
                "is E2VPT on or beyond VPT-deep's accuracy-per-parameter frontier here?",
        # E2VPT at p = 8 only: its two pruning rounds (8 -> 4 -> 2 tokens, segments too) already span
        # VPT-deep's range of prompt lengths (21 trials: 11 min 21 s on 2 cores, benchmarks/README.md)
        "spec": {"methods": {"linear": {}, "vpt-deep": {"grid": {"prompt_len": [1, 2, 4, 8]}},
                             "e2vpt": {"grid": {"prompt_len": [8], "kv_len": [1, 4]}}},
                 "seeds": [0, 1, 2]},
    },
    "learning rate x weight decay, VPT protocol": {
        "help": "VPT's protocol for VPT-deep and E2VPT: each (learning rate, weight decay) pair judged on the "
                "validation split, then each method's best retrained on train + val with 3 seeds and reported on test",
        "spec": {"methods": ["vpt-deep", "e2vpt"], "grid": {"lr": [0.003, 0.01, 0.03], "weight_decay": [0.0, 1e-4, 1e-2]},
                 "seeds": [0], "protocol": "vpt", "final_seeds": [0, 1, 2]},
    },
    "pruning search against pruning rounds": {
        "help": "E2VPT's official pruning search (phase 0 trained and scored once, then each share of tokens x "
                "share of segments pruned retrained from it, the best on validation) beside the same E2VPT pruned "
                "in rounds, 3 seeds: what does the search buy, and at what cost?",
        "spec": {"methods": ["e2vpt"], "protocol": "e2vpt-search", "token_levels": [0.25, 0.5, 0.75],
                 "segment_levels": [0.25, 0.5], "seeds": [0, 1, 2]},
    },
}


def prepared(name: str, base: dict | None = None, **changes) -> SweepSpec:
    """The prepared sweep `name` on the training settings `base` (e.g. the Train form's backbone and
    dataset), with `changes` (seeds, scheduler, name) on top."""
    values = {**PREPARED[name]["spec"], "base": dict(base or {}), "name": name, **changes}
    return SweepSpec.from_dict(values)


def estimate_seconds(spec: SweepSpec, rows: list[dict], slots: int = 1) -> dict:
    """The sweep's expected wall time from measured epoch times (see the module docstring).

    Returns {"seconds": total or None, "trials": n, "at_most": whether n is an upper bound (the pruning
    search's levels that turn out identical are trained once), "epochs": all epochs, "basis": a sentence}. `slots` trials run at once; the estimate assumes they share the
    machine (a trial at 1 CPU is slower than the same run measured on all CPUs), so it divides nothing.
    """
    trials = spec.trials()
    if spec.protocol == "vpt":  # the final trials' configuration is chosen later: priced as each method's first
        trials += spec.final_trials({m: next((t.values for t in trials if t.method == m), {}) for m in spec.methods})
    configs = [TrainConfig.from_dict(t.config) for t in trials]
    epochs = [priced_epochs(c) for c in configs]
    if spec.protocol == "e2vpt-search":  # each scout trains phase 0 and scores it; each level only retrains
        # (levels that prune the same counts are trained once: priced as every pair, an upper bound)
        pairs = len(spec.token_levels) * len(spec.segment_levels)
        for scout in spec.scout_trials():
            config = TrainConfig.from_dict(scout.config)
            configs += [config] * (1 + pairs)
            epochs += [config.epochs + 1] + [config.resolved_retrain_epochs] * pairs
            trials += [scout] * (1 + pairs)
    first = configs[0]
    costs = epoch_costs(rows, first.backbone, first.dataset)
    at_most = spec.protocol == "e2vpt-search"
    if not costs:
        return {"seconds": None, "trials": len(trials), "at_most": at_most, "epochs": sum(epochs), "basis":
                f"no finished run of {first.backbone} on {first.dataset} here yet to time an epoch: train one "
                "first for an estimate"}
    total = sum(n * costs.get(c.method, costs["*"]) for n, c in zip(epochs, configs)) + 15.0  # + Ray's start-up
    return {"seconds": total, "trials": len(trials), "at_most": at_most, "epochs": sum(epochs),
            "basis": f"{sum(epochs)} epochs at the median epoch time of earlier {first.backbone} runs on "
                     f"{first.dataset} here ({costs['*']:.1f} s), {slots} trial(s) at a time sharing the machine"}
