"""`TrainConfig`: every choice a run makes, validated once, stored in the run directory.

The spec leaves several points open (mask scope, segment layout, importance sign, rewind reading);
each is a field here so that a run records which reading it used. Validation happens in
`__post_init__` and raises `ConfigError` with a message naming the fix, so the CLI, the app and a
notebook all reject an impossible setting the same way before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError

METHODS = ("linear", "full", "vpt-shallow", "vpt-deep", "e2vpt-noprune", "e2vpt")
Method = Literal["linear", "full", "vpt-shallow", "vpt-deep", "e2vpt-noprune", "e2vpt"]

# Learning rates that work for each family on the demo backbone with AdamW; a user's --lr wins.
DEFAULT_LR = {"linear": 1e-2, "full": 3e-4, "vpt-shallow": 1e-2, "vpt-deep": 1e-2,
              "e2vpt-noprune": 1e-2, "e2vpt": 1e-2}


@dataclass
class MethodSpec:
    """What a method trains: derived from the method name, never stored separately."""

    visual: Literal["none", "shallow", "deep"]
    kv: bool
    prune: bool
    train_backbone: bool


METHOD_SPECS = {
    "linear": MethodSpec("none", False, False, False),
    "full": MethodSpec("none", False, False, True),
    "vpt-shallow": MethodSpec("shallow", False, False, False),
    "vpt-deep": MethodSpec("deep", False, False, False),
    "e2vpt-noprune": MethodSpec("deep", True, False, False),
    "e2vpt": MethodSpec("deep", True, True, False),
}


@dataclass
class TrainConfig:
    """Hyper-parameters of one run.

    Args:
        method: which parameters are trained (see `METHOD_SPECS`).
        backbone: `demo` or a timm ViT name.
        pretrained: load pretrained weights for the backbone.
        weights: local `.safetensors` backbone weights (instead of the hub).
        img_size: input size (None: the backbone's own).
        global_pool: features the head reads: `token` ([CLS]), `avg` (mean of the patch tokens, prompts
            excluded) or `auto` (the checkpoint's own habit: `avg` for MAE weights, timm's default otherwise).
        dataset: dataset name (see `e2vpt.data.list_datasets()`).
        data_root: folder holding the dataset, for datasets that need one.
        download: let torchvision download a dataset (needs network).
        prompt_len: visual prompt tokens per layer (p).
        kv_len: key-value prompts per layer (l); 0 disables them.
        kv_shared: one tensor serves as both key and value prompt (the official code's default).
        prompt_dropout: dropout on visual prompts while training.
        epochs: epochs of the first training phase.
        retrain_epochs: epochs after each pruning round (None: same as `epochs`).
        batch_size: images per step.
        optimizer: `adamw` or `sgd` (momentum 0.9, VPT's recipe).
        lr: learning rate (None: the method's default in `DEFAULT_LR`).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        warmup_epochs: linear warm-up before cosine decay, in epochs (stepped per batch).
        label_smoothing: cross-entropy label smoothing.
        prune_rounds: pruning rounds for `e2vpt` (each: score, prune, rewind, retrain).
        prune_ratio: fraction of the surviving prompt tokens pruned in each round.
        segment_ratio: fraction of the surviving segments pruned in each round.
        segments: segments per prompt token (R; the official code uses 16).
        mask_scope: `layer` (one token mask per layer and position) or `shared` (paper: one per position).
        segment_layout: `interleaved` (official: segment r holds channels r, r+R, ...) or `contiguous`.
        importance: `abs` (paper: mean |dL/dmask| per image) or `signed` (official code: mean signed gradient).
        rewind: `init` (survivors reset to their initial values) or `reinit` (fresh random values, official code).
        select_round: `best` (best validation accuracy among pruning rounds, ties to more pruning) or `last`.
        seed: seeds initialisation, data order and dropout.
        device: `auto` (CUDA when present), `cpu` or `cuda[:N]`.
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        train_augment: training-time augmentation (random resized crop + flip, FGVC style).
    """

    method: Method = "e2vpt"
    backbone: str = "demo"
    pretrained: bool = True
    weights: str | None = None
    img_size: int | None = None
    global_pool: Literal["auto", "token", "avg"] = "auto"
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    prompt_len: int = 8
    kv_len: int = 4
    kv_shared: bool = False
    prompt_dropout: float = 0.0
    epochs: int = 4
    retrain_epochs: int | None = 2
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    prune_rounds: int = 2
    prune_ratio: float = 0.5
    segment_ratio: float = 0.25
    segments: int = 16
    mask_scope: Literal["layer", "shared"] = "layer"
    segment_layout: Literal["interleaved", "contiguous"] = "interleaved"
    importance: Literal["abs", "signed"] = "abs"
    rewind: Literal["init", "reinit"] = "init"
    select_round: Literal["best", "last"] = "best"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    train_augment: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.global_pool in ("auto", "token", "avg"),
             f"global pool '{self.global_pool}' is not one of auto, token, avg")
        need(self.method in METHODS, f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        spec = self.spec
        if spec.visual != "none":
            need(isinstance(self.prompt_len, int) and self.prompt_len > 0,
                 f"prompt length must be a positive integer for {self.method}, got {self.prompt_len}; "
                 "use e.g. --prompt-len 10")
        need(isinstance(self.kv_len, int) and self.kv_len >= 0,
             f"kv length must be 0 or more, got {self.kv_len}; use e.g. --kv-len 5")
        need(0.0 <= self.prune_ratio < 1.0,
             f"prune ratio must be in [0, 1), got {self.prune_ratio}; e.g. --prune-ratio 0.5 prunes half each round")
        need(0.0 <= self.segment_ratio < 1.0,
             f"segment ratio must be in [0, 1), got {self.segment_ratio}; e.g. --segment-ratio 0.25")
        need(self.prune_rounds >= 0, f"prune rounds must be 0 or more, got {self.prune_rounds}")
        need(self.segments >= 1, f"segments must be at least 1, got {self.segments}; the official code uses 16")
        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.retrain_epochs is None or self.retrain_epochs >= 1,
             f"retrain epochs must be at least 1, got {self.retrain_epochs}")
        need(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        need(self.lr is None or self.lr > 0, f"learning rate must be positive, got {self.lr}")
        need(self.weight_decay >= 0, f"weight decay must be 0 or more, got {self.weight_decay}")
        need(0.0 <= self.prompt_dropout < 1.0, f"prompt dropout must be in [0, 1), got {self.prompt_dropout}")
        need(0.0 <= self.label_smoothing < 1.0, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.warmup_epochs >= 0, f"warm-up epochs must be 0 or more, got {self.warmup_epochs}")
        need(self.img_size is None or self.img_size >= 8, f"image size must be at least 8, got {self.img_size}")
        need(self.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got '{self.optimizer}'")
        need(self.mask_scope in ("layer", "shared"), f"mask scope must be layer or shared, got '{self.mask_scope}'")
        need(self.segment_layout in ("interleaved", "contiguous"),
             f"segment layout must be interleaved or contiguous, got '{self.segment_layout}'")
        need(self.importance in ("abs", "signed"), f"importance must be abs or signed, got '{self.importance}'")
        need(self.rewind in ("init", "reinit"), f"rewind must be init or reinit, got '{self.rewind}'")
        need(self.select_round in ("best", "last"), f"select round must be best or last, got '{self.select_round}'")

    @property
    def spec(self) -> MethodSpec:
        return METHOD_SPECS[self.method]

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def resolved_retrain_epochs(self) -> int:
        return self.retrain_epochs if self.retrain_epochs is not None else self.epochs

    @property
    def rounds(self) -> int:
        """Pruning rounds this run actually does (0 for every method but e2vpt)."""
        return self.prune_rounds if self.spec.prune else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**values)


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict of `TrainConfig` fields (dashes allowed in keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}
