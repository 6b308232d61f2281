"""Properties of the prompted ViT, read as a specification of docs/E2VPT-SPEC.md sections 1-5."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from e2vpt.config import TrainConfig
from e2vpt.errors import BackboneError, ConfigError
from e2vpt.methods import METHODS
from e2vpt.models.base import PromptTuned, segment_of_channel
from e2vpt.models.prompted import build_model
from e2vpt.models.pruning import prune_segments, prune_tokens, rewind, score_importance
from e2vpt.models.swin import PromptedSwin
from e2vpt.models.vit import PromptedViT

DIM, DEPTH, HEADS, CLASSES = 32, 2, 4, 5


def tiny_vit(depth=DEPTH, reg_tokens=0, global_pool="token", class_token=True):
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=depth, num_heads=HEADS, mlp_ratio=2.0,
                             num_classes=0, reg_tokens=reg_tokens, global_pool=global_pool,
                             class_token=class_token, qkv_bias=True).eval()


def images(n=3):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def model_for(method, **overrides):
    cfg = TrainConfig(method=method, prompt_len=overrides.pop("prompt_len", 6), kv_len=overrides.pop("kv_len", 3),
                      segments=overrides.pop("segments", 4), **overrides)
    return build_model(cfg, tiny_vit(), CLASSES)


@pytest.mark.parametrize("kwargs", [dict(), dict(reg_tokens=2), dict(global_pool="avg")])
def test_every_prompt_pruned_equals_frozen_backbone(kwargs):
    backbone = tiny_vit(**kwargs)
    expected = backbone.forward_head(backbone.forward_features(images()), pre_logits=True)
    model = PromptedViT(backbone, CLASSES, prompt_len=5, visual="deep", kv_len=0, segments=4)
    t = model.tuned
    model.set_masks(torch.zeros_like(t.token_mask), t.segment_mask)
    assert torch.allclose(model.forward_features(images()), expected, atol=1e-6)


def test_prompt_tuned_is_an_abstract_contract_both_backbones_fulfil_with_one_signature():
    """A new backbone family subclasses `PromptTuned` and must define exactly these three methods; the
    shared ones (masks, counts, saving) have one signature whatever the backbone."""
    assert PromptTuned.__abstractmethods__ == {"forward_features", "reset_tuned", "channel_segment_of"}
    with pytest.raises(TypeError, match="abstract"):
        PromptTuned()

    class WithoutSegments(PromptTuned):
        def forward_features(self, images, token_gate=None, segment_gate=None):
            return images

        def reset_tuned(self, generator=None):
            pass

    with pytest.raises(TypeError, match="channel_segment_of"):
        WithoutSegments()
    for name in ("forward_features", "reset_tuned", "channel_segment_of", "channel_mask", "zero_pruned",
                 "kept_prompt_entries", "set_masks", "tuned_param_count", "forward"):
        assert inspect.signature(getattr(PromptedViT, name)) == inspect.signature(getattr(PromptTuned, name)), name
        assert inspect.signature(getattr(PromptedSwin, name)) == inspect.signature(getattr(PromptTuned, name)), name


def test_without_prompts_model_equals_backbone_and_prompts_change_it():
    backbone = tiny_vit()
    expected = backbone.forward_head(backbone.forward_features(images()), pre_logits=True)
    linear = PromptedViT(backbone, CLASSES, visual="none")
    assert torch.allclose(linear.forward_features(images()), expected, atol=1e-6)
    deep = PromptedViT(backbone, CLASSES, prompt_len=4, visual="deep", kv_len=2)
    assert not torch.allclose(deep.forward_features(images()), expected, atol=1e-4)


def reference_forward(backbone, prompts, key_prompts, value_prompts):
    """Hand-written E2VPT forward: explicit softmax attention over [K_prompt; K] and [V_prompt; V]."""
    x = backbone._pos_embed(backbone.patch_embed(images()))
    n_prefix = backbone.num_prefix_tokens
    for i, blk in enumerate(backbone.blocks):
        x = torch.cat([x[:, :n_prefix], prompts[i].expand(x.shape[0], -1, -1), x[:, n_prefix:]], 1)
        h = blk.norm1(x)
        B, N, C = h.shape
        qkv = blk.attn.qkv(h).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        k = torch.cat([key_prompts[i].expand(B, -1, -1, -1), k], 2)
        v = torch.cat([value_prompts[i].expand(B, -1, -1, -1), v], 2)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(C // HEADS)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + blk.attn.proj(out)
        x = x + blk.mlp(blk.norm2(x))
        x = torch.cat([x[:, :n_prefix], x[:, n_prefix + prompts[i].shape[0]:]], 1)
    return backbone.norm(x)[:, 0]


@pytest.mark.parametrize("shared", [False, True])
def test_kv_prompts_act_exactly_as_concatenated_keys_and_values(shared):
    backbone = tiny_vit()
    model = PromptedViT(backbone, CLASSES, prompt_len=3, visual="deep", kv_len=2, kv_shared=shared)
    t = model.tuned
    values = t.kv_key if shared else t.kv_value
    expected = reference_forward(backbone, t.visual, t.kv_key, values)
    assert torch.allclose(model.forward_features(images()), expected, atol=1e-5)


def test_kv_prompts_do_not_add_tokens_and_queries_are_unchanged():
    backbone = tiny_vit()
    model = PromptedViT(backbone, CLASSES, visual="none", kv_len=3)
    seen = []
    hook = backbone.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(images())
    hook.remove()
    assert seen[0][1] == 1 + 16  # class token + 4x4 patches: KV prompts add context, not tokens


def test_shallow_prompts_enter_the_first_layer_and_flow_through():
    backbone = tiny_vit()
    model = PromptedViT(backbone, CLASSES, prompt_len=3, visual="shallow")
    lengths = []
    hooks = [b.mlp.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1])) for b in backbone.blocks]
    model(images())
    for h in hooks:
        h.remove()
    assert model.tuned.visual.shape == (1, 3, DIM)
    assert lengths == [1 + 3 + 16] * DEPTH


def test_visual_prompt_init_uses_vpt_xavier_bound():
    model = PromptedViT(tiny_vit(), CLASSES, prompt_len=50, visual="deep")
    bound = math.sqrt(6.0 / (3 * 4 * 4 + DIM))
    v = model.tuned.visual
    assert v.abs().max() <= bound and v.abs().max() > 0.9 * bound


@pytest.mark.parametrize("method", METHODS)
def test_only_tuned_tensors_get_gradients(method):
    model = model_for(method)
    model(images()).sum().backward()
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        if method == "full":
            assert p.requires_grad
        elif name.startswith("tuned."):
            assert p.requires_grad and has_grad, name
        else:
            assert not p.requires_grad and p.grad is None, name
    trainable = {n for n, _ in model.trainable_named_parameters()}
    assert all(n.startswith("tuned.") for n in trainable) or method == "full"


def closed_form_count(method, p=6, l=3, n=DEPTH, d=DIM, classes=CLASSES, backbone=None):
    head = (d + 1) * classes
    return {"linear": head, "full": backbone + head, "vpt-shallow": p * d + head, "vpt-deep": n * p * d + head,
            "e2vpt-noprune": n * p * d + 2 * n * l * d + head, "e2vpt": n * p * d + 2 * n * l * d + head}[method]


@pytest.mark.parametrize("method", METHODS)
def test_tuned_parameter_count_matches_closed_form(method):
    model = model_for(method)
    expected = closed_form_count(method, backbone=model.backbone_param_count())
    assert model.tuned_param_count() == expected
    assert model.tuned_param_count() == sum(p.numel() for _, p in model.trainable_named_parameters())


def test_tuned_parameter_count_after_pruning():
    model = model_for("e2vpt", segments=4)
    t = model.tuned
    token_mask = torch.ones_like(t.token_mask)
    token_mask[0, :2] = 0  # two tokens of layer 0
    segment_mask = torch.ones_like(t.segment_mask)
    segment_mask[1, 0, :3] = 0  # three of four segments of layer 1, token 0
    model.set_masks(token_mask, segment_mask)
    d, seg = DIM, DIM // 4
    expected_visual = DEPTH * 6 * d - 2 * d - 3 * seg
    assert model.tuned_param_count(include_head=False) == expected_visual + 2 * DEPTH * 3 * d


def test_kv_shared_halves_kv_parameters():
    separate = model_for("e2vpt-noprune").tuned_param_count()
    shared = model_for("e2vpt-noprune", kv_shared=True).tuned_param_count()
    assert separate - shared == DEPTH * 3 * DIM


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_segment_layouts_partition_channels(layout):
    seg = segment_of_channel(30, 4, layout)
    assert sorted(set(seg.tolist())) == [0, 1, 2, 3]
    counts = torch.bincount(seg)
    assert counts.max() - counts.min() <= 1
    if layout == "interleaved":
        assert seg[:5].tolist() == [0, 1, 2, 3, 0]
    else:
        assert seg.tolist() == sorted(seg.tolist())


def test_pruned_tokens_are_removed_from_the_sequence():
    backbone = tiny_vit()
    model = PromptedViT(backbone, CLASSES, prompt_len=4, visual="deep", segments=4)
    mask = torch.ones_like(model.tuned.token_mask)
    mask[0, :3] = 0
    mask[1, :] = 0
    model.set_masks(mask, model.tuned.segment_mask)
    lengths = []
    hooks = [b.mlp.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1])) for b in backbone.blocks]
    model(images())
    for h in hooks:
        h.remove()
    assert lengths == [1 + 1 + 16, 1 + 16]  # a fully pruned layer runs the frozen block on the plain sequence


def test_rewind_restores_survivors_and_keeps_pruned_pruned():
    model = model_for("e2vpt")
    initial = model.tuned_state()
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(1.0)  # "training"
    t = model.tuned
    token_mask = torch.ones_like(t.token_mask)
    token_mask[:, 1] = 0
    segment_mask = torch.ones_like(t.segment_mask)
    segment_mask[0, 0, 2] = 0
    model.set_masks(token_mask, segment_mask)
    rewind(model, initial, "init")
    channel_mask = torch.stack([model.channel_mask(layer) for layer in range(DEPTH)])
    assert channel_mask[0, 0].tolist() == [float(c % 4 != 2) for c in range(DIM)]  # interleaved segment 2
    assert not channel_mask[:, 1].any()
    assert torch.equal(t.visual[channel_mask > 0], initial["tuned.visual"][channel_mask > 0])
    assert bool((t.visual[channel_mask == 0] == 0).all())
    assert torch.equal(t.kv_key, initial["tuned.kv_key"]) and torch.equal(t.head.weight, initial["tuned.head.weight"])
    assert torch.equal(t.token_mask, token_mask)
    rewind(model, initial, "reinit", torch.Generator().manual_seed(5))
    assert not torch.equal(t.kv_key, initial["tuned.kv_key"])
    assert bool((t.visual[channel_mask == 0] == 0).all()) and torch.equal(t.token_mask, token_mask)


def per_image_loader(n=6):
    torch.manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, 16, 16), torch.randint(0, CLASSES, (n,)))
    return torch.utils.data.DataLoader(data, batch_size=3)


def test_importance_is_mean_absolute_per_image_mask_gradient():
    model = model_for("e2vpt", segments=4)
    imp = score_importance(model, per_image_loader(), torch.device("cpu"), "abs")
    # reference: one image at a time, gradient w.r.t. a shared gate of ones
    total = torch.zeros_like(model.tuned.token_mask)
    for x, y in per_image_loader().dataset:
        gate = torch.ones(1, *model.tuned.token_mask.shape, requires_grad=True)
        loss = F.cross_entropy(model(x[None], token_gate=gate), y[None])
        total += torch.autograd.grad(loss, gate)[0][0].abs()
    assert torch.allclose(imp.token, total / 6, atol=1e-6)
    assert imp.segment.shape == model.tuned.segment_mask.shape and imp.images == 6
    # a token gate's gradient is the sum of its segments' gradients (signed)
    signed = score_importance(model, per_image_loader(), torch.device("cpu"), "signed")
    assert torch.allclose(signed.segment.sum(-1), signed.token, atol=1e-6)


def test_prune_tokens_removes_lowest_and_keeps_at_least_one():
    mask = torch.ones(2, 4)
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [8.0, 0.5, 7.0, 6.0]])
    new = prune_tokens(mask, scores, 0.25, "layer")
    assert new.sum() == 6 and new[1, 1] == 0 and new[0, 1] == 0
    shared = prune_tokens(mask, scores, 0.5, "shared")
    assert (shared[0] == shared[1]).all() and shared[0].tolist() == [1, 0, 1, 0]
    assert prune_tokens(mask, scores, 0.99, "layer").sum() == 1


def test_prune_segments_respects_minimum_per_token():
    token_mask = torch.ones(1, 2)
    segment_mask = torch.ones(1, 2, 4)
    scores = torch.tensor([[[1.0, 2, 3, 4], [10, 20, 30, 40]]])
    new = prune_segments(token_mask, segment_mask, scores, 0.5, min_segments=2)
    assert new[0, 0].tolist() == [0, 0, 1, 1]  # the weakest token keeps its minimum
    assert new[0, 1].tolist() == [0, 0, 1, 1]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="prompt.len"):
        TrainConfig(method="vpt-deep", prompt_len=0)
    with pytest.raises(ConfigError, match="prune.ratio"):
        TrainConfig(prune_ratio=1.0)
    with pytest.raises(ConfigError, match="embedding dimension"):
        PromptedViT(tiny_vit(), CLASSES, prompt_len=2, segments=DIM + 1)
    with pytest.raises(BackboneError, match="VisionTransformer"):
        PromptedViT(torch.nn.Linear(2, 2), CLASSES)
