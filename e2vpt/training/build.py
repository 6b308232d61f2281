"""Building a run's model: the one recipe that training, evaluation and analysis share.

Only the tuned tensors are saved, so a saved run is reloaded by rebuilding everything else exactly
as training built it: the same backbone (a random-init one, `--no-pretrained`, exists only as the
seed that drew it), the same preprocessing and splits, and the same seeds drawn in the same order.
When training and loading each had their own copy of that recipe, a change to one could silently
make reloaded runs disagree with their own summaries; here there is one copy.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..errors import RunDirError, UserError
from ..models.backbones import create_backbone, data_config
from ..models.prompted import build_model
from ..runs import RunDir, read_tensors
from .distributed import DistContext


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; asking for CUDA without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """A factory of the autocast context for `precision` on `device`, or None for plain fp32.

    auto is bf16 on a CUDA GPU that supports it and fp32 on the CPU: the CPU's numbers (demo, tests,
    benchmarks) are fp32 ones, and bf16 there is a choice to measure (benchmarks/README.md, Precision).
    bf16 on a CPU without native bfloat16 instructions still runs (emulated), only slower.
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: the GPU {torch.cuda.get_device_name(device)} has no bfloat16; use "
                        "--precision fp32 (or auto)")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def build_model_and_splits(config: TrainConfig, download: bool = False, train_augment: bool = False):
    """(prompted model on the CPU, its dataset splits) for `config`; the backbone is `model.backbone`.

    Args:
        config: the run's hyper-parameters.
        download: let the data loader download a missing dataset (training only: a reload never does).
        train_augment: augment the train split (training only: analyses read the train split as it is).
    """
    from ..data import load_splits

    backbone = _run_backbone(config)
    dc = data_config(backbone)
    splits = load_splits(config.dataset, root=config.data_root, img_size=dc["input_size"][-1], mean=dc["mean"],
                         std=dc["std"], seed=0, download=download, train_augment=train_augment,
                         train_on_val=config.train_on == "train+val")
    torch.manual_seed(config.seed)  # and so are the prompts and the head, whatever the data loading drew
    return build_model(config, backbone, splits.num_classes), splits


def _run_backbone(config: TrainConfig):
    """The frozen backbone as the run built it (a random-init one is drawn from the run's seed)."""
    torch.manual_seed(config.seed)
    return create_backbone(config.backbone, pretrained=config.pretrained, weights=config.weights,
                           img_size=config.img_size, global_pool=config.global_pool)


def build_run_model(config: TrainConfig, num_classes: int):
    """The prompted model alone, without its data: for a trained run whose classes are known (its saved
    tensors replace every value drawn here), so using it never needs its dataset."""
    backbone = _run_backbone(config)
    torch.manual_seed(config.seed)
    return build_model(config, backbone, num_classes)


def load_run_model(run_dir: str | Path, device: str = "cpu", round_index: int | None = None):
    """Rebuild a saved run's model (backbone + tuned tensors) for evaluation and analysis.

    Returns (model, config, splits). `round_index` picks a pruning round's saved state instead of the final one.
    """
    run = RunDir(run_dir)
    config = TrainConfig.from_dict(run.config())
    model, splits = build_model_and_splits(config, download=False)
    if round_index is None:
        state = run.load_weights()
    else:
        path = run.round_file(round_index)
        if not path.is_file():
            raise RunDirError(f"{run.path} has no saved state for round {round_index}")
        state = read_tensors(path)
    model.load_tuned_state(state)
    return model.to(torch.device(device)).eval(), config, splits


def load_run_splits(run_dir: str | Path):
    """A saved run's dataset splits as its training built them (to show its images); no weights are read."""
    return build_model_and_splits(TrainConfig.from_dict(RunDir(run_dir).config()), download=False)[1]


@torch.no_grad()
def evaluate(model, loader, device, autocast=None, ctx: DistContext | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) over a loader; with `ctx`, summed over every rank's shard."""
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    if ctx is not None and ctx.enabled:
        sums = ctx.all_reduce(torch.tensor([loss_sum, correct, total], dtype=torch.float64, device=device))
        loss_sum, correct, total = sums[0].item(), int(sums[1].item()), int(sums[2].item())
    return loss_sum / max(total, 1), correct / max(total, 1)


def evaluate_run(run_dir: str | Path, device: str = "auto") -> dict:
    """Re-evaluate a saved run on its validation and test splits, at the precision it trained with."""
    dev = resolve_device(device)
    model, config, splits = load_run_model(run_dir, device=str(dev))
    autocast = autocast_for(dev, config.precision)
    results = {}
    for split in ("val", "test"):
        loader = DataLoader(getattr(splits, split), batch_size=256)
        loss, acc = evaluate(model, loader, dev, autocast)
        results[f"{split}_loss"], results[f"{split}_acc"] = loss, acc
    results["tuned_params"] = model.tuned_param_count()
    return results
