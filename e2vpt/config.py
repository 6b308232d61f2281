"""`TrainConfig`: every choice a run makes, declared once, validated once, stored in the run directory.

Each field carries its own description in `field(metadata=...)`: help text, bounds, the group it
belongs to and how the Train form shows it; choices come from its `Literal` type. Everything else is
generated from that one declaration: the `python -m e2vpt train` flags (`cli.py`), the validation in
`__post_init__` (one-line errors naming the field), the app's Train form (`app_pages/train.py`) and the
settings table in `docs/SETTINGS.md` (`python -m e2vpt settings`). Adding a hyper-parameter is one
edit here.

The spec (docs/E2VPT-SPEC.md) leaves several points open (mask scope, segment layout, importance sign,
rewind reading); each is a field so that a run records which reading it used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .methods import METHODS, Method, method_named, method_words, methods_help
from .recipes import RECIPES

# Section titles of the CLI help, the docs table and the Train form, in display order.
GROUPS = {"model": "model", "prompts": "prompts", "data": "data", "optimisation": "optimisation",
          "pruning": "pruning (e2vpt)", "run": "run"}

# Backbones the Train form suggests (any timm ViT or Swin name is accepted).
SUGGESTED_BACKBONES = ("demo", "vit_base_patch16_224.augreg_in21k", "vit_small_patch16_224.augreg_in21k",
                       "vit_tiny_patch16_224.augreg_in21k", "vit_base_patch16_224.mae",
                       "swin_base_patch4_window7_224.ms_in22k", "swin_tiny_patch4_window7_224.ms_in1k")


def setting(default: Any, help: str, *, group: str, label: str, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, pattern: str | None = None, none_means: str | None = None,
            basic: bool = False, widget: str | None = None, step: float | None = None,
            form_max: float | None = None, choice_labels: dict | None = None) -> Any:
    """A `TrainConfig` field with everything the CLI, the validation, the form and the docs need.

    Args:
        default: the value when nothing is given.
        help: one sentence for `--help`, the form's tooltip and the docs table.
        group: a key of `GROUPS` (CLI argument group, docs section, form column).
        label: the Train form's label.
        ge, gt, le, lt: numeric bounds (inclusive / exclusive).
        pattern: a regular expression a string value must match in full.
        none_means: for optional fields, what None stands for (the form writes 0 or an empty box for it).
        basic: shown at the top of the Train form rather than under "More settings".
        widget: the form widget when the type's default does not fit (`slider`, `select`).
        step, form_max: the form widget's step and its upper end when the bound is open (`lt`).
        choice_labels: words the form shows for some choices (the value stays the choice).
    """
    assert group in GROUPS, group
    meta = {"help": help, "group": group, "label": label, "ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern,
            "none_means": none_means, "basic": basic, "widget": widget, "step": step, "form_max": form_max,
            "choice_labels": choice_labels or {}}
    return field(default=default, metadata={"setting": meta})


# settings that phase 0 never reads: a run may take its phase 0 from another run that differs only in
# these (the pruning search: one phase 0, many pruning levels)
PRUNING_ONLY = ("prune_rounds", "prune_ratio", "segment_ratio", "retrain_epochs", "select_round", "rewind")
# settings that change how fast a run goes or what it analyses afterwards, never the model it trains
NO_EFFECT_ON_RESULTS = ("workers", "audit_pruning")


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. Each field's meaning, bounds and flag are in its `setting(...)`
    below (listed in docs/SETTINGS.md); `extra` holds bookkeeping (e.g. the creation time), not settings."""

    # model
    backbone: str = setting("demo", "`demo` (shipped, offline) or a timm ViT/Swin name, e.g. "
                            "vit_base_patch16_224.augreg_in21k, vit_base_patch16_224.mae, swin_base_patch4_window7_224",
                            group="model", label="Backbone", basic=True, widget="select", pattern=r"\S+")
    pretrained: bool = setting(True, "load pretrained backbone weights", group="model",
                               label="Pretrained backbone", basic=True)
    method: Literal[METHODS] = setting("e2vpt", methods_help(), group="model", label="Method", basic=True,
                                       widget="select", choice_labels=method_words())
    weights: str | None = setting(None, "local .safetensors backbone weights instead of the hub", group="model",
                                  label="Backbone weights (.safetensors under the data root)",
                                  none_means="the hub's or the shipped weights")
    img_size: int | None = setting(None, "input size in pixels", group="model", label="Image size", ge=8, le=4096,
                                   none_means="the backbone's", step=16)
    global_pool: Literal["auto", "token", "avg"] = setting(
        "auto", "features the head reads: token ([CLS]), avg (mean of the patch tokens, prompts excluded) or auto "
        "(avg for MAE weights, timm's default otherwise)", group="model", label="Head reads")
    recipe: Literal[tuple(RECIPES)] = setting(
        "studio", "which reading of E2VPT sets the method's choices (docs/RECIPES.md): studio (this project's), paper "
        "(the paper's text) or official (the official code); settings given explicitly override it",
        group="model", label="Recipe", basic=True,
        choice_labels={"studio": "studio", "paper": "paper's text", "official": "official code"})
    avg_pool: Literal["patches", "tokens"] = setting(
        "patches", "what avg pooling (MAE) averages: patches (after the pretrained norm) or tokens (official MAE "
        "head: every token after [CLS], prompts included, then a fresh LayerNorm)", group="model",
        label="Average pooling over")
    # prompts
    prompt_len: int = setting(8, "visual prompt tokens per layer (p)", group="prompts",
                              label="Visual prompt tokens per layer (p)", ge=0, le=1024, basic=True)
    # kv_len, retrain_epochs, prune_ratio: chosen on validation accuracy over the five built-in tasks
    # (benchmarks/README.md, "Choosing the demo's defaults"; records in benchmarks/results/defaults-search.evidence.json.gz)
    kv_len: int = setting(2, "key-value prompts per layer (l); 0 disables them", group="prompts",
                          label="Key-value prompts per layer (l)", ge=0, le=1024, basic=True)
    kv_shared: bool = setting(False, "one tensor serves as both key and value prompt (the official code's default)",
                              group="prompts", label="Key and value prompts share one tensor")
    prompt_dropout: float = setting(0.0, "dropout on visual prompts while training", group="prompts",
                                    label="Prompt dropout", ge=0.0, lt=1.0, step=0.05, form_max=0.99)
    # data
    dataset: str = setting("digits", "digits, fashion-mnist, dsprites-loc, dsprites-ori, clevr-count, a torchvision "
                           "name, imagefolder, vtab or fgvc", group="data", label="Dataset", basic=True,
                           widget="select", pattern=r"\S+")
    data_root: str | None = setting(None, "folder holding the dataset, for datasets that need one", group="data",
                                    label="Data folder (for datasets that need one)", basic=True,
                                    none_means="the data root, for datasets that read one")
    download: bool = setting(False, "let torchvision download the dataset (needs network)", group="data",
                             label="Download the dataset (torchvision, needs network)")
    train_augment: bool = setting(False, "random resized crop + flip while training (FGVC style)", group="data",
                                  label="Training augmentation")
    train_on: Literal["train", "train+val"] = setting(
        "train", "train: the train split, with val held out to pick the epoch and round; train+val: both, once the "
        "hyper-parameters are chosen (VPT's final protocol), keeping the last epoch and round since nothing is held "
        "out", group="data", label="Train on",
        choice_labels={"train": "train split (val held out)", "train+val": "train + val (final runs)"})
    # optimisation
    epochs: int = setting(4, "epochs of the first training phase", group="optimisation", label="Epochs",
                          ge=1, le=10_000, basic=True)
    retrain_epochs: int | None = setting(4, "epochs after each pruning round", group="optimisation",
                                         label="Epochs after each pruning round", ge=1, le=10_000,
                                         none_means="the same as epochs", basic=True)
    batch_size: int = setting(64, "images per step", group="optimisation", label="Batch size", ge=1, le=65_536,
                              step=8)
    optimizer: Literal["adamw", "sgd"] = setting("adamw", "adamw, or sgd with momentum 0.9 (VPT's recipe)",
                                                 group="optimisation", label="Optimizer")
    lr: float | None = setting(None, "learning rate (with sgd: the base rate, multiplied by batch_size / 256)",
                               group="optimisation", label="Learning rate", gt=0.0, le=100.0,
                               none_means="the method's default")
    weight_decay: float = setting(1e-4, "decoupled (AdamW) or L2 (SGD) weight decay", group="optimisation",
                                  label="Weight decay", ge=0.0, le=10.0)
    warmup_epochs: float = setting(0.5, "linear warm-up before cosine decay, in epochs (rounded to whole epochs when "
                                   "the schedule steps per epoch)",
                                   group="optimisation", label="Warm-up epochs", ge=0.0, le=10_000.0, step=0.5)
    schedule_step: Literal["batch", "epoch"] = setting(
        "batch", "the learning-rate schedule advances every batch, or every epoch (official code: its first epoch "
        "then trains at rate 0 when there is a warm-up)", group="optimisation", label="Schedule steps per")
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", group="optimisation",
                                     label="Label smoothing", ge=0.0, lt=1.0, step=0.05, form_max=0.99)
    # pruning
    prune_rounds: int = setting(2, "pruning rounds for e2vpt (each: score, prune, rewind, retrain)", group="pruning",
                                label="Pruning rounds", ge=0, le=100, basic=True)
    prune_ratio: float = setting(0.5, "fraction of the surviving prompt tokens pruned in each round",
                                 group="pruning", label="Tokens pruned per round", ge=0.0, lt=1.0, basic=True,
                                 widget="slider", step=0.05, form_max=0.95)
    segment_ratio: float = setting(0.25, "fraction of the surviving segments pruned in each round", group="pruning",
                                   label="Segments pruned per round", ge=0.0, lt=1.0, widget="slider", step=0.05,
                                   form_max=0.95)
    prune_count: Literal["round", "floor"] = setting(
        "round", "how many pieces a ratio prunes of n survivors: round (ratio x n to the nearest) or floor (official "
        "code: int(n x pct / 100), so 30 % of 5 tokens prunes 1, not 2)", group="pruning", label="Pieces pruned",
        choice_labels={"round": "ratio x n, rounded", "floor": "ratio x n, rounded down (official)"})
    segment_rank: Literal["global", "per-token"] = setting(
        "global", "global: segments ranked across all surviving tokens; per-token: each token loses the same share "
        "of its own lowest segments (official code)", group="pruning", label="Segments ranked")
    segments: int = setting(16, "segments per prompt token (R; the official code uses 16)", group="pruning",
                            label="Segments per token (R)", ge=1, le=4096)
    mask_scope: Literal["layer", "shared"] = setting(
        "layer", "layer: each layer prunes its own tokens, ranked across layers; shared: position k is pruned in "
        "every layer (paper)", group="pruning", label="Token mask")
    segment_layout: Literal["interleaved", "contiguous"] = setting(
        "interleaved", "interleaved (official: segment r holds channels r, r+R, ...) or contiguous slices",
        group="pruning", label="Segment layout")
    importance: Literal["abs", "signed"] = setting(
        "abs", "abs (paper: mean |dL/dmask| per image) or signed (official code: mean signed gradient)",
        group="pruning", label="Importance")
    token_importance: Literal["segments", "mask"] = setting(
        "segments", "what ranks tokens: segments (the sum of their segments' |scores|) or mask (the gradient "
        "w.r.t. the token mask, paper and official code; LayerNorm makes it almost zero for deep prompts)",
        group="pruning", label="Token score")
    rewind: Literal["init", "reinit"] = setting(
        "init", "init: survivors reset to their initial values; reinit: fresh random values (official code)",
        group="pruning", label="Rewind survivors to")
    pruned_tokens: Literal["remove", "zero"] = setting(
        "remove", "remove: a pruned prompt token leaves the sequence (it costs nothing); zero: it stays as a zero "
        "token that still yields keys and values (official code)", group="pruning", label="Pruned tokens are")
    train_masks: bool = setting(
        False, "train the token and segment masks as real-valued parameters in the first phase and score importance "
        "at the trained values (official code); otherwise they are fixed 0/1", group="pruning",
        label="Train the masks before pruning")
    select_round: Literal["best", "last"] = setting(
        "best", "the round a run keeps: best validation accuracy among the pruning rounds (ties to more pruning), "
        "or the last", group="pruning", label="Keep the round with",
        choice_labels={"best": "best validation accuracy", "last": "most pruning"})
    # run
    seed: int = setting(0, "seeds initialisation, data order and dropout", group="run", label="Seed", ge=0,
                        le=2**32 - 1)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N", group="run", label="Device",
                          pattern=r"auto|cpu|cuda(:\d+)?", widget="select")
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "bf16: forward passes under bfloat16 autocast (weights, optimiser and loss stay fp32), on the GPU or "
        "the CPU; auto: bf16 on a GPU that supports it, fp32 on the CPU (benchmarks/README.md, Precision)",
        group="run", label="Precision")
    workers: str = setting(
        "auto", "data loading processes: auto (none for images in memory or in the decoded cache, else one per core up "
        "to 8, leaving one core to training) or a number; the same seed gives the same batches whatever it is",
        group="run", label="Data loading processes", pattern=r"auto|\d+")
    audit_pruning: bool = setting(
        False, "when training ends, measure each pruning decision against reality (each scored token removed alone, "
        "one validation pass per token per round) so the Prompts page shows it at once; the demo's two rounds take "
        "about a minute on 2 CPU cores", group="pruning", label="Audit the pruning when training ends")
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in settings():
            setattr(self, f.name, check_value(f, getattr(self, f.name)))
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a mapping, got {type(self.extra).__name__}")
        trains_on_val_already = self.dataset.strip().lower().replace("_", "-") in ("vtab-train800val200", "vtab-final")
        if self.train_on == "train+val" and trains_on_val_already:
            raise ConfigError(f"dataset {self.dataset} already trains on train800val200; use dataset vtab with "
                              "train_on train+val, or train_on train", "train_on")
        if self.spec.visual != "none" and self.prompt_len == 0:
            raise ConfigError(f"prompt_len (--prompt-len) must be at least 1 for {self.method}, which trains visual "
                              "prompts; use e.g. --prompt-len 10", "prompt_len")

    @property
    def spec(self) -> Method:
        """The method's row in the registry (`e2vpt.methods`): what it trains and how."""
        return method_named(self.method)

    @property
    def prompts_trained(self) -> tuple[int, int]:
        """(visual prompt tokens, key-value prompts) per layer this method trains (`prompts_trained`)."""
        return prompts_trained(self.method, self.prompt_len, self.kv_len)

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return self.spec.sgd_lr if self.optimizer == "sgd" else self.spec.lr

    @property
    def resolved_retrain_epochs(self) -> int:
        return self.retrain_epochs if self.retrain_epochs is not None else self.epochs

    @property
    def holds_out_val(self) -> bool:
        """Whether val is unseen in training, so that it may pick the epoch and the pruning round."""
        return self.train_on == "train"

    @property
    def rounds(self) -> int:
        """Pruning rounds this run actually does (0 for every method but e2vpt)."""
        return self.prune_rounds if self.spec.prune else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"settings must be a mapping of names to values, not {type(values).__name__}")
        values = _renamed(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(sorted(known))}")
        recipe = values.get("recipe", "studio")
        if recipe not in RECIPES:
            f = next(f for f in settings() if f.name == "recipe")
            check_value(f, recipe)  # raises the one-line error naming the choices
        return cls(**{**RECIPES[recipe], **values})


def _renamed(values: dict) -> dict:
    """Settings saved under an older name, read as today's: `amp` (true: bf16 on CUDA) is `precision`."""
    if "amp" in values:
        values = dict(values)
        amp = values.pop("amp")
        values.setdefault("precision", "auto" if amp else "fp32")
    return values


# --------------------------------------------------------------------------------------------------
# The declarations, read back: what the CLI, the form and the docs are generated from.
def settings() -> list[dataclasses.Field]:
    """The `TrainConfig` fields that are settings (everything but `extra`), in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if "setting" in f.metadata]


def meta(f: dataclasses.Field) -> dict:
    return f.metadata["setting"]


def flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def prompts_trained(method: str, prompt_len: int, kv_len: int) -> tuple[int, int]:
    """(visual prompt tokens, key-value prompts) per layer that `method` trains: a count the method
    does not read is 0 (a linear probe's `prompt_len` is only a setting)."""
    spec = method_named(method)
    return (prompt_len if spec.visual != "none" else 0), (kv_len if spec.kv else 0)


def used_by(f: dataclasses.Field, method: str) -> bool:
    """Whether `method` reads this setting: pruning settings only matter to methods that prune,
    visual-prompt ones to methods with visual prompts, key-value ones to methods with key-value
    prompts (the form hides the others)."""
    spec = method_named(method)
    if meta(f)["group"] == "pruning":
        return spec.prune
    if f.name in ("kv_len", "kv_shared"):
        return spec.kv
    if f.name in ("prompt_len", "prompt_dropout"):
        return spec.visual != "none"
    return True


def in_form_words(message: str) -> str:
    """A message written for the command line with every flag (and its placeholder, e.g. `--data-root
    DIR`) replaced by the setting's label in the app's form, so the app never names a flag it lacks."""
    for f in sorted(settings(), key=lambda f: -len(f.name)):  # --retrain-epochs before --epochs
        message = re.sub(rf"(?<![\w-]){re.escape(flag(f))}(?: [A-Z][A-Z_]*\b)?(?![\w-])",
                         f"“{meta(f)['label']}”", message)
    return message


@functools.cache
def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)


def kind(f: dataclasses.Field) -> tuple[type, tuple | None, bool]:
    """(base type, choices or None, optional) of a setting, read from its annotation."""
    hint, optional = _hints()[f.name], False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), choices, optional
    return hint, None, optional


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def bounds_text(f: dataclasses.Field) -> str:
    """The bounds of a numeric setting in words, e.g. `1 to 10000` or `at least 0 and below 1`."""
    m = meta(f)
    if m["ge"] is not None and m["le"] is not None:
        return f"{_num(m['ge'])} to {_num(m['le'])}"
    words = [f"at least {_num(m['ge'])}" if m["ge"] is not None else None,
             f"more than {_num(m['gt'])}" if m["gt"] is not None else None,
             f"at most {_num(m['le'])}" if m["le"] is not None else None,
             f"below {_num(m['lt'])}" if m["lt"] is not None else None]
    return " and ".join(w for w in words if w)


def default_text(f: dataclasses.Field) -> str:
    """A setting's default as the CLI help and the docs show it (`true`, `2`, `unset`)."""
    if f.default is None:
        return "unset"
    return str(f.default).lower() if kind(f)[0] is bool else str(f.default)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, (bool, int, float)) else repr(value)


def check_value(f: dataclasses.Field, value: Any) -> Any:
    """`value` checked against the setting's type, choices and bounds; returns it (an integral float
    for an integer setting comes back as an int). Raises `ConfigError` naming the field and its flag."""
    m, (base, choices, optional) = meta(f), kind(f)
    where = f"{f.name} ({flag(f)})"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} needs a value; it has no 'unset' state", f.name)
    if choices is not None:
        if value not in choices or type(value) is not base:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}, got {_describe(value)}", f.name)
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_describe(value)}", f.name)
        return value
    if base is str:
        if f.name == "workers" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            value = str(value)  # a number from Python or YAML
        if not isinstance(value, str) or (m["pattern"] and not re.fullmatch(m["pattern"], value)):
            expected = {"device": "auto, cpu, cuda or cuda:N", "workers": "auto or a number of processes (0: load in "
                        "the training process)"}.get(f.name, "a name" if m["pattern"] else "text")
            raise ConfigError(f"{where} must be {expected}, got {_describe(value)}", f.name)
        return value
    if base is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, got {_describe(value)}", f.name)
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {_describe(value)}", f.name)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}", f.name)
        value = float(value)
    out = ((m["ge"] is not None and value < m["ge"]) or (m["gt"] is not None and value <= m["gt"])
           or (m["le"] is not None and value > m["le"]) or (m["lt"] is not None and value >= m["lt"]))
    if out:
        raise ConfigError(f"{where} must be {bounds_text(f)}, got {_num(value)}", f.name)
    return value


def settings_markdown() -> str:
    """The settings table of docs/SETTINGS.md, generated from the declarations (`python -m e2vpt settings`)."""
    lines = ["# Settings", "",
             "Every setting of a run, generated from `e2vpt/config.py` by `python -m e2vpt settings` (do not edit "
             "by hand). The same names work as `python -m e2vpt train` flags, as keys of a `--config` YAML/JSON file, "
             "as `TrainConfig(...)` arguments and in the app's Train form.", ""]
    for group, title in GROUPS.items():
        lines += [f"## {title[0].upper()}{title[1:]}", "", "| setting | flag | values | default | meaning |",
                  "|---|---|---|---|---|"]
        for f in settings():
            m = meta(f)
            if m["group"] != group:
                continue
            base, choices, optional = kind(f)
            values = " / ".join(f"`{c}`" for c in choices) if choices else (
                "true / false" if base is bool else f"{base.__name__}" + (f", {bounds_text(f)}" if bounds_text(f) else ""))
            if optional:
                values += f"; unset = {m['none_means']}"
            default = "unset" if f.default is None else f"`{default_text(f)}`"
            lines.append(f"| `{f.name}` | `{flag(f)}` | {values} | {default} | {m['help'].replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Presets: whole settings for a purpose (the Train form's preset buttons; a notebook's starting point).
_VIT_B_GPU = {"backbone": "vit_base_patch16_224.augreg_in21k", "pretrained": True, "prompt_len": 10, "kv_len": 5,
              "optimizer": "sgd", "lr": 0.25, "batch_size": 64, "epochs": 100, "retrain_epochs": 100,
              "warmup_epochs": 10.0, "weight_decay": 1e-4, "prune_rounds": 2, "prune_ratio": 0.5,
              "segment_ratio": 0.25, "select_round": "best", "device": "auto", "precision": "auto"}
PRESETS = {
    "demo": {},  # the defaults: the shipped demo ViT on digits, about a minute on a CPU
    "paper": {"recipe": "paper", **_VIT_B_GPU},
    "official": {"recipe": "official", **_VIT_B_GPU},
}


def preset(name: str, **overrides) -> TrainConfig:
    """The settings of preset `name` (see `PRESETS`), with `overrides` on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})


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
