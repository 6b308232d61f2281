"""`PromptTuned`: what every prompted backbone shares, and the segment maths of segment-wise pruning.

Why a base class: ViT (`vit.py`) and Swin (`swin.py`) differ only in where prompts enter the
sequence and how attention reads them. Everything else (the `tuned.` parameters, their saving and
loading, the frozen backbone's eval mode, the token and segment masks, the parameter count) is one
implementation here, so a new backbone family is one subclass.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from ..errors import BackboneError, ConfigError


def segment_of_channel(dim: int, segments: int, layout: str) -> torch.Tensor:
    """Index of the segment each of the `dim` channels belongs to.

    `interleaved` is the official code's tiling (channel c -> segment c mod R); `contiguous` cuts the
    channels into R consecutive slices (sizes differ by at most one when R does not divide dim).
    """
    channels = torch.arange(dim)
    if layout == "interleaved":
        return channels % segments
    return channels * segments // dim


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
        if mode and getattr(self, "fixed_prompts", None) is not None:
            raise RuntimeError("this model's prompts were fixed for inference (fix_prompts); it cannot train")
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
        fixed = getattr(self, "fixed_prompts", None)
        if fixed is not None and token_gate is None and segment_gate is None:
            prompts = getattr(fixed, f"set_{layer}")
            return None if prompts is None else prompts.unsqueeze(0).expand(batch, -1, -1)
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

    @torch.no_grad()
    def fix_prompts(self) -> "PromptTuned":
        """Compute once, as buffers, the prompts each layer reads at inference; returns the model.

        For a model that will only predict (ONNX export, inference timing): the forward then holds no
        step whose shape depends on the masks' values (which tokens survive), so `torch.export` sees
        a static graph, and no step reads the masks back from the device. Call it after the last
        change to the prompts or masks. The model is left in eval mode and cannot train again (`train()`
        refuses), so the fixed copy can never go stale."""
        self.eval()
        fixed = nn.Module()
        for layer in range(self.prompt_sets if self.tuned.visual is not None else 0):
            prompts = self._layer_prompts(layer, 1, None, None)
            fixed.register_buffer(f"set_{layer}", None if prompts is None else prompts[0].clone(), persistent=False)
        self.fixed_prompts = fixed
        return self

    def visual_prompt_masks(self) -> dict[str, torch.Tensor]:
        """{name in `tuned_state`: bool mask of the same shape}, True where a visual-prompt value survives
        pruning: what a compact copy of the prompts keeps (`e2vpt.deploy.adapter`)."""
        visual = self.tuned.visual
        if visual is None:
            return {}
        masks = [self.channel_mask(layer).bool() for layer in range(len(visual))]
        if isinstance(visual, nn.Parameter):
            return {"tuned.visual": torch.stack(masks)}
        return {f"tuned.visual.{layer}": mask for layer, mask in enumerate(masks)}

    def gate_values(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image gates holding the current mask values, (B, prompt layers, p) and (B, prompt layers, p, R):
        what importance scoring differentiates the loss with respect to."""
        tokens, segments = zip(*(self.mask_values(layer) for layer in range(self.tuned.token_mask.shape[0])))
        token, segment = torch.stack(tokens).detach(), torch.stack(segments).detach()
        return (token.unsqueeze(0).repeat(batch, 1, 1), segment.unsqueeze(0).repeat(batch, 1, 1, 1))

    # Where the visual prompts go (the method's `visual` in `e2vpt.methods`): read here and nowhere else.
    @property
    def prompt_sets(self) -> int:
        """Sets of visual prompts the model holds: one per layer (deep), or one (shallow)."""
        return self.num_layers if self.visual_mode == "deep" else 1

    def prompts_entering(self, layer: int) -> int | None:
        """The prompt set that enters the sequence at `layer`, or None: a deep set enters every layer
        (replacing the last one's outputs), a shallow one the first layer only."""
        if self.visual_mode == "deep":
            return layer
        return 0 if self.visual_mode == "shallow" and layer == 0 else None

    def prompt_set_at(self, layer: int) -> int:
        """The prompt set whose tokens (or their outputs) are in the sequence at `layer`."""
        return layer if self.visual_mode == "deep" else 0

    @property
    def prompts_carried(self) -> bool:
        """Whether a layer's prompt outputs flow on into the next layer (shallow) instead of being dropped (deep)."""
        return self.visual_mode == "shallow"

    def _kv(self, layer: int):
        """Layer `layer`'s key and value prompts, (heads, l, head_dim) each, or (None, None)."""
        t = self.tuned
        if t.kv_key is None:
            return None, None
        key = t.kv_key[layer]
        return key, (t.kv_value[layer] if t.kv_value is not None else key)
