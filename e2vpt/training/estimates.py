"""How long a run or a sweep will take here, from what earlier runs measured on this machine.

Never a constant: an epoch of the demo takes 2 s on an idle workstation and 20 s on a busy 2-core
laptop. Each epoch is priced at the median epoch time of finished runs of the same backbone and
dataset in the runs root (per method when there are some), plus one epoch per pruning round for
scoring. With nothing measured yet the estimate says so instead of guessing.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..config import TrainConfig
from ..runs import RunDir


def epoch_costs(rows: list[dict], backbone: str, dataset: str, limit: int = 20) -> dict[str, float]:
    """Median seconds per epoch of finished runs (rows of `list_runs`) of `backbone` on `dataset`, per
    method ("*": all methods), from the newest `limit` such runs."""
    seen: dict[str, list[float]] = {}
    for row in [r for r in rows if r.get("state") == "done" and r.get("backbone") == backbone
                and r.get("dataset") == dataset][:limit]:
        times = [m["epoch_s"] for m in RunDir(Path(row["path"])).metrics()
                 if m.get("kind") == "epoch" and isinstance(m.get("epoch_s"), (int, float))]
        if times:
            seen.setdefault(row["method"], []).extend(times)
            seen.setdefault("*", []).extend(times)
    return {method: statistics.median(times) for method, times in seen.items()}


def priced_epochs(config: TrainConfig) -> int:
    """Epochs a run trains, a scoring pass per pruning round counted as one."""
    return config.epochs + config.rounds * (config.resolved_retrain_epochs + 1)


def run_seconds(config: TrainConfig, rows: list[dict]) -> dict:
    """{"seconds": expected wall time or None, "basis": a sentence saying what it rests on}."""
    costs = epoch_costs(rows, config.backbone, config.dataset)
    epochs = priced_epochs(config)
    if not costs:
        return {"seconds": None, "basis": f"no finished {config.backbone} run on {config.dataset} here yet to time an "
                                          f"epoch ({epochs} epochs planned)"}
    per_epoch = costs.get(config.method, costs["*"])
    which = config.method if config.method in costs else "any method"
    return {"seconds": epochs * per_epoch, "basis": f"{epochs} epochs at {per_epoch:.1f} s, the median epoch of earlier "
                                                    f"{config.backbone} runs on {config.dataset} ({which}) here"}
