"""A trained run as an adapter that anyone with the same backbone can load: peft-style files, E2VPT's pruning.

`export_adapter(run, out)` writes a folder with the file names of the ecosystem's convention (peft's
`save_pretrained`; it is loaded by `load_adapter`, not by peft, which knows no E2VPT):
- `adapter_config.json`: what to build and what to check. The backbone's name and the sha256 of its
  weights, the run's settings (method, recipe, prompt lengths...), the pruning masks and the prompt
  shapes after pruning, the class names, the preprocessing, the accuracies and the project version;
- `adapter_model.safetensors`: only what was tuned. Visual prompts are stored compact: only the values
  the masks keep (`<name>.kept`, in the masks' row-major order), so a pruned token or segment takes no
  byte of the file; key-value prompts and the head as they are;
- `README.md`: a model card (`card.py`); with `onnx=True`, also `model.onnx` (`onnx_model.py`).

`load_adapter(folder, backbone=...)` rebuilds the run's model on any machine that has that backbone.
Its logits equal the run's bit for bit: the same backbone weights (checked by their digest), the same
model class built from the same settings, the same tuned values.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .._version import __version__
from ..config import TrainConfig
from ..data.preprocess import ImageRule
from ..errors import BackboneError, ConfigError, UserError
from ..fileio import atomic_write_bytes, atomic_write_json, tensors_sha256
from ..models.backbones import create_backbone
from ..models.base import PromptTuned
from ..models.prompted import build_model
from .trained import Trained, open_trained

FORMAT = "e2vpt-adapter/1"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "adapter_config.json", "adapter_model.safetensors", "README.md"
OWN_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, "model.onnx")  # what an adapter folder may hold
MAX_CONFIG_BYTES = 32 * 2**20  # masks of ViT-L with 200 tokens x 16 segments are under 1 MiB of JSON
MAX_WEIGHTS_BYTES = 8 * 2**30  # a `full` adapter carries a whole backbone (ViT-H: 2.5 GB)
MAX_CLASSES = 100_000


class AdapterError(UserError):
    """An adapter folder that cannot be used: missing, damaged, or for another backbone."""


def compact_state(model: PromptTuned) -> dict[str, torch.Tensor]:
    """What the adapter file holds: the tuned state without the masks (they are in the config), each
    visual-prompt tensor replaced by its surviving values."""
    state = model.tuned_state()
    masks = model.visual_prompt_masks()
    compact = {}
    for name, tensor in state.items():
        if name in ("tuned.token_mask", "tuned.segment_mask"):
            continue
        if name in masks:
            compact[f"{name}.kept"] = tensor[masks[name]].contiguous()
        else:
            compact[name] = tensor.contiguous()
    return compact


def prompt_shapes(model: PromptTuned) -> dict:
    """The prompts after pruning, in numbers a reader (and the model card) can check."""
    t = model.tuned
    masks = model.visual_prompt_masks()
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"prompt_sets": model.prompt_sets if t.visual is not None else 0, "tokens_per_set": model.prompt_len,
            "segments": model.segments, "kept_tokens_per_set": [int(r.sum()) for r in t.token_mask] if masks else [],
            "kept_values": kept, "values_before_pruning": total, "kv_len": model.kv_len}


def adapter_config(trained: Trained) -> dict:
    """adapter_config.json of `trained` (see the module's docstring)."""
    config, model, record = trained.config, trained.model, trained.record
    produced = (trained.summary or {}).get("produced_by", {})
    # local paths mean nothing elsewhere: the weights file is recorded by name (base_model) and by digest
    settings = {**config.to_dict(), "data_root": None, "weights": None, "extra": {}}
    return {
        "format": FORMAT,
        "e2vpt_version": __version__,
        "peft_type": "E2VPT",
        "base_model": {"name": config.backbone, "pretrained": config.pretrained,
                       "weights_file": Path(config.weights).name if config.weights else None,
                       "sha256": trained.backbone_sha256, "params": model.backbone_param_count()},
        "method": config.method,
        "recipe": config.recipe,
        "settings": settings,
        "run": {"id": trained.run_id, "round": trained.round,
                "selected_round": (trained.summary or {}).get("selected_round"),
                "rounds": trained.rounds,
                "commit": produced.get("commit"), "device": (trained.summary or {}).get("device")},
        "accuracy": {"val": record.get("val_acc"), "test": record.get("test_acc")},
        "tuned_params": model.tuned_param_count(),
        "dataset": {"name": config.dataset, "source": trained.data_source, "num_classes": len(trained.class_names),
                    "class_names": trained.class_names},
        "preprocessing": trained.rule.to_dict(),
        "prompts": prompt_shapes(model),
        "token_mask": model.tuned.token_mask.to(torch.uint8).tolist(),
        "segment_mask": model.tuned.segment_mask.to(torch.uint8).tolist(),
    }


def _unpruned_bytes(model: PromptTuned) -> int:
    """The size the adapter file would have with nothing pruned: every visual-prompt value stored."""
    state = {name: (model.tuned_state()[name.removesuffix(".kept")].reshape(-1) if name.endswith(".kept") else tensor)
             for name, tensor in compact_state(model).items()}
    return len(save({k: v.contiguous() for k, v in state.items()}, metadata={"format": FORMAT}))


def _shareable(folder: Path) -> None:
    """Files readable as the user's umask allows (the run's own files are private: 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def export_adapter(run_dir: str | Path, out: str | Path, round_index: int | None = None, onnx: bool = False) -> dict:
    """Write the adapter of a run's round (default: the round it reports) into the folder `out`.

    Returns {"folder", "config", "bytes", "unpruned_bytes", "onnx_bytes"} (see `write_adapter`)."""
    out = _check_out(out)  # before the run is loaded: a wrong --out costs nothing
    return write_adapter(open_trained(run_dir, round_index, device="cpu"), out, onnx)


def _check_out(out: str | Path) -> Path:
    """`out` resolved, or `AdapterError`: it may be new, an empty folder, or an adapter this project wrote
    holding only its own files (replaced), never the current folder, one above it, or anything else."""
    out = Path(out).expanduser().resolve()
    here = Path.cwd().resolve()
    if out == here or out in here.parents:
        raise AdapterError(f"--out {out} is the current folder or one above it; give a new folder for the adapter")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise AdapterError(f"{out} exists and is not a folder; give --out a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        names = {p.name for p in out.iterdir()}
        try:
            ours = json.loads((out / CONFIG_FILE).read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours or not names <= set(OWN_FILES):
            raise AdapterError(f"{out} exists and is not an adapter folder written by e2vpt (with nothing else in "
                               "it); give --out a new or empty folder")
    return out


def write_adapter(trained: Trained, out: str | Path, onnx: bool = False) -> dict:
    """Write `trained` as an adapter folder `out` (with `onnx`, `model.onnx` too).

    The folder is written whole or not at all (built beside it, then renamed into place); an existing
    `out` is replaced only when it is an adapter folder, never a folder holding other things.
    Returns {"folder", "config", "bytes": of adapter_model.safetensors, "unpruned_bytes": what it would
    be with nothing pruned, "onnx_bytes": of model.onnx or None}.
    """
    from .card import model_card

    out = _check_out(out)
    config = adapter_config(trained)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise AdapterError(f"cannot write beside {out}: {exc.strerror or exc}") from None
    try:
        weights = save(compact_state(trained.model), metadata={"format": FORMAT})
        atomic_write_bytes(build / WEIGHTS_FILE, weights)
        result = {"bytes": len(weights), "unpruned_bytes": _unpruned_bytes(trained.model), "onnx_bytes": None}
        config["file_bytes"] = {"adapter": result["bytes"], "unpruned": result["unpruned_bytes"]}
        if onnx:
            from .onnx_model import ONNX_FILE, export_onnx

            result["onnx_bytes"] = export_onnx(trained.model, trained.rule, build / ONNX_FILE)
            config["file_bytes"]["onnx"] = result["onnx_bytes"]
        atomic_write_json(build / CONFIG_FILE, config)
        atomic_write_bytes(build / CARD_FILE, model_card(config).encode())
        _shareable(build)
        old = None
        if out.exists():  # the adapter it replaces moves aside first: a crash leaves one of the two whole
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
        os.replace(build, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(build, ignore_errors=True)
        raise AdapterError(f"cannot write the adapter {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return {"folder": out, "config": config, **result}


# --------------------------------------------------------------------------------------------------
# loading
def read_adapter_config(folder: str | Path) -> dict:
    """adapter_config.json, bounded and checked; `AdapterError` in one line when it cannot be used."""
    path = Path(folder).expanduser() / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{folder} is not an adapter folder (no {CONFIG_FILE}); make one with "
                           "`python -m e2vpt export RUN --out DIR`")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is {path.stat().st_size:,} bytes, more than an adapter config can be")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} is not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise AdapterError(f"{path} is not an {FORMAT} config (format: {str(found)[:80]}); this e2vpt reads {FORMAT}")
    try:
        names = config["dataset"]["class_names"]
        base = config["base_model"]
        ok = (isinstance(names, list) and 0 < len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names)
              and isinstance(base["name"], str) and isinstance(base["sha256"], str)
              and isinstance(config["settings"], dict))
        config["rule"] = ImageRule.from_dict(config["preprocessing"])
        config["train_config"] = TrainConfig.from_dict(config["settings"])
        config["masks"] = _masks(config["token_mask"], config["segment_mask"])
    except (KeyError, TypeError, UserError) as exc:
        raise AdapterError(f"{path} is incomplete or damaged ({str(exc)[:200]}); export the adapter again") from None
    if not ok:
        raise AdapterError(f"{path} is incomplete or damaged (class names or base model); export the adapter again")
    return config


def _masks(token, segment) -> tuple[torch.Tensor, torch.Tensor]:
    """The recorded masks as tensors: 0/1 values, (layers, p) and (layers, p, R); `AdapterError` otherwise
    (other values would silently change the model)."""
    try:
        token, segment = torch.tensor(token, dtype=torch.float32), torch.tensor(segment, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise AdapterError("the masks recorded are not lists of 0/1 values") from None
    if (token.ndim != 2 or segment.ndim != 3 or segment.shape[:2] != token.shape
            or not bool(((token == 0) | (token == 1)).all()) or not bool(((segment == 0) | (segment == 1)).all())):
        raise AdapterError(f"the masks recorded ({tuple(token.shape)}, {tuple(segment.shape)}) are not 0/1 token and "
                           "segment masks of one prompt layout")
    return token, segment


def _base_backbone(config: dict, settings: TrainConfig, backbone, weights) -> nn.Module:
    """The backbone to build on: the module given, or one made by name (the recorded one by default)."""
    if isinstance(backbone, nn.Module):
        return backbone
    if backbone is not None and not isinstance(backbone, str):
        raise AdapterError(f"backbone must be a timm model or its name, not {type(backbone).__name__}")
    name = backbone or config["base_model"]["name"]
    weights_file = config["base_model"].get("weights_file")
    if weights is None and weights_file and name == settings.backbone:
        raise BackboneError(f"this adapter was trained on {settings.backbone} with the weights file {weights_file}; "
                            "pass that file (weights=..., or --weights)")
    torch.manual_seed(settings.seed)  # a random-init backbone (--no-pretrained) is drawn from the run's seed
    return create_backbone(name, pretrained=settings.pretrained, weights=weights, img_size=settings.img_size,
                           global_pool=settings.global_pool)


def _full_visual(model: PromptTuned, name: str, kept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A visual-prompt tensor rebuilt from its surviving values: zeros where pruned, as the run saved it."""
    if kept.ndim != 1 or kept.numel() != int(mask.sum()):
        raise AdapterError(f"{WEIGHTS_FILE} holds {tuple(kept.shape)} values for {name}, the masks keep "
                           f"{int(mask.sum())}; the two files do not belong together")
    full = torch.zeros(mask.shape, dtype=kept.dtype)
    full[mask] = kept
    return full


def load_adapter(folder: str | Path, backbone: str | nn.Module | None = None, weights: str | Path | None = None,
                 device: str = "cpu") -> PromptTuned:
    """The model an adapter describes, ready to predict (eval mode, on `device`).

    Args:
        folder: a folder written by `export_adapter` (`python -m e2vpt export`).
        backbone: the frozen backbone: a timm model (headless, `num_classes=0`), or a name to build
            (`demo`, a timm name); default: the name the adapter records. Its weights must be the ones
            the adapter was trained on (their sha256 is checked), or it is refused in one line.
        weights: a local .safetensors file of the backbone's weights (instead of the hub).
        device: where the model goes.

    The model carries `adapter_config` (the dict of adapter_config.json): `class_names`, the
    preprocessing (`e2vpt.deploy.predict` applies it), the accuracies.
    """
    folder = Path(folder).expanduser()
    config = read_adapter_config(folder)
    settings: TrainConfig = config.pop("train_config")
    rule = config.pop("rule")
    masks = config.pop("masks")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # building draws initial values; the caller's RNG stays as it was
        base = _base_backbone(config, settings, backbone, weights)
        digest = tensors_sha256(base.state_dict())
        if digest != config["base_model"]["sha256"]:
            count = sum(p.numel() for p in base.parameters())
            expected = config["base_model"].get("params")
            if type(expected) is not int:
                what = f"a backbone of {count:,} parameters"
            elif count != expected:
                what = f"{count:,} parameters where the adapter's has {expected:,}"
            else:
                what = "the same shapes but other weights"
            raise BackboneError(f"this backbone is not the one the adapter was trained on ({what}; sha256 "
                                f"{digest[:12]} where {config['base_model']['name']}'s is "
                                f"{config['base_model']['sha256'][:12]})")
        try:
            model = build_model(settings, base, len(config["dataset"]["class_names"]))
        except ConfigError as exc:
            raise AdapterError(f"{folder / CONFIG_FILE}: {exc}") from None
    _load_tensors(model, folder, masks)
    model.adapter_config = {**config, "preprocessing": rule.to_dict()}
    return model.to(torch.device(device)).eval()


def _load_tensors(model: PromptTuned, folder: Path, recorded: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Install the masks and the stored tensors, refusing a file that does not match its config."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterError(f"{folder} has no {WEIGHTS_FILE}")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise AdapterError(f"{path} is {path.stat().st_size:,} bytes, more than an adapter can be")
    try:
        stored = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path} cannot be read ({str(exc)[:200]}); export the adapter again") from None
    token_mask, segment_mask = recorded
    t = model.tuned
    if token_mask.shape != t.token_mask.shape or segment_mask.shape != t.segment_mask.shape:
        raise AdapterError(f"the masks in {CONFIG_FILE} are {tuple(token_mask.shape)} and "
                           f"{tuple(segment_mask.shape)}; this model's are {tuple(t.token_mask.shape)} and "
                           f"{tuple(t.segment_mask.shape)}")
    t.token_mask.copy_(token_mask)
    t.segment_mask.copy_(segment_mask)
    if t.token_mask_value is not None and "tuned.token_mask_value" not in stored:
        model.train_mask_values(False)  # saved after pruning: the masks are the fixed 0/1 ones
    masks = model.visual_prompt_masks()
    expected = set(compact_state(model))
    if set(stored) != expected:
        odd = sorted(set(stored) ^ expected)[:3]
        raise AdapterError(f"{WEIGHTS_FILE} does not hold what {CONFIG_FILE} describes (differs in "
                           f"{', '.join(odd)}); the two files do not belong together")
    state = {"tuned.token_mask": t.token_mask.clone(), "tuned.segment_mask": t.segment_mask.clone()}
    for name, tensor in stored.items():
        plain = name.removesuffix(".kept")
        state[plain] = _full_visual(model, plain, tensor, masks[plain]) if name.endswith(".kept") else tensor
    try:
        model.load_tuned_state(state)
    except BackboneError as exc:
        raise AdapterError(f"{WEIGHTS_FILE}: {exc}") from None
