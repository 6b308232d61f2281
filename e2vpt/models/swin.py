"""`PromptedSwin`: E2VPT on a frozen timm Swin Transformer (docs/E2VPT-SPEC.md section 7).

Swin attends inside local windows and halves the resolution (doubling the width) at every stage, so
prompts follow the stages:
- visual prompts: `p` tokens per block, of that stage's width, prepended to *every* window of the
  block (the same prompts for each window, as VPT's Swin does); deep prompts' outputs are dropped after
  the block, shallow prompts (first block only) are carried through the first stage, their outputs
  averaged over windows, and patch merging drops them;
- key-value prompts: `l` learnable keys and values per block, concatenated inside every window
  attention (shared by all windows of the block);
- the relative position bias and the shifted-window mask cover window tokens only: a prompt
  (visual or key-value) gets no bias and is visible from, and sees, every token of every window.

As for ViTs, nothing in timm is patched: we call the block's own norms, qkv, projection, MLP and
relative-position table, and only re-state the window attention and the block's attention branch
(`timm_check.check_timm` verifies at construction that the installed timm still fits them). A
block with no live prompt and no key-value prompt runs timm's own `block(x)`, so with every visual
prompt pruned (and no key-value prompts) the model is exactly the frozen backbone. Masks, pruning,
rewinding and saving are shared with `PromptedViT` through `PromptTuned`; the masks keep their
(layers x p) and (layers x p x R) shapes, and each block's segments tile its own width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import swin_transformer as timm_swin
from timm.models.swin_transformer import (SwinTransformer, SwinTransformerBlock, WindowAttention, window_partition,
                                          window_reverse)
from torch import nn

from ..errors import BackboneError, ConfigError
from .base import PromptTuned, segment_of_channel
from .timm_check import ANY, check_timm, incompatible, missing_attributes, register, require_same, unbindable_calls


def prompted_window_attention(attn: WindowAttention, windows: torch.Tensor, shift_mask: torch.Tensor | None,
                              batch: int, n_prompts: int, key_prompt: torch.Tensor | None,
                              value_prompt: torch.Tensor | None) -> torch.Tensor:
    """timm `WindowAttention.forward` with `n_prompts` visual prompts leading each window and learnable
    keys/values in front of the real ones.

    Args:
        windows: (batch * windows, n_prompts + window area, C), windows of one image consecutive.
        shift_mask: the block's (windows, area, area) 0/-inf shifted-window mask, or None.
        key_prompt, value_prompt: (heads, l, head_dim) or None.
    """
    bw, n, _ = windows.shape
    heads = attn.num_heads
    qkv = attn.qkv(windows).reshape(bw, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B*nW, heads, N, head_dim)
    kv_len = 0
    if key_prompt is not None:
        kv_len = key_prompt.shape[1]
        k = torch.cat([key_prompt.to(k.dtype).unsqueeze(0).expand(bw, -1, -1, -1), k], dim=2)
        v = torch.cat([value_prompt.to(v.dtype).unsqueeze(0).expand(bw, -1, -1, -1), v], dim=2)
    bias = attn._get_rel_pos_bias()  # (1, heads, area, area): window tokens only
    if shift_mask is not None:  # one mask per window: give windows their own batch dimension
        n_win = shift_mask.shape[0]
        bias = bias.unsqueeze(1) + shift_mask.to(bias.dtype)[None, :, None]  # (1, nW, heads, area, area)
        q, k, v = (t.reshape(batch, n_win, heads, t.shape[2], -1) for t in (q, k, v))
    bias = F.pad(bias, (kv_len + n_prompts, 0, n_prompts, 0))  # prompts: no bias, never masked
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                         dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.reshape(bw, heads, n, -1)
    out = out.transpose(1, 2).reshape(bw, n, -1)
    return attn.proj_drop(attn.proj(out))


def prompted_swin_block(block: SwinTransformerBlock, x: torch.Tensor, prompts: torch.Tensor | None,
                        key_prompt, value_prompt) -> tuple[torch.Tensor, torch.Tensor | None]:
    """timm `SwinTransformerBlock.forward` with prompts in every window.

    Args:
        x: (B, H, W, C) feature map.
        prompts: (B, n, C) visual prompt tokens (entering the block, before its norm), or None.
    Returns:
        the new feature map and the prompts' attention output averaged over windows (None without prompts).
    """
    B, H, W, C = x.shape
    shifted = block.norm1(x)
    has_shift = any(block.shift_size)
    if has_shift:
        shifted = torch.roll(shifted, shifts=(-block.shift_size[0], -block.shift_size[1]), dims=(1, 2))
    pad_h = (block.window_size[0] - H % block.window_size[0]) % block.window_size[0]
    pad_w = (block.window_size[1] - W % block.window_size[1]) % block.window_size[1]
    shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
    _, Hp, Wp, _ = shifted.shape
    windows = window_partition(shifted, block.window_size).view(-1, block.window_area, C)
    n_win = windows.shape[0] // B
    n_prompts = 0
    if prompts is not None:
        n_prompts = prompts.shape[1]
        per_window = block.norm1(prompts).unsqueeze(1).expand(B, n_win, n_prompts, C).reshape(B * n_win, n_prompts, C)
        windows = torch.cat([per_window, windows], dim=1)
    mask = block.get_attn_mask(shifted) if getattr(block, "dynamic_mask", False) else block.attn_mask
    out = prompted_window_attention(block.attn, windows, mask, B, n_prompts, key_prompt, value_prompt)
    prompt_out = out[:, :n_prompts].reshape(B, n_win, n_prompts, C).mean(1) if n_prompts else None
    out = out[:, n_prompts:].reshape(-1, block.window_size[0], block.window_size[1], C)
    shifted = window_reverse(out, block.window_size, Hp, Wp)[:, :H, :W, :]
    attended = torch.roll(shifted, shifts=block.shift_size, dims=(1, 2)) if has_shift else shifted
    x = x + block.drop_path1(attended)
    x = x.reshape(B, -1, C)
    x = x + block.drop_path2(block.mlp(block.norm2(x)))
    return x.reshape(B, H, W, C), prompt_out


class PromptedSwin(PromptTuned):
    """A frozen timm Swin Transformer adapted by visual prompts, key-value prompts and a linear head.

    Same arguments as `PromptedViT`; `visual="shallow"` puts prompts in the first block only.
    """

    def __init__(self, backbone: SwinTransformer, num_classes: int, prompt_len: int = 0,
                 visual: str = "deep", kv_len: int = 0, kv_shared: bool = False, segments: int = 16,
                 segment_layout: str = "interleaved", prompt_dropout: float = 0.0,
                 train_backbone: bool = False, pruned_tokens: str = "remove", mask_values: str = "none") -> None:
        super().__init__()
        check_timm("swin")
        if not isinstance(backbone, SwinTransformer):
            raise BackboneError(f"PromptedSwin needs a timm SwinTransformer, got {type(backbone).__name__}")
        self.backbone = backbone
        blocks = [b for stage in backbone.layers for b in stage.blocks]
        odd = [i for i, b in enumerate(blocks) if type(b) is not SwinTransformerBlock or type(b.attn) is not WindowAttention]
        if odd:
            raise BackboneError(f"block {odd[0]} of this backbone is a {type(blocks[odd[0]]).__name__}; prompts are "
                                "supported on timm Swin models built from SwinTransformerBlock (swin_* v1)")
        self.num_layers = len(blocks)
        self.layer_dims = [b.dim for b in blocks]
        self.layer_heads = [b.attn.num_heads for b in blocks]
        self.layer_head_dims = [b.attn.qkv.out_features // 3 // b.attn.num_heads for b in blocks]
        self.dim = backbone.num_features
        if segments > min(self.layer_dims):
            raise ConfigError(f"{segments} segments per token is more than the narrowest stage's width "
                              f"{min(self.layer_dims)} allows; use --segments {min(16, min(self.layer_dims))}")
        prompt_len = self._store_options(prompt_len, visual, kv_len, kv_shared, segments, segment_layout,
                                         train_backbone, pruned_tokens)

        prompt_layers = self.prompt_sets
        self.tuned = nn.Module()
        self.tuned.visual = nn.ParameterList(
            [nn.Parameter(torch.empty(prompt_len, self.layer_dims[i])) for i in range(prompt_layers)]
        ) if prompt_len > 0 else None
        if kv_len > 0:
            def kv_tensors():
                return nn.ParameterList([nn.Parameter(torch.empty(h, kv_len, d))
                                         for h, d in zip(self.layer_heads, self.layer_head_dims)])
            self.tuned.kv_key = kv_tensors()
            self.tuned.kv_value = None if kv_shared else kv_tensors()
        else:
            self.tuned.kv_key = self.tuned.kv_value = None
        self.tuned.head = nn.Linear(self.dim, num_classes)
        self._add_masks(prompt_layers, prompt_len, segments, mask_values)
        for dim in sorted(set(self.layer_dims)):  # segments tile each stage's own width
            self.register_buffer(f"channel_segment_{dim}", segment_of_channel(dim, segments, segment_layout),
                                 persistent=False)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.reset_tuned()

    # ----------------------------------------------------------------------------------------------
    # Parameters
    def reset_tuned(self, generator: torch.Generator | None = None) -> None:
        """VPT's xavier bound (patch fan-in, the block's width) for visual prompts, kaiming-uniform
        for key-value prompts, a small normal head: `PromptedViT.reset_tuned`, per block width."""
        t = self.tuned
        with torch.no_grad():
            for i, prompt in enumerate(t.visual or []):
                bound = self._visual_prompt_bound(self.layer_dims[i])
                prompt.uniform_(-bound, bound, generator=generator)
        self._reset_kv_prompts(generator)
        self._reset_head(generator)

    # ----------------------------------------------------------------------------------------------
    # Masks
    def channel_segment_of(self, layer: int) -> torch.Tensor:
        return getattr(self, f"channel_segment_{self.layer_dims[layer]}")

    # ----------------------------------------------------------------------------------------------
    # Forward
    def forward_features(self, images: torch.Tensor, token_gate: torch.Tensor | None = None,
                         segment_gate: torch.Tensor | None = None,
                         record_attention: list | None = None) -> torch.Tensor:
        """The backbone's pooled representation (B, num_features) with prompts in place."""
        if record_attention is not None:
            raise BackboneError("attention views need a ViT: a Swin attends within shifted windows, where a "
                                "prompt's view of the image is not one map")
        bb = self.backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_backbone):
            x = bb.patch_embed(images)  # (B, H, W, C)
        batch = x.shape[0]
        layer = 0
        for stage in bb.layers:
            x = stage.downsample(x)
            carried = None  # shallow prompts live in the first stage only: patch merging drops them
            for block in stage.blocks:
                entering = self.prompts_entering(layer)
                prompts = (carried if entering is None
                           else self._layer_prompts(entering, batch, token_gate, segment_gate))
                key, value = self._kv(layer)
                if prompts is None and key is None:
                    x = block(x)  # nothing to add: timm's own block, exactly the frozen computation
                else:
                    x, prompt_out = prompted_swin_block(block, x, prompts, key, value)
                    if self.prompts_carried and prompts is not None:
                        carried = prompts + block.drop_path1(prompt_out)
                        carried = carried + block.drop_path2(block.mlp(block.norm2(carried)))
                layer += 1
        x = bb.norm(x)
        return bb.forward_head(x, pre_logits=True)


# The timm internals the forwards above re-state, checked once per process (`timm_check`).
SWIN_ATTRIBUTES = {
    "SwinTransformer": ("patch_embed", "patch_embed.patch_size", "layers", "norm", "forward_head", "num_features"),
    "SwinTransformerStage": ("downsample", "blocks"),
    "SwinTransformerBlock": ("dim", "norm1", "attn", "shift_size", "window_size", "window_area", "attn_mask",
                             "get_attn_mask", "drop_path1", "norm2", "mlp", "drop_path2"),
    "WindowAttention": ("num_heads", "qkv", "qkv.out_features", "_get_rel_pos_bias", "attn_drop", "attn_drop.p",
                        "proj", "proj_drop"),
}

SWIN_CALLS = (
    ("SwinTransformer", "forward_head", (ANY, ANY), {"pre_logits": True}),
    ("SwinTransformerBlock", "forward", (ANY, ANY), {}),
    ("SwinTransformerBlock", "get_attn_mask", (ANY, ANY), {}),
    ("WindowAttention", "forward", (ANY, ANY, ANY), {}),
    ("WindowAttention", "_get_rel_pos_bias", (ANY,), {}),
    ("swin_transformer", "window_partition", (ANY, ANY), {}),
    ("swin_transformer", "window_reverse", (ANY, ANY, ANY, ANY), {}),
)


def _check_timm_swin() -> None:
    """The re-stated Swin forwards against timm's own (see `timm_check`)."""
    # 4x4 map in 2x2 windows (4 windows, the second block shifted with a mask), then a single window
    model = timm_swin.SwinTransformer(img_size=16, patch_size=4, window_size=2, embed_dim=8, depths=(2, 2),
                                      num_heads=(2, 2), mlp_ratio=1.0, num_classes=0).eval()
    stage = model.layers[0]
    block = stage.blocks[1]
    missing = missing_attributes({"SwinTransformer": model, "SwinTransformerStage": stage,
                                   "SwinTransformerBlock": block, "WindowAttention": block.attn}, SWIN_ATTRIBUTES)
    if missing:
        raise incompatible("swin", "missing " + ", ".join(missing))
    wrong = unbindable_calls({"SwinTransformer": timm_swin.SwinTransformer, "SwinTransformerBlock": type(block),
                               "WindowAttention": type(block.attn), "swin_transformer": timm_swin}, SWIN_CALLS)
    if wrong:
        raise incompatible("swin", "calls that no longer bind: " + "; ".join(wrong))
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x = model.patch_embed(images)  # as PromptedSwin does
    for s, stage in enumerate(model.layers):
        x = stage.downsample(x)
        for b, block in enumerate(stage.blocks):
            theirs = block(x)
            require_same("swin", prompted_swin_block(block, x, None, None, None)[0], theirs,
                          f"SwinTransformerBlock.forward (with its WindowAttention.forward) of stage {s} block {b} "
                          "no longer equals the re-stated forward")
            x = theirs
    require_same("swin", model.norm(x), model.forward_features(images),
                  "SwinTransformer.forward_features is no longer patch_embed, then per stage downsample and blocks, "
                  "then norm")


register("swin", "Swin", "e2vpt/models/swin.py", _check_timm_swin)
