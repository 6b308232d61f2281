"""E2VPT on Swin (docs/E2VPT-SPEC.md section 7): prompts per stage width, key-value prompts in every window."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer

from e2vpt.config import TrainConfig
from e2vpt.errors import BackboneError, ConfigError
from e2vpt.models.prompted import build_model
from e2vpt.models.pruning import prune_segments, prune_tokens, rewind, score_importance
from e2vpt.models.swin import PromptedSwin, prompted_swin_block

CLASSES = 5
DIMS = (16, 32, 64)  # stage widths of the tiny Swin below: 32x32 input, 4x4 patches, 8x8 -> 4x4 -> 2x2


def tiny_swin(window=4):
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=4, window_size=window, embed_dim=DIMS[0], depths=(2, 2, 2),
                           num_heads=(2, 2, 4), mlp_ratio=2.0, num_classes=0).eval()


def images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def frozen_features(backbone):
    return backbone.forward_head(backbone.forward_features(images()), pre_logits=True)


def test_blocks_cover_shifted_windows_padding_and_a_single_window():
    backbone = tiny_swin(window=3)  # 8x8 is not a multiple of 3: padded windows; 2x2: one window, no shift
    blocks = [b for s in backbone.layers for b in s.blocks]
    assert any(any(b.shift_size) for b in blocks) and any(b.attn_mask is not None for b in blocks)


@pytest.mark.parametrize("window", [4, 3])
def test_every_block_restated_without_prompts_equals_timm_block(window):
    """The re-stated attention branch (shift, padding, windows, relative bias, shift mask) is timm's."""
    backbone = tiny_swin(window)
    x = backbone.patch_embed(images())
    for stage in backbone.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            ours, prompt_out = prompted_swin_block(block, x, None, None, None)
            assert prompt_out is None
            assert torch.allclose(ours, block(x), atol=1e-5)
            x = block(x)


def test_every_prompt_pruned_equals_frozen_backbone_exactly():
    backbone = tiny_swin()
    model = PromptedSwin(backbone, CLASSES, prompt_len=4, visual="deep", kv_len=0, segments=4)
    t = model.tuned
    assert not torch.allclose(model.forward_features(images()), frozen_features(backbone), atol=1e-4)
    model.set_masks(torch.zeros_like(t.token_mask), t.segment_mask)
    assert torch.equal(model.forward_features(images()), frozen_features(backbone))


def test_linear_probe_equals_backbone_and_kv_prompts_change_it():
    backbone = tiny_swin()
    assert torch.equal(PromptedSwin(backbone, CLASSES, visual="none").forward_features(images()),
                       frozen_features(backbone))
    kv = PromptedSwin(backbone, CLASSES, visual="none", kv_len=2)
    assert not torch.allclose(kv.forward_features(images()), frozen_features(backbone), atol=1e-4)


def reference_window_attention(block, x, prompts, key_prompt, value_prompt):
    """Hand-written attention branch of a block whose windows tile the map: cyclic shift, then per
    window an explicit softmax over [kv prompts; visual prompts; window tokens], the relative bias and
    the shifted-window mask applying between window tokens only, then the shift undone."""
    B, H, W, C = x.shape
    ws, shift = block.window_size[0], block.shift_size
    heads, hd = block.attn.num_heads, C // block.attn.num_heads
    h = torch.roll(block.norm1(x), (-shift[0], -shift[1]), (1, 2))
    p = block.norm1(prompts)
    n, l = prompts.shape[1], key_prompt.shape[1]
    out = torch.zeros_like(x)
    bias = block.attn._get_rel_pos_bias()[0]  # (heads, area, area)
    for b in range(B):
        windows = [(r, c) for r in range(0, H, ws) for c in range(0, W, ws)]  # timm's window order
        for index, (r, c) in enumerate(windows):
            tokens = torch.cat([p[b], h[b, r:r + ws, c:c + ws].reshape(-1, C)])  # (n + area, C)
            q, k, v = block.attn.qkv(tokens).reshape(-1, 3, heads, hd).permute(1, 2, 0, 3)
            k = torch.cat([key_prompt, k], 1)
            v = torch.cat([value_prompt, v], 1)
            logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
            logits[:, n:, l + n:] += bias
            if block.attn_mask is not None:
                logits[:, n:, l + n:] += block.attn_mask[index]
            o = (logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, C)
            out[b, r:r + ws, c:c + ws] = block.attn.proj(o)[n:].reshape(ws, ws, C)
    return torch.roll(out, shift, (1, 2))


@pytest.mark.parametrize("index", [0, 1], ids=["window", "shifted-window"])
def test_prompted_window_attention_matches_a_hand_written_reference(index):
    backbone = tiny_swin()
    block = backbone.layers[0].blocks[index]
    assert bool(any(block.shift_size)) == (index == 1)
    x = backbone.patch_embed(images(2))
    g = torch.Generator().manual_seed(3)
    prompts = torch.randn(2, 3, DIMS[0], generator=g)
    key, value = torch.randn(2, 2, 8, generator=g), torch.randn(2, 2, 8, generator=g)
    ours, _ = prompted_swin_block(block, x, prompts, key, value)
    expected = x + reference_window_attention(block, x, prompts, key, value)
    expected = expected + block.mlp(block.norm2(expected))
    assert torch.allclose(ours, expected, atol=1e-5)


def test_a_visual_prompt_acts_in_every_window_like_its_own_key_and_value():
    """In a shifted block, a visual prompt is seen by every token of every window, with no bias and no
    shift mask: exactly a key-value prompt made of its key and value projections."""
    backbone = tiny_swin()
    block = backbone.layers[0].blocks[1]
    assert any(block.shift_size) and block.attn_mask is not None
    x = backbone.patch_embed(images(2))
    prompts = torch.randn(2, 3, DIMS[0], generator=torch.Generator().manual_seed(4))[:1].expand(2, -1, -1)
    with_visual, _ = prompted_swin_block(block, x, prompts, None, None)
    heads = block.attn.num_heads
    _, k, v = block.attn.qkv(block.norm1(prompts[0])).reshape(3, 3, heads, -1).permute(1, 2, 0, 3)
    with_kv, _ = prompted_swin_block(block, x, None, k, v)
    assert torch.allclose(with_visual, with_kv, atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "vpt-shallow", "vpt-deep", "e2vpt", "full"])
def test_only_tuned_tensors_get_gradients(method):
    cfg = TrainConfig(method=method, prompt_len=3, kv_len=2, segments=4)
    model = build_model(cfg, tiny_swin(), CLASSES)
    assert isinstance(model, PromptedSwin)
    model.train()
    F.cross_entropy(model(images()), torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        if method == "full":
            assert p.grad is not None, name
        elif name.startswith("tuned."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    names = {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("tuned.")}
    assert names == {"linear": {"head"}, "full": {"head"}, "vpt-shallow": {"head", "visual"},
                     "vpt-deep": {"head", "visual"}, "e2vpt": {"head", "visual", "kv_key", "kv_value"}}[method]


def test_prompts_take_each_stage_width_and_count_in_closed_form():
    p, l = 3, 2
    model = PromptedSwin(tiny_swin(), CLASSES, prompt_len=p, visual="deep", kv_len=l, segments=4)
    widths = [d for d in DIMS for _ in range(2)]
    assert [tuple(v.shape) for v in model.tuned.visual] == [(p, d) for d in widths]
    head = DIMS[-1] * CLASSES + CLASSES
    assert model.tuned_param_count() == p * sum(widths) + 2 * l * sum(widths) + head
    assert model.tuned_param_count() == sum(x.numel() for n, x in model.named_parameters() if n.startswith("tuned."))
    shallow = PromptedSwin(tiny_swin(), CLASSES, prompt_len=p, visual="shallow")
    assert shallow.tuned_param_count(include_head=False) == p * DIMS[0]
    shared = PromptedSwin(tiny_swin(), CLASSES, prompt_len=0, visual="none", kv_len=l, kv_shared=True)
    assert shared.tuned_param_count(include_head=False) == l * sum(widths)


def test_shallow_prompts_reach_every_block_of_the_first_stage_only():
    model = PromptedSwin(tiny_swin(), CLASSES, prompt_len=2, visual="shallow")
    frozen = frozen_features(model.backbone)
    assert not torch.allclose(model.forward_features(images()), frozen, atol=1e-4)
    F.cross_entropy(model(images()), torch.tensor([0, 1, 2])).backward()
    assert model.tuned.visual[0].grad.abs().sum() > 0 and len(model.tuned.visual) == 1


def test_pruning_scores_prunes_and_rewinds_like_on_a_vit():
    torch.manual_seed(0)
    model = PromptedSwin(tiny_swin(), CLASSES, prompt_len=4, visual="deep", kv_len=2, segments=4)
    initial = model.tuned_state()
    with torch.no_grad():
        for v in model.tuned.visual:
            v.add_(1.0)  # "training" moved every prompt
    data = torch.utils.data.TensorDataset(images(6), torch.tensor([0, 1, 2, 3, 4, 0]))
    importance = score_importance(model, torch.utils.data.DataLoader(data, batch_size=3), torch.device("cpu"))
    t = model.tuned
    assert importance.token.shape == (6, 4) and importance.segment.shape == (6, 4, 4) and importance.images == 6
    assert bool((importance.token > 0).all())
    before = model.tuned_param_count()
    token_mask = prune_tokens(t.token_mask, importance.token, 0.5, "layer")
    segment_mask = prune_segments(token_mask, t.segment_mask, importance.segment, 0.25, 1)
    model.set_masks(token_mask, segment_mask)
    rewind(model, initial, "init")
    assert model.tuned_param_count() < before
    for i, v in enumerate(t.visual):
        channel = model.channel_mask(i)
        assert torch.equal(v[channel == 0], torch.zeros_like(v[channel == 0]))  # pruned stays pruned
        assert torch.equal(v[channel == 1], initial[f"tuned.visual.{i}"][channel == 1])  # survivors rewound
    assert torch.equal(t.kv_key[3], initial["tuned.kv_key.3"])
    pruned_out = model.forward_features(images())
    assert torch.isfinite(pruned_out).all()


def test_importance_is_the_mean_per_image_gate_gradient_and_pruned_pieces_are_nan():
    """S = mean over images of |dL(x)/d gate|. A gate multiplies its prompt values, so dL/d gate is the
    sum, over the token's (or segment's) channels, of value x dL/d value: the reference below takes
    that from the prompts' own gradients, one image at a time, with no gate in the model at all."""
    model = PromptedSwin(tiny_swin(), CLASSES, prompt_len=3, visual="deep", kv_len=2, segments=4)
    t = model.tuned
    token_mask = torch.ones_like(t.token_mask)
    token_mask[0, 1] = 0
    token_mask[4] = 0  # a block with every prompt pruned runs timm's own block: no gate reaches it
    segment_mask = torch.ones_like(t.segment_mask)
    segment_mask[2, 0, 3] = 0
    segment_mask[5, 2, :2] = 0
    model.set_masks(token_mask, segment_mask)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    scores = score_importance(model, loader, torch.device("cpu"), "abs")
    signed = score_importance(model, loader, torch.device("cpu"), "signed")

    model.eval()
    token_ref, segment_ref = torch.zeros(6, 3), torch.zeros(6, 3, 4)
    signed_token_ref = torch.zeros(6, 3)
    for b in range(4):
        loss = F.cross_entropy(model(x[b:b + 1]), y[b:b + 1])
        grads = torch.autograd.grad(loss, list(t.visual), allow_unused=True)  # block 4 reads no prompt
        for i, (value, grad) in enumerate(zip(t.visual, grads)):
            per_channel = (value * grad).detach() if grad is not None else torch.zeros_like(value)  # (p, width)
            per_segment = torch.zeros(3, 4).index_add_(1, model.channel_segment_of(i), per_channel)
            token_ref[i] += per_channel.sum(1).abs() / 4
            signed_token_ref[i] += per_channel.sum(1) / 4
            segment_ref[i] += per_segment.abs() / 4
    alive_tokens = token_mask > 0
    alive_segments = (segment_mask > 0) & alive_tokens[..., None]
    assert scores.images == 4 and scores.token.shape == (6, 3) and scores.segment.shape == (6, 3, 4)
    assert torch.isnan(scores.token[~alive_tokens]).all() and torch.isfinite(scores.token[alive_tokens]).all()
    assert torch.isnan(scores.segment[~alive_segments]).all() and torch.isfinite(scores.segment[alive_segments]).all()
    assert bool((scores.token[alive_tokens] > 0).all())
    assert torch.allclose(scores.token[alive_tokens], token_ref[alive_tokens], rtol=1e-4, atol=1e-7)
    assert torch.allclose(scores.segment[alive_segments], segment_ref[alive_segments], rtol=1e-4, atol=1e-7)
    assert torch.allclose(signed.token[alive_tokens], signed_token_ref[alive_tokens], rtol=1e-4, atol=1e-7)
    # a token's signed score is the sum of its surviving segments' (pruned ones are NaN)
    assert torch.allclose(signed.segment.nansum(-1)[alive_tokens], signed.token[alive_tokens], rtol=1e-4, atol=1e-7)


def test_saved_tuned_state_reloads_and_refuses_another_swin():
    a = PromptedSwin(tiny_swin(), CLASSES, prompt_len=3, kv_len=2, segments=4)
    b = PromptedSwin(tiny_swin(), CLASSES, prompt_len=3, kv_len=2, segments=4)
    b.reset_tuned(torch.Generator().manual_seed(9))
    b.load_tuned_state(a.tuned_state())
    assert torch.equal(a(images()), b(images()))
    other = PromptedSwin(tiny_swin(), CLASSES, prompt_len=5, kv_len=2, segments=4)
    with pytest.raises(BackboneError, match=r"saved tensor 'tuned\.token_mask' has shape \(6, 3\), this model "
                                            r"expects \(6, 5\); the weights come from another configuration"):
        other.load_tuned_state(a.tuned_state())


def test_too_many_segments_for_the_narrowest_stage_is_a_clear_error():
    with pytest.raises(ConfigError, match="narrowest stage"):
        PromptedSwin(tiny_swin(), CLASSES, prompt_len=2, segments=32)


def test_a_swin_run_trains_prunes_records_and_reloads(tmp_path, monkeypatch):
    """The whole engine (trainer, pruning record, saved weights, reload, analysis) on a Swin backbone."""
    import e2vpt.training.build as build_module
    from e2vpt import train
    from e2vpt.analysis.pruning_views import importance_maps, pruning_trajectory
    from e2vpt.training.build import evaluate_run

    monkeypatch.setattr(build_module, "create_backbone", lambda *args, **kwargs: tiny_swin())
    config = TrainConfig(method="e2vpt", backbone="tiny-swin", pretrained=False, dataset="digits", epochs=1,
                         retrain_epochs=1, prune_rounds=1, prompt_len=4, kv_len=2, batch_size=64)
    summary = train(config, tmp_path / "swin", quiet=True)
    record = json.loads((tmp_path / "swin" / "pruning.json").read_text())
    rounds = record["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["tuned_params"] < rounds[0]["tuned_params"]
    assert torch.tensor(rounds[1]["token_mask"]).shape == (6, 4) and rounds[1]["kept_tokens"] == 12
    assert summary["test_acc"] > 0.2  # 10 classes; random-init tiny Swin, prompts and head only
    assert evaluate_run(tmp_path / "swin", device="cpu")["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-9)
    maps = importance_maps(tmp_path / "swin")
    assert [m["round"] for m in maps] == [0, 1] and maps[0]["token_scores"] is None  # round 0 is not scored
    scores = maps[1]["token_scores"]
    assert scores.shape == (6, 4) and np.isfinite(scores).all() and (scores > 0).all()  # all alive when scored
    assert np.array_equal(maps[1]["token_mask"], np.array(rounds[1]["token_mask"]))
    assert np.nanmax(maps[1]["token_scores_normalised"]) == 1.0
    trajectory = pruning_trajectory(tmp_path / "swin")
    assert list(trajectory["rounds"]["round"]) == [0, 1]
    assert list(trajectory["rounds"]["kept_tokens"]) == [rounds[0]["kept_tokens"], 12]
    layers = trajectory["layers"]
    assert len(layers) == 2 * 6 and layers[layers["round"] == 1]["kept_fraction"].sum() == pytest.approx(12 / 4)
    lifetimes = trajectory["lifetimes"]
    assert len(lifetimes) == 6 * 4 and int((lifetimes["pruned_in_round"] == 1).sum()) == 24 - 12


def test_attention_views_are_refused_on_swin_with_the_reason():
    from e2vpt.errors import BackboneError

    model = PromptedSwin(tiny_swin(), CLASSES, prompt_len=2, kv_len=1)
    with pytest.raises(BackboneError, match="need a ViT.*shifted windows"):
        model.forward_features(images(1), record_attention=[])
