"""A startup check of the timm internals that `prompts.py` and `swin.py` re-state.

Why: nothing in timm is forked or patched. `PromptedViT` calls timm's own sub-modules and re-states
`Attention.forward` and `Block.forward`; `PromptedSwin` re-states `WindowAttention.forward` and the
attention branch of `SwinTransformerBlock.forward`. A timm release that renames one of those
sub-modules would fail deep inside a training step with a bare AttributeError, and one that changes
what a forward computes would train something else without a word. So, once per process and backbone
family, `check_timm` builds tiny instances of timm's own classes and checks:

1. every attribute and method the re-statements read exists (optional ones, the gated attention's
   `gate` and Swin's `dynamic_mask`, are read with a default and not required);
2. every call they make still binds (e.g. `forward_head(x, pre_logits=True)`, `window_reverse(windows,
   window_size, H, W)`) and timm's forwards take nothing beyond the tokens that the re-statement
   would drop: newer ViT blocks accept `attn_mask`/`is_causal`, which must stay optional, since the
   re-statement serves only the unmasked, non-causal call;
3. each re-stated forward, run without prompts, still equals timm's own, block by block and for the
   whole feature extractor.

Any failure is one `BackboneError` naming the installed timm, what is missing and the tested version.
The tiny modules are built under a forked RNG, so the check leaves the global random state (and hence
every later initialisation) exactly as it was.
"""

from __future__ import annotations

import functools
import inspect

import timm
import torch
from timm.models import swin_transformer as timm_swin
from timm.models import vision_transformer as timm_vit

from .errors import BackboneError

TESTED_TIMM = "1.0.31"  # the version requirements.txt pins and CI tests (a test keeps the two equal)
FAMILIES = ("vit", "swin")

# What the re-statements read, per object of the tiny model: dotted paths are followed attribute by attribute.
VIT_ATTRIBUTES = {
    "VisionTransformer": ("patch_embed", "patch_embed.patch_size", "_pos_embed", "patch_drop", "norm_pre", "blocks",
                          "norm", "forward_head", "num_prefix_tokens", "embed_dim"),
    "Block": ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"),
    "Attention": ("qkv", "q_norm", "k_norm", "num_heads", "head_dim", "attn_dim", "attn_drop", "attn_drop.p", "norm",
                  "proj", "proj_drop"),
}
SWIN_ATTRIBUTES = {
    "SwinTransformer": ("patch_embed", "patch_embed.patch_size", "layers", "norm", "forward_head", "num_features"),
    "SwinTransformerStage": ("downsample", "blocks"),
    "SwinTransformerBlock": ("dim", "norm1", "attn", "shift_size", "window_size", "window_area", "attn_mask",
                             "get_attn_mask", "drop_path1", "norm2", "mlp", "drop_path2"),
    "WindowAttention": ("num_heads", "qkv", "qkv.out_features", "_get_rel_pos_bias", "attn_drop", "attn_drop.p",
                        "proj", "proj_drop"),
}

# The calls the re-statements make (or, for re-stated forwards, the only arguments they honour):
# (where, function, positional arguments including self, keyword arguments).
_ANY = object()
VIT_CALLS = (
    ("VisionTransformer", "forward_head", (_ANY, _ANY), {"pre_logits": True}),
    ("VisionTransformer", "_pos_embed", (_ANY, _ANY), {}),
    ("Block", "forward", (_ANY, _ANY), {}),
    ("Attention", "forward", (_ANY, _ANY), {}),
)
SWIN_CALLS = (
    ("SwinTransformer", "forward_head", (_ANY, _ANY), {"pre_logits": True}),
    ("SwinTransformerBlock", "forward", (_ANY, _ANY), {}),
    ("SwinTransformerBlock", "get_attn_mask", (_ANY, _ANY), {}),
    ("WindowAttention", "forward", (_ANY, _ANY, _ANY), {}),
    ("WindowAttention", "_get_rel_pos_bias", (_ANY,), {}),
    ("swin_transformer", "window_partition", (_ANY, _ANY), {}),
    ("swin_transformer", "window_reverse", (_ANY, _ANY, _ANY, _ANY), {}),
)


def _incompatible(family: str, what: str) -> BackboneError:
    name = {"vit": "ViT", "swin": "Swin"}[family]
    source = {"vit": "e2vpt/prompts.py", "swin": "e2vpt/swin.py"}[family]
    return BackboneError(f"the installed timm {timm.__version__} does not fit what {source} re-states of timm's "
                         f"{name}: {what}; e2vpt is tested with timm {TESTED_TIMM}: "
                         f"pip install timm=={TESTED_TIMM}")


def _missing_attributes(objects: dict[str, object], needs: dict[str, tuple[str, ...]]) -> list[str]:
    missing = []
    for owner, paths in needs.items():
        for path in paths:
            value = objects[owner]
            for part in path.split("."):
                if not hasattr(value, part):
                    missing.append(f"{owner}.{path}")
                    break
                value = getattr(value, part)
    return missing


def _unbindable_calls(classes: dict[str, object], calls) -> list[str]:
    wrong = []
    for owner, name, args, kwargs in calls:
        function = getattr(classes[owner], name, None)
        if function is None:
            wrong.append(f"{owner}.{name} (missing)")
            continue
        try:
            inspect.signature(function).bind(*args, **kwargs)
        except (TypeError, ValueError):
            wrong.append(f"{owner}.{name}{inspect.signature(function)}")
    return wrong


def _differs(ours: torch.Tensor, theirs: torch.Tensor) -> float | None:
    """Largest absolute difference when the two are not equal up to float rounding, else None."""
    if ours.shape != theirs.shape:
        return float("inf")
    return None if torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5) else float((ours - theirs).abs().max())


def _require_same(family: str, ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Raise the incompatibility error `what` when a re-stated computation no longer equals timm's own."""
    gap = _differs(ours, theirs)
    if gap is not None:
        raise _incompatible(family, f"{what} (largest difference {gap:.3g})")


def _check_vit() -> None:
    from .prompts import prompted_block  # the re-statement under test (prompts.py imports this module)

    model = timm_vit.VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=1.0,
                                       num_classes=0, qkv_bias=True, qk_norm=True, init_values=0.5).eval()
    block = model.blocks[0]
    missing = _missing_attributes({"VisionTransformer": model, "Block": block, "Attention": block.attn},
                                  VIT_ATTRIBUTES)
    if missing:
        raise _incompatible("vit", "missing " + ", ".join(missing))
    wrong = _unbindable_calls({"VisionTransformer": timm_vit.VisionTransformer, "Block": type(block),
                               "Attention": type(block.attn)}, VIT_CALLS)
    if wrong:
        raise _incompatible("vit", "calls that no longer bind: " + "; ".join(wrong))
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))  # as PromptedViT does
    for i, block in enumerate(model.blocks):
        theirs = block(x)
        _require_same("vit", prompted_block(block, x, None, None), theirs,
                      f"Block.forward (with its Attention.forward) of block {i} no longer equals the re-stated forward")
        x = theirs
    _require_same("vit", model.norm(x), model.forward_features(images),
                  "VisionTransformer.forward_features is no longer patch_embed, _pos_embed, patch_drop, norm_pre, "
                  "blocks, norm")


def _check_swin() -> None:
    from .swin import prompted_swin_block  # the re-statement under test (swin.py imports this module)

    # 4x4 map in 2x2 windows (4 windows, the second block shifted with a mask), then a single window
    model = timm_swin.SwinTransformer(img_size=16, patch_size=4, window_size=2, embed_dim=8, depths=(2, 2),
                                      num_heads=(2, 2), mlp_ratio=1.0, num_classes=0).eval()
    stage = model.layers[0]
    block = stage.blocks[1]
    missing = _missing_attributes({"SwinTransformer": model, "SwinTransformerStage": stage,
                                   "SwinTransformerBlock": block, "WindowAttention": block.attn}, SWIN_ATTRIBUTES)
    if missing:
        raise _incompatible("swin", "missing " + ", ".join(missing))
    wrong = _unbindable_calls({"SwinTransformer": timm_swin.SwinTransformer, "SwinTransformerBlock": type(block),
                               "WindowAttention": type(block.attn), "swin_transformer": timm_swin}, SWIN_CALLS)
    if wrong:
        raise _incompatible("swin", "calls that no longer bind: " + "; ".join(wrong))
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x = model.patch_embed(images)  # as PromptedSwin does
    for s, stage in enumerate(model.layers):
        x = stage.downsample(x)
        for b, block in enumerate(stage.blocks):
            theirs = block(x)
            _require_same("swin", prompted_swin_block(block, x, None, None, None)[0], theirs,
                          f"SwinTransformerBlock.forward (with its WindowAttention.forward) of stage {s} block {b} "
                          "no longer equals the re-stated forward")
            x = theirs
    _require_same("swin", model.norm(x), model.forward_features(images),
                  "SwinTransformer.forward_features is no longer patch_embed, then per stage downsample and blocks, "
                  "then norm")


@functools.cache
def check_timm(family: str) -> None:
    """Verify, once per process, that the installed timm still has what the `family` ("vit" or "swin")
    re-statement uses and computes what it re-states; raise a `BackboneError` saying what is not."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    check = _check_vit if family == "vit" else _check_swin
    # the tiny models draw their initial weights: fork the RNG so no later draw changes
    with torch.random.fork_rng(devices=[]), torch.device("cpu"), torch.no_grad():
        try:
            check()
        except BackboneError:
            raise
        except Exception as exc:  # e.g. a constructor argument timm no longer takes
            raise _incompatible(family, f"building or running a tiny model failed "
                                        f"({type(exc).__name__}: {exc})") from exc
