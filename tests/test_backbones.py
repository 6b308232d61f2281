"""Backbones by timm name: self-supervised checkpoints get their own pooling and normalisation."""

import pytest
import torch

from e2vpt.config import TrainConfig
from e2vpt.errors import BackboneError, ConfigError
from e2vpt.models.backbones import create_backbone, data_config, resolve_global_pool
from e2vpt.models.prompted import build_model


@pytest.mark.parametrize("name, pool", [("vit_base_patch16_224.mae", "avg"), ("vit_large_patch16_224.mae", "avg"),
                                        ("vit_base_patch16_224.augreg_in21k", None), ("vit_base_patch16_224", None)])
def test_auto_pooling_follows_the_checkpoint(name, pool):
    assert resolve_global_pool(name) == pool
    assert resolve_global_pool(name, "token") == "token"


def test_mae_backbone_pools_patch_tokens_with_imagenet_normalisation():
    """An MAE ViT (random weights here: no hub) reads the mean of its patch tokens through its own
    pretrained final norm (no new fc_norm), and images are normalised with the checkpoint's mean/std."""
    mae = create_backbone("vit_base_patch16_224.mae", pretrained=False, img_size=32)
    assert mae.global_pool == "avg" and isinstance(mae.fc_norm, torch.nn.Identity)
    assert isinstance(mae.norm, torch.nn.LayerNorm)
    assert data_config(mae)["mean"] == pytest.approx((0.485, 0.456, 0.406), abs=1e-3)
    supervised = create_backbone("vit_base_patch16_224.augreg_in21k", pretrained=False, img_size=32)
    assert supervised.global_pool == "token" and data_config(supervised)["mean"] == pytest.approx((0.5, 0.5, 0.5))


def test_avg_pooling_ignores_prompts_and_token_pooling_reads_cls():
    backbone = create_backbone("demo", global_pool="avg")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = backbone.norm(backbone.blocks(backbone._pos_embed(backbone.patch_embed(images))))
    expected = x[:, 1:].mean(1)  # patch tokens only, after the final norm
    model = build_model(TrainConfig(method="vpt-deep", prompt_len=3), backbone, 4)
    t = model.tuned
    model.set_masks(torch.zeros_like(t.token_mask), t.segment_mask)  # every prompt pruned: the frozen model
    assert torch.allclose(model.forward_features(images), expected, atol=1e-5)
    token = create_backbone("demo", global_pool="token")
    assert torch.allclose(token.forward_head(token.forward_features(images), pre_logits=True),
                          token.forward_features(images)[:, 0], atol=1e-6)


def test_impossible_pooling_is_a_clear_error():
    with pytest.raises(BackboneError, match="no \\[CLS\\] token"):
        create_backbone("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, global_pool="token")
    with pytest.raises(ConfigError, match="global.pool"):
        TrainConfig(global_pool="max")


def test_swin_names_build_and_other_families_are_refused():
    swin = create_backbone("swin_tiny_patch4_window7_224", pretrained=False, img_size=32)
    assert type(swin).__name__ == "SwinTransformer"
    with pytest.raises(BackboneError, match="not a timm VisionTransformer or SwinTransformer"):
        create_backbone("resnet18", pretrained=False)
