"""`build_model`: the prompted model that a method's row in the registry (`e2vpt.methods`) describes.

One engine for every method: the row says what is trained (visual prompts and where they go,
key-value prompts, the backbone; the head always) and whether it prunes. All share the model class
(`PromptedViT`, or `PromptedSwin` on a Swin backbone), data, loop and logging, so comparisons are fair.
"""

from __future__ import annotations

from timm.models.swin_transformer import SwinTransformer

from ..config import TrainConfig
from .base import PromptTuned
from .swin import PromptedSwin
from .vit import PromptedViT


def build_model(config: TrainConfig, backbone, num_classes: int) -> PromptTuned:
    """The prompted model for this backbone (ViT or Swin) with the parameters `config.method` trains."""
    spec = config.spec
    swin = isinstance(backbone, SwinTransformer)
    prompt_len, kv_len = config.prompts_trained
    return (PromptedSwin if swin else PromptedViT)(
        backbone,
        num_classes=num_classes,
        prompt_len=prompt_len,
        visual=spec.visual,
        kv_len=kv_len,
        kv_shared=config.kv_shared,
        segments=config.segments,
        segment_layout=config.segment_layout,
        prompt_dropout=config.prompt_dropout,
        train_backbone=spec.train_backbone,
        pruned_tokens=config.pruned_tokens,
        mask_values=config.mask_scope if config.train_masks and spec.prune else "none",
        **({} if swin else {"avg_pool": config.avg_pool}),
    )
