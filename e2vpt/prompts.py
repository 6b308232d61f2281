"""`PromptedViT`: a frozen timm VisionTransformer with visual prompts, key-value prompts and a new head.

Why no module surgery: timm's `Block.forward` is two residual lines and `Attention.forward` a dozen.
We call timm's own sub-modules (patch embedding, norms, qkv, proj, mlp) and only re-state those two
forwards, so the backbone's state dict and weights stay exactly timm's and nothing is forked or
patched. Every trainable tensor lives under `self.tuned` (one name prefix: `tuned.`), so "save what
was tuned" is one filter. Constructing a model first runs `timm_compat.check_timm`, which refuses, with
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

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from .errors import BackboneError, ConfigError
from .timm_compat import check_timm


def segment_of_channel(dim: int, segments: int, layout: str) -> torch.Tensor:
    """Index of the segment each of the `dim` channels belongs to.

    `interleaved` is the official code's tiling (channel c -> segment c mod R); `contiguous` cuts the
    channels into R consecutive slices (sizes differ by at most one when R does not divide dim).
    """
    channels = torch.arange(dim)
    if layout == "interleaved":
        return channels % segments
    return channels * segments // dim


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


class PromptTuned(nn.Module, ABC):
    """What every prompted backbone shares: the `tuned.` parameters, their saving and loading, the
    frozen backbone's eval mode, masks and the channels they cover, the prompts a layer reads and the
    parameter count.

    A subclass (`PromptedViT`, `PromptedSwin`) wraps one backbone family. Its `__init__` sets
    `backbone`, calls `_store_options`, builds `tuned` (`visual`: one (p, width) prompt set per prompt
    layer, or None; `kv_key`/`kv_value`: one (heads, l, head_dim) tensor per layer, or None; `head`;
    buffers `token_mask` (prompt layers x p) and `segment_mask` (prompt layers x p x R)), sets
    `prompt_dropout` and calls `reset_tuned`. It implements the abstract methods below:
    `forward_features`, `reset_tuned` and `channel_segment_of`.
    """

    backbone: nn.Module
    tuned: nn.Module

    def _store_options(self, prompt_len: int, visual: str, kv_len: int, kv_shared: bool, segments: int,
                       segment_layout: str, train_backbone: bool, pruned_tokens: str = "remove") -> int:
        """Record the prompt settings, freeze the backbone (unless `full` trains it) and return the
        effective prompt length (0 when `visual` is `none`)."""
        prompt_len = 0 if visual == "none" else prompt_len
        self.prompt_len, self.visual_mode, self.kv_len, self.kv_shared = prompt_len, visual, kv_len, kv_shared
        self.segments, self.segment_layout = segments, segment_layout
        self.train_backbone = train_backbone
        if pruned_tokens not in ("remove", "zero"):
            raise ConfigError(f"pruned_tokens must be remove or zero, got {pruned_tokens!r}")
        self.pruned_tokens = pruned_tokens
        for p in self.backbone.parameters():
            p.requires_grad_(train_backbone)
        return prompt_len

    def trainable_named_parameters(self):
        """(name, parameter) of everything this method trains."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def tuned_state(self) -> dict[str, torch.Tensor]:
        """Tensors a run saves: all trainable parameters plus the masks (detached copies)."""
        names = {n for n, _ in self.trainable_named_parameters()} | {"tuned.token_mask", "tuned.segment_mask"}
        return {n: t.detach().clone() for n, t in self.state_dict().items() if n in names}

    def load_tuned_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        for name, value in state.items():
            if name not in own:
                raise BackboneError(f"saved tensor '{name}' does not exist in this model; "
                                    "the weights were saved for another method or backbone")
            if own[name].shape != value.shape:
                raise BackboneError(f"saved tensor '{name}' has shape {tuple(value.shape)}, this model expects "
                                    f"{tuple(own[name].shape)}; the weights come from another configuration")
        self.load_state_dict(state, strict=False)
        if self.tuned.token_mask_value is not None and "tuned.token_mask_value" not in state:
            self.train_mask_values(False)  # saved after pruning: the masks are the fixed 0/1 ones

    def train(self, mode: bool = True) -> "PromptTuned":
        """Backbone dropout/drop-path stay off (eval mode) whatever the phase, as docs/E2VPT-SPEC.md section 3 says."""
        super().train(mode)
        self.backbone.eval()
        return self

    def _visual_prompt_bound(self, width: int) -> float:
        """VPT's xavier-uniform bound for prompts of `width` channels: fan-in of one RGB patch."""
        patch = self.backbone.patch_embed.patch_size
        fan_in = 3 * math.prod(patch) if isinstance(patch, tuple) else 3 * patch * patch
        return math.sqrt(6.0 / (fan_in + width))

    @torch.no_grad()
    def _reset_kv_prompts(self, generator: torch.Generator | None = None) -> None:
        """The official code's initialisation: `kaiming_uniform_(a=0)` on each layer's (heads, l, head_dim)
        tensor, whose fan-in is l * head_dim, so values are uniform within sqrt(6 / (l * head_dim))."""
        for kv in (self.tuned.kv_key, self.tuned.kv_value):
            for layer_tensor in (kv if kv is not None else []):  # a (layers, ...) tensor or a list per layer
                _, length, head_dim = layer_tensor.shape
                bound = math.sqrt(6.0 / (length * head_dim))
                layer_tensor.uniform_(-bound, bound, generator=generator)

    @torch.no_grad()
    def _reset_head(self, generator: torch.Generator | None = None) -> None:
        self.tuned.head.weight.normal_(0.0, 0.02, generator=generator)
        self.tuned.head.bias.zero_()

    # ----------------------------------------------------------------------------------------------
    # Masks
    def _add_masks(self, prompt_layers: int, prompt_len: int, segments: int, mask_values: str) -> None:
        """The pruning masks: 0/1 buffers `token_mask` (prompt layers x p) and `segment_mask` (... x R).

        With `mask_values` `layer` or `shared` (the official code, `--train-masks`), real-valued
        parameters `token_mask_value` / `segment_mask_value` (one row per layer, or one row for all)
        multiply them; they start at 1, train in the first phase only (`train_mask_values`) and the
        importance is the gradient at their trained values."""
        t, p = self.tuned, max(prompt_len, 1)
        t.register_buffer("token_mask", torch.ones(prompt_layers, p))
        t.register_buffer("segment_mask", torch.ones(prompt_layers, p, segments))
        t.token_mask_value = t.segment_mask_value = None
        if mask_values != "none" and prompt_len > 0:
            rows = prompt_layers if mask_values == "layer" else 1
            t.token_mask_value = nn.Parameter(torch.ones(rows, p))
            t.segment_mask_value = nn.Parameter(torch.ones(rows, p, segments))

    def mask_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(p,) token and (p, R) segment multipliers of `layer`'s prompts: the 0/1 masks, times the
        trained mask values when masks are trained."""
        t = self.tuned
        token, segment = t.token_mask[layer], t.segment_mask[layer]
        if t.token_mask_value is not None:
            row = layer if t.token_mask_value.shape[0] > 1 else 0
            token, segment = token * t.token_mask_value[row], segment * t.segment_mask_value[row]
        return token, segment

    @torch.no_grad()
    def train_mask_values(self, train: bool) -> None:
        """Trained masks learn in the first phase only; afterwards they are exactly the 0/1 masks
        (the official code rebuilds them as fixed 0/1 values after pruning)."""
        for value in (self.tuned.token_mask_value, self.tuned.segment_mask_value):
            if value is not None:
                if not train:
                    value.fill_(1.0)
                value.requires_grad_(train)

    def channel_mask(self, layer: int) -> torch.Tensor:
        """(p, width of `layer`'s prompts) 0/1: the layer's token mask times its segments spread onto channels.

        `layer` indexes the prompt layers (the rows of `token_mask`): every block for deep prompts,
        only 0 for shallow ones."""
        t = self.tuned
        return t.segment_mask[layer][:, self.channel_segment_of(layer)] * t.token_mask[layer][:, None]

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Zero every pruned visual-prompt value (after each optimiser step, so nothing revives it)."""
        visual = self.tuned.visual
        for layer in range(len(visual) if visual is not None else 0):
            visual[layer].mul_(self.channel_mask(layer))

    def set_masks(self, token_mask: torch.Tensor, segment_mask: torch.Tensor) -> None:
        """Install pruning masks and zero the pruned prompt values so a pruned prompt stays pruned."""
        t = self.tuned
        t.token_mask.copy_(token_mask.to(t.token_mask))
        t.segment_mask.copy_(segment_mask.to(t.segment_mask))
        self.zero_pruned()

    def tuned_param_count(self, include_head: bool = True) -> int:
        """Closed-form count of tuned parameters after pruning (docs/E2VPT-SPEC.md section 5): surviving
        visual-prompt entries + every key-value prompt (+ the head); the whole backbone for `full`."""
        t = self.tuned
        if self.train_backbone:
            total = self.backbone_param_count()
        else:
            total = self.kept_prompt_entries()
            total += sum(p.numel() for name, p in t.named_parameters() if name.startswith("kv_"))
        if include_head:
            total += t.head.weight.numel() + t.head.bias.numel()
        return total

    def kept_prompt_entries(self) -> int:
        """Visual-prompt values that survive pruning (0 without visual prompts)."""
        visual = self.tuned.visual
        if visual is None:
            return 0
        return int(sum(self.channel_mask(layer).sum() for layer in range(len(visual))).item())

    def backbone_param_count(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())

    def forward(self, images: torch.Tensor, token_gate: torch.Tensor | None = None,
                segment_gate: torch.Tensor | None = None) -> torch.Tensor:
        return self.tuned.head(self.forward_features(images, token_gate, segment_gate))

    # ----------------------------------------------------------------------------------------------
    # Prompts a layer reads
    @abstractmethod
    def channel_segment_of(self, layer: int) -> torch.Tensor:
        """Index of the segment each channel of `layer`'s prompts belongs to, (width,) (see
        `segment_of_channel`)."""

    @abstractmethod
    def reset_tuned(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise every prompt and the head, drawing from `generator` (the global RNG if None)."""

    @abstractmethod
    def forward_features(self, images: torch.Tensor, token_gate: torch.Tensor | None = None,
                         segment_gate: torch.Tensor | None = None,
                         record_attention: list | None = None) -> torch.Tensor:
        """The backbone's pooled representation (B, features) with prompts in place.

        Args:
            images: (B, 3, H, W), normalised.
            token_gate: optional (B, prompt layers, p) multipliers of the visual prompts (importance scoring).
            segment_gate: optional (B, prompt layers, p, R) multipliers of their segments (importance scoring).
            record_attention: a list that receives each layer's attention, where the family supports it
                (see `PromptedViT`); a family that does not raises `BackboneError`.
        """

    def tokens_in_sequence(self, layer: int) -> torch.Tensor:
        """Indices of prompt layer `layer`'s tokens that enter the sequence: the surviving ones, or
        all p with `pruned_tokens="zero"` (pruned ones as zeros); empty without visual prompts."""
        t = self.tuned
        if t.visual is None:
            return torch.zeros(0, dtype=torch.long)
        if self.pruned_tokens == "zero":
            return torch.arange(t.token_mask.shape[1], device=t.token_mask.device)
        return t.token_mask[layer].nonzero().squeeze(1)

    def _layer_prompts(self, layer: int, batch: int, token_gate, segment_gate) -> torch.Tensor | None:
        """The visual prompts layer `layer` reads, (B, tokens, width), or None when it reads none.

        With `pruned_tokens="remove"` only the surviving tokens are returned; with `"zero"` all p,
        the pruned ones zeroed. Gates (importance scoring) replace the mask values they stand for, so
        their gradient is the gradient with respect to the masks at their current values."""
        t = self.tuned
        if t.visual is None:
            return None
        kept = self.tokens_in_sequence(layer)
        if kept.numel() == 0:
            return None
        channel_segment = self.channel_segment_of(layer)
        token, segment = self.mask_values(layer)
        prompts = t.visual[layer][kept]  # (tokens, width)
        if segment_gate is None:
            seg = segment[kept]  # (tokens, R)
            if t.segment_mask_value is not None or not bool(seg.all()):
                prompts = prompts * seg[:, channel_segment]
        if token_gate is None and (t.token_mask_value is not None or self.pruned_tokens == "zero"):
            prompts = prompts * token[kept, None]
        prompts = prompts.unsqueeze(0).expand(batch, -1, -1)  # (B, tokens, width)
        if token_gate is not None:
            prompts = prompts * token_gate[:, layer, kept, None]
        if segment_gate is not None:
            prompts = prompts * segment_gate[:, layer][:, kept][:, :, channel_segment]
        return self.prompt_dropout(prompts)

    def gate_values(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image gates holding the current mask values, (B, prompt layers, p) and (B, prompt layers, p, R):
        what importance scoring differentiates the loss with respect to."""
        tokens, segments = zip(*(self.mask_values(layer) for layer in range(self.tuned.token_mask.shape[0])))
        token, segment = torch.stack(tokens).detach(), torch.stack(segments).detach()
        return (token.unsqueeze(0).repeat(batch, 1, 1), segment.unsqueeze(0).repeat(batch, 1, 1, 1))

    def _kv(self, layer: int):
        """Layer `layer`'s key and value prompts, (heads, l, head_dim) each, or (None, None)."""
        t = self.tuned
        if t.kv_key is None:
            return None, None
        key = t.kv_key[layer]
        return key, (t.kv_value[layer] if t.kv_value is not None else key)


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

        prompt_layers = self.num_layers if visual == "deep" else 1
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
            prompts = None
            if self.visual_mode == "deep" or (self.visual_mode == "shallow" and i == 0):
                prompts = self._layer_prompts(i if self.visual_mode == "deep" else 0, batch, token_gate, segment_gate)
            if prompts is not None:
                x = torch.cat([x[:, :n_prefix], prompts, x[:, n_prefix + carried:]], dim=1)
                carried = prompts.shape[1]
            key, value = self._kv(i)
            if record_attention is not None:
                prompt_layer = i if self.visual_mode == "deep" else 0
                record_attention.append(self._attention_entry(block, x, key, carried, prompt_layer))
            x = prompted_block(block, x, key, value)
            last = i == len(bb.blocks) - 1
            if self.visual_mode == "deep" and carried and not (last and self.pool_tokens):
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
