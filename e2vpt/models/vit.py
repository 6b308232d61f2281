"""`PromptedViT`: a frozen timm VisionTransformer with visual prompts, key-value prompts and a new head.

Why no module surgery: timm's `Block.forward` is two residual lines and `Attention.forward` a dozen.
We call timm's own sub-modules (patch embedding, norms, qkv, proj, mlp) and only re-state those two
forwards, so the backbone's state dict and weights stay exactly timm's and nothing is forked or
patched. Every trainable tensor lives under `self.tuned` (one name prefix: `tuned.`), so "save what
was tuned" is one filter. Constructing a model first runs `timm_check.check_timm`, which refuses, with
one clear message, a timm whose `Attention`/`Block` no longer have or compute what is re-stated here.

Sequence at layer i (docs/E2VPT-SPEC.md section 1):  [prefix tokens ; P_i (kept tokens only) ; patches]
- deep: P_i's outputs are dropped after layer i and replaced by P_{i+1};
- shallow (VPT-shallow): P_0 enters layer 0 and its outputs flow through every later layer.
Key-value prompts (section 2) are concatenated to each layer's keys and values after the frozen
projections; queries are unchanged, so no token is added to the residual stream.

Masks (section 4) are 0/1 buffers: `token_mask` (layers x p) and `segment_mask` (layers x p x R),
times real-valued trained mask values under `--train-masks` (the official code). A pruned token is
*removed* from the sequence (`pruned_tokens="remove"`: a layer with every token pruned and no
key-value prompts runs exactly the frozen block; its key-value prompts, when it has them, still act),
or kept as a zero token (`"zero"`, the official code: LayerNorm turns it into its bias, which still
yields keys and values). Pruned segments are zeroed channels of a surviving token. For importance
scoring, `forward` takes per-image gates holding the mask values, so one backward pass yields every
image's d(loss)/d(mask). Prompt keys skip the attention's `k_norm`: they are learned directly in the
space of the normalised keys (the official code's timm has no `k_norm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import vision_transformer as timm_vit
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from ..errors import BackboneError, ConfigError
from .base import PromptTuned, segment_of_channel
from .timm_check import ANY, check_timm, incompatible, missing_attributes, register, require_same, unbindable_calls


def _prompted_qkv(attn: Attention, x: torch.Tensor, key_prompt: torch.Tensor | None,
                  value_prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (B, heads, N, head_dim) and keys and values (B, heads, l + N, head_dim): timm's
    projections and norms, with the key-value prompts prepended to the keys and values."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    if key_prompt is not None:
        kp = key_prompt.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1)  # (B, heads, l, head_dim)
        vp = value_prompt.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        k = torch.cat([kp, k], dim=2)  # prompts first, as in the official code; order is irrelevant
        v = torch.cat([vp, v], dim=2)
    return q, k, v


def attention_weights(attn: Attention, x: torch.Tensor, key_prompt: torch.Tensor | None) -> torch.Tensor:
    """The attention probabilities `prompted_attention` applies, (B, heads, N queries, l + N keys):
    softmax(q k^T / sqrt(head_dim)), key-value prompts first among the keys. For analysis only:
    training never materialises them (scaled_dot_product_attention fuses the product)."""
    q, k, _ = _prompted_qkv(attn, x, key_prompt, key_prompt)
    return (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)


def prompted_attention(attn: Attention, x: torch.Tensor, key_prompt: torch.Tensor | None,
                       value_prompt: torch.Tensor | None) -> torch.Tensor:
    """timm `Attention.forward` with learnable keys/values prepended to the real ones.

    Args:
        attn: the frozen timm attention module (its qkv/proj/norms are used as they are).
        x: tokens, (B, N, C).
        key_prompt, value_prompt: (heads, l, head_dim) or None.
    """
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = _prompted_qkv(attn, x, key_prompt, value_prompt)
    dropout = attn.attn_drop.p if attn.training else 0.0
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, heads, N, head_dim)
    x = x.transpose(1, 2).reshape(B, N, attn.attn_dim)
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def prompted_block(block: Block, x: torch.Tensor, key_prompt, value_prompt) -> torch.Tensor:
    """timm `Block.forward` with `prompted_attention` in place of `block.attn`."""
    x = x + block.drop_path1(block.ls1(prompted_attention(block.attn, block.norm1(x), key_prompt, value_prompt)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class PromptedViT(PromptTuned):
    """A frozen ViT adapted by visual prompts, key-value prompts and a linear head.

    Args:
        backbone: a timm VisionTransformer without head (num_classes=0).
        num_classes: classes of the new head.
        prompt_len: visual prompt tokens per layer (p); 0 for none.
        visual: `deep` (one set per layer), `shallow` (first layer only) or `none`.
        kv_len: key-value prompts per layer (l); 0 for none.
        kv_shared: one tensor serves as both key and value prompt.
        segments: segments per prompt token (R) for segment-wise pruning.
        segment_layout: `interleaved` or `contiguous` (see `segment_of_channel`).
        prompt_dropout: dropout on visual prompts while training.
        train_backbone: leave the backbone trainable (full fine-tuning); otherwise it is frozen.
    """

    def __init__(self, backbone: VisionTransformer, num_classes: int, prompt_len: int = 0,
                 visual: str = "deep", kv_len: int = 0, kv_shared: bool = False, segments: int = 16,
                 segment_layout: str = "interleaved", prompt_dropout: float = 0.0,
                 train_backbone: bool = False, pruned_tokens: str = "remove", mask_values: str = "none",
                 avg_pool: str = "patches") -> None:
        super().__init__()
        check_timm("vit")
        if not isinstance(backbone, VisionTransformer):
            raise BackboneError(f"PromptedViT needs a timm VisionTransformer, got {type(backbone).__name__}")
        odd = [i for i, b in enumerate(backbone.blocks) if type(b) is not Block or type(b.attn) is not Attention]
        if odd:
            raise BackboneError(f"block {odd[0]} of this backbone is a {type(backbone.blocks[odd[0]]).__name__}; "
                                "prompts are supported on timm ViTs built from the standard Block and Attention")
        self.backbone = backbone
        self.dim = backbone.embed_dim
        self.num_layers = len(backbone.blocks)
        self.num_prefix = backbone.num_prefix_tokens
        attn = backbone.blocks[0].attn
        self.heads, self.head_dim = attn.num_heads, attn.head_dim
        if segments > self.dim:
            raise ConfigError(f"{segments} segments per token is more than the embedding dimension {self.dim} "
                              "allows; use --segments 16 or fewer than the width")
        prompt_len = self._store_options(prompt_len, visual, kv_len, kv_shared, segments, segment_layout,
                                         train_backbone, pruned_tokens)

        prompt_layers = self.prompt_sets
        self.tuned = nn.Module()
        if prompt_len > 0:
            self.tuned.visual = nn.Parameter(torch.empty(prompt_layers, prompt_len, self.dim))
        else:
            self.tuned.visual = None
        if kv_len > 0:
            self.tuned.kv_key = nn.Parameter(torch.empty(self.num_layers, self.heads, kv_len, self.head_dim))
            self.tuned.kv_value = None if kv_shared else nn.Parameter(torch.empty_like(self.tuned.kv_key))
        else:
            self.tuned.kv_key = self.tuned.kv_value = None
        self.tuned.head = nn.Linear(self.dim, num_classes)
        self._add_masks(prompt_layers, prompt_len, segments, mask_values)
        self.register_buffer("channel_segment", segment_of_channel(self.dim, segments, segment_layout),
                             persistent=False)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        # `tokens` (the official MAE head): the mean of every token after the prefix, the last layer's
        # prompts included, then a fresh LayerNorm (weight 1, bias 0) instead of the pretrained norm
        self.pool_tokens = avg_pool == "tokens" and backbone.global_pool == "avg"
        self.reset_tuned()

    # ----------------------------------------------------------------------------------------------
    # Parameters
    def reset_tuned(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise prompts and head: VPT's xavier bound for visual prompts, kaiming-uniform
        (the official code's choice) for key-value prompts, a small normal head."""
        t = self.tuned
        with torch.no_grad():
            if t.visual is not None:
                bound = self._visual_prompt_bound(self.dim)
                t.visual.uniform_(-bound, bound, generator=generator)
        self._reset_kv_prompts(generator)
        self._reset_head(generator)

    # ----------------------------------------------------------------------------------------------
    # Masks
    def channel_segment_of(self, layer: int) -> torch.Tensor:
        return self.channel_segment  # every layer has the same width

    # ----------------------------------------------------------------------------------------------
    # Forward
    def forward_features(self, images: torch.Tensor, token_gate: torch.Tensor | None = None,
                         segment_gate: torch.Tensor | None = None,
                         record_attention: list | None = None) -> torch.Tensor:
        """The backbone's pooled representation (B, dim) with prompts in place.

        Args:
            images: (B, 3, H, W), normalised.
            token_gate: optional (B, prompt layers, p) multipliers (importance scoring).
            segment_gate: optional (B, prompt layers, p, R) multipliers (importance scoring).
            record_attention: a list that receives, per layer, the first image's head-averaged
                attention split by what is attended (`_attention_entry`); the output is unchanged.
        """
        bb = self.backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_backbone):
            x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))  # (B, prefix + patches, dim)
        batch, n_prefix = x.shape[0], self.num_prefix
        carried = 0  # prompt tokens currently in the sequence (shallow prompts are carried along)
        for i, block in enumerate(bb.blocks):
            entering = self.prompts_entering(i)
            prompts = None if entering is None else self._layer_prompts(entering, batch, token_gate, segment_gate)
            if prompts is not None:
                x = torch.cat([x[:, :n_prefix], prompts, x[:, n_prefix + carried:]], dim=1)
                carried = prompts.shape[1]
            key, value = self._kv(i)
            if record_attention is not None:
                prompt_layer = self.prompt_set_at(i)
                record_attention.append(self._attention_entry(block, x, key, carried, prompt_layer))
            x = prompted_block(block, x, key, value)
            last = i == len(bb.blocks) - 1
            if not self.prompts_carried and carried and not (last and self.pool_tokens):
                x = torch.cat([x[:, :n_prefix], x[:, n_prefix + carried:]], dim=1)  # drop prompt outputs
                carried = 0
        if self.pool_tokens:
            return F.layer_norm(x[:, n_prefix:].mean(1), (self.dim,), eps=1e-6)
        if carried:
            x = torch.cat([x[:, :n_prefix], x[:, n_prefix + carried:]], dim=1)
        x = bb.norm(x)
        return bb.forward_head(x, pre_logits=True)

    @torch.no_grad()
    def _attention_entry(self, block: Block, x: torch.Tensor, key: torch.Tensor | None, carried: int,
                         prompt_layer: int) -> dict:
        """One layer's head-averaged attention for the first image of `x` (the block's input), split
        by what is attended: [CLS] (query 0) to the prefix, to each prompt token in the sequence, to
        each key-value prompt and to each patch; each prompt token to each patch; each patch to each
        key-value prompt. Maps over patches are (grid rows, grid columns)."""
        probs = attention_weights(block.attn, block.norm1(x[:1]), key)[0].mean(dim=0).float().cpu()  # (N, l + N)
        kv, prefix, grid = 0 if key is None else key.shape[1], self.num_prefix, self.backbone.patch_embed.grid_size
        first_patch = prefix + carried  # the same index among queries; keys are shifted by kv
        tokens = self.tokens_in_sequence(prompt_layer).cpu() if carried else torch.zeros(0, dtype=torch.long)
        cls = probs[0]
        return {"prompt_layer": prompt_layer, "tokens": tokens.tolist(),
                "cls_to_prefix": cls[kv:kv + prefix].sum(), "cls_to_kv": cls[:kv],
                "cls_to_prompt": cls[kv + prefix:kv + first_patch],
                "cls_to_patches": cls[kv + first_patch:].reshape(grid),
                "prompt_to_patches": probs[prefix:first_patch, kv + first_patch:].reshape(-1, *grid),
                "kv_from_patches": probs[first_patch:, :kv].T.reshape(-1, *grid)}


# The timm internals the forwards above re-state, checked once per process (`timm_check`).
VIT_ATTRIBUTES = {
    "VisionTransformer": ("patch_embed", "patch_embed.patch_size", "_pos_embed", "patch_drop", "norm_pre", "blocks",
                          "norm", "forward_head", "num_prefix_tokens", "embed_dim"),
    "Block": ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"),
    "Attention": ("qkv", "q_norm", "k_norm", "num_heads", "head_dim", "attn_dim", "attn_drop", "attn_drop.p", "norm",
                  "proj", "proj_drop"),
}
VIT_CALLS = (
    ("VisionTransformer", "forward_head", (ANY, ANY), {"pre_logits": True}),
    ("VisionTransformer", "_pos_embed", (ANY, ANY), {}),
    ("Block", "forward", (ANY, ANY), {}),
    ("Attention", "forward", (ANY, ANY), {}),
)


def _check_timm_vit() -> None:
    """The re-stated ViT forwards against timm's own (see `timm_check`)."""
    model = timm_vit.VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=1.0,
                                       num_classes=0, qkv_bias=True, qk_norm=True, init_values=0.5).eval()
    block = model.blocks[0]
    missing = missing_attributes({"VisionTransformer": model, "Block": block, "Attention": block.attn},
                                  VIT_ATTRIBUTES)
    if missing:
        raise incompatible("vit", "missing " + ", ".join(missing))
    wrong = unbindable_calls({"VisionTransformer": timm_vit.VisionTransformer, "Block": type(block),
                               "Attention": type(block.attn)}, VIT_CALLS)
    if wrong:
        raise incompatible("vit", "calls that no longer bind: " + "; ".join(wrong))
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))  # as PromptedViT does
    for i, block in enumerate(model.blocks):
        theirs = block(x)
        require_same("vit", prompted_block(block, x, None, None), theirs,
                      f"Block.forward (with its Attention.forward) of block {i} no longer equals the re-stated forward")
        x = theirs
    require_same("vit", model.norm(x), model.forward_features(images),
                  "VisionTransformer.forward_features is no longer patch_embed, _pos_embed, patch_drop, norm_pre, "
                  "blocks, norm")


register("vit", "ViT", "e2vpt/models/vit.py", _check_timm_vit)
