"""Frozen backbones: any timm Vision Transformer or Swin Transformer (v1), or the small demo ViT that ships with the project.

Why a module of its own: every method (linear probing to E2VPT) starts from the same frozen backbone,
and the ways of getting one (a timm name with hub weights, a local safetensors file, the shipped demo)
each fail differently offline. This module turns each failure into one clear `BackboneError`.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from ..errors import BackboneError

DEMO_NAME = "demo"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"  # e2vpt/assets
DEMO_WEIGHTS = ASSETS_DIR / "demo_vit.safetensors"

# The shipped demo backbone: a ViT-Tiny-wide (192) but shallow (6) ViT on 32x32 inputs with 4x4
# patches, 1.8 M parameters, small enough to prompt-tune in about a minute on 2 CPU cores.
DEMO_CONFIG = dict(
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=6,
    num_heads=3,
    mlp_ratio=2.0,
    num_classes=0,
    global_pool="token",
    class_token=True,
)
DEMO_MEAN = (0.5, 0.5, 0.5)
DEMO_STD = (0.5, 0.5, 0.5)


def build_demo_vit(num_classes: int = 0) -> VisionTransformer:
    """The demo architecture with random weights (pretraining starts here)."""
    cfg = dict(DEMO_CONFIG, num_classes=num_classes)
    model = VisionTransformer(**cfg)
    model.pretrained_cfg = {"mean": DEMO_MEAN, "std": DEMO_STD, "input_size": (3, 32, 32),
                            "interpolation": "bilinear", "crop_pct": 1.0, "architecture": DEMO_NAME}
    return model


def _load_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    """Load a safetensors state dict, refusing files of another architecture with a clear message."""
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist; pass an existing .safetensors file")
    if path.suffix != ".safetensors":
        raise BackboneError(f"{path} is not a .safetensors file; only safetensors weights are loaded "
                            "(pickle checkpoints can run code); convert it with safetensors.torch.save_file")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise BackboneError(f"cannot read {path} as safetensors ({exc}); is the file complete?") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = model.state_dict()
    missing = [k for k in own if not k.startswith("head.") and k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} of another shape"
                  f" (e.g. {(missing + unexpected + wrong_shape)[0]})")
        raise BackboneError(f"{path} does not fit backbone {what}: {detail}; "
                            "use the weights made for this architecture or pick the matching --backbone")
    model.load_state_dict(state, strict=False)


def resolve_global_pool(name: str, global_pool: str = "auto") -> str | None:
    """The pooling a ViT's head should read: `auto` follows the checkpoint's own protocol.

    MAE encoders were trained without a [CLS] objective and are evaluated on the mean of the patch
    tokens (the MAE paper's fine-tuning, and VPT's MAE setting), so `auto` gives `avg` for MAE tags
    (`vit_base_patch16_224.mae`); supervised and MoCo v3 ViTs read the [CLS] token, timm's default
    (None: leave the model as timm built it).
    """
    if global_pool != "auto":
        return global_pool
    tag = name.split(".", 1)[1] if "." in name else ""
    return "avg" if "mae" in tag.split("_") or tag.startswith("mae") else None


def _set_global_pool(model, name: str, global_pool: str) -> None:
    pool = resolve_global_pool(name, global_pool)
    if pool is None:
        return
    if isinstance(model, SwinTransformer):
        if pool != "avg":
            raise BackboneError(f"'{name}' is a Swin Transformer: it has no [CLS] token, so its head reads the "
                                "average of the last feature map; drop --global-pool token")
        return
    if pool == "token" and not model.has_class_token:
        raise BackboneError(f"'{name}' has no [CLS] token; use --global-pool avg")
    # keeps the pretrained final norm (no new, untrained fc_norm): features = mean of normalised patch tokens
    model.reset_classifier(0, global_pool=pool)


def create_backbone(name: str, pretrained: bool = True, weights: str | Path | None = None,
                    img_size: int | None = None, global_pool: str = "auto") -> VisionTransformer | SwinTransformer:
    """Build a frozen-ready timm ViT (or Swin) without its classification head.

    Args:
        name: `demo` or any timm VisionTransformer or SwinTransformer name (e.g.
            `vit_base_patch16_224.augreg_in21k`, `swin_base_patch4_window7_224.ms_in22k`).
        pretrained: load the hub weights (timm names) or the shipped weights (`demo`).
        weights: a local `.safetensors` file to load instead of the hub (works offline).
        img_size: input size; timm interpolates position embeddings when it differs from the default.
        global_pool: `auto`, `token` or `avg` (see `resolve_global_pool`); normalisation always comes
            from the checkpoint's own config (`data_config`), e.g. ImageNet mean/std for MAE.
    """
    if name == DEMO_NAME:
        if img_size not in (None, DEMO_CONFIG["img_size"]):
            raise BackboneError(f"the demo backbone takes {DEMO_CONFIG['img_size']}x{DEMO_CONFIG['img_size']} "
                                f"images, not {img_size}; drop --img-size or pick a timm backbone")
        model = build_demo_vit()
        if weights is not None:
            _load_weights(model, Path(weights), DEMO_NAME)
        elif pretrained:
            if not DEMO_WEIGHTS.is_file():
                raise BackboneError(f"the demo weights {DEMO_WEIGHTS} are missing; run `python -m e2vpt pretrain` "
                                    "or use --no-pretrained")
            _load_weights(model, DEMO_WEIGHTS, DEMO_NAME)
        _set_global_pool(model, name, global_pool)
        return model

    base = name.split(".")[0]
    if not timm.is_model(base) and not timm.is_model(name):
        close = timm.list_models(f"*{base.split('_')[0]}*")[:5]
        raise BackboneError(f"unknown backbone '{name}'; use `demo` or a timm ViT name such as "
                            f"vit_base_patch16_224 (similar: {', '.join(close) or 'none'})")
    kwargs = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, **kwargs)
    except TypeError as exc:
        raise BackboneError(f"'{name}' cannot be built with these options ({exc}); "
                            "E2VPT here supports timm VisionTransformer and SwinTransformer models") from None
    except Exception as exc:  # hub errors come in many types: offline, gated, missing file
        if pretrained and weights is None:
            raise BackboneError(f"could not download pretrained weights for '{name}' ({type(exc).__name__}); "
                                "go online, pass --weights FILE.safetensors, or use --no-pretrained") from None
        raise
    if not isinstance(model, (VisionTransformer, SwinTransformer)):
        raise BackboneError(f"'{name}' is a {type(model).__name__}, not a timm VisionTransformer or "
                            "SwinTransformer; pick a vit_* or swin_* model")
    if weights is not None:
        _load_weights(model, Path(weights), name)
    _set_global_pool(model, name, global_pool)
    return model


def data_config(backbone: torch.nn.Module) -> dict:
    """Mean, std and input size the backbone was pretrained with, so nobody sets normalisation by hand."""
    cfg = timm.data.resolve_data_config({}, model=backbone)
    input_size = tuple(cfg["input_size"])
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None):
        input_size = (input_size[0], *patch_embed.img_size)  # the size the model was built for wins
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "input_size": input_size}
