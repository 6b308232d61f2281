"""The three recipes (docs/RECIPES.md): `official` reproduces the official E2VPT code, `paper` its text,
`studio` this project's choices; explicit settings override a recipe and config.json records the result."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from e2vpt.cli import build_parser, config_from_args
from e2vpt.config import PRESETS, RECIPES, TrainConfig, preset
from e2vpt.models.prompted import build_model
from e2vpt.models.vit import PromptedViT
from e2vpt.models.pruning import score_importance
from e2vpt.models.swin import PromptedSwin

import procs  # tests/procs.py: `python -m e2vpt` forked from a preloaded server

DIM, DEPTH, HEADS, CLASSES, P, L, R = 32, 2, 4, 5, 4, 2, 4


def tiny_vit(global_pool="token"):
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.0,
                             num_classes=0, qkv_bias=True, global_pool=global_pool, fc_norm=False).eval()


def images(n=3, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def official_model(global_pool="token", **overrides):
    config = TrainConfig.from_dict({"recipe": "official", "method": "e2vpt", "prompt_len": P, "kv_len": L,
                                    "segments": R, **overrides})
    return build_model(config, tiny_vit(global_pool), CLASSES).eval()  # eval: no prompt dropout


def official_reference(backbone, prompts, kv, token_mask, segment_mask, x_images, pool="token"):
    """The official forward, written out by hand from `vit_prompt_VK.py` / `vit_changeVK.py`: every layer
    reads [CLS ; prompts x tiled segment mask x token mask ; patches], a pruned token stays in the
    sequence as zeros, one K=V tensor per layer is prepended to each head's keys and values after the
    projections, and [CLS] is read after the final norm."""
    x = backbone._pos_embed(backbone.patch_embed(x_images))
    B = x.shape[0]
    head_dim = DIM // HEADS
    tiled = segment_mask.repeat(1, DIM // R)  # the official `.repeat`: channel c belongs to segment c mod R
    for i, blk in enumerate(backbone.blocks):
        prompt = prompts[i] * tiled * token_mask[:, None]
        x = torch.cat([x[:, :1], prompt.expand(B, -1, -1), x[:, 1 + (P if i else 0):]], 1)
        h = blk.norm1(x)
        N = h.shape[1]
        q, k, v = blk.attn.qkv(h).reshape(B, N, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        k = torch.cat([kv[i].expand(B, -1, -1, -1), k], 2)
        v = torch.cat([kv[i].expand(B, -1, -1, -1), v], 2)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).softmax(-1)
        x = x + blk.attn.proj((attention @ v).transpose(1, 2).reshape(B, N, DIM))
        x = x + blk.mlp(blk.norm2(x))
    assert x.shape[1] == 1 + P + 16  # the sequence never shrinks
    if pool == "avg":  # the official MAE head: every token after [CLS], prompts included, then a fresh LayerNorm
        return F.layer_norm(x[:, 1:].mean(1), (DIM,), eps=1e-6)
    return backbone.norm(x)[:, 0]


def test_official_recipe_resolves_every_choice_and_explicit_values_win():
    config = TrainConfig.from_dict({"recipe": "official"})
    assert (config.kv_shared, config.mask_scope, config.importance, config.rewind, config.pruned_tokens,
            config.train_masks, config.prompt_dropout) == (True, "shared", "signed", "reinit", "zero", True, 0.1)
    assert TrainConfig.from_dict({"recipe": "official", "importance": "abs"}).importance == "abs"
    args = build_parser().parse_args(["train", "--recipe", "official", "--no-train-masks", "--pruned-tokens", "remove"])
    config = config_from_args(args)
    assert (config.recipe, config.train_masks, config.pruned_tokens, config.rewind) == ("official", False, "remove",
                                                                                         "reinit")
    # a run's config.json holds the resolved values, so reading it back changes nothing
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({}) == TrainConfig() and RECIPES["studio"] == {}
    assert {preset(name).recipe for name in PRESETS} == {"studio", "paper", "official"}


@pytest.mark.parametrize("pool", ["token", "avg"], ids=["[CLS]", "MAE pooling"])
@pytest.mark.parametrize("trained", [False, True], ids=["0/1 masks, pruned token zeroed", "real-valued masks"])
def test_official_forward_equals_a_hand_written_reference(trained, pool):
    model = official_model(pool)
    t = model.tuned
    assert t.kv_value is None and t.token_mask_value.shape == (1, P) and t.segment_mask_value.shape == (1, P, R)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        if trained:  # what the first phase leaves: masks trained away from 1
            t.token_mask_value.copy_(torch.rand(1, P, generator=g) * 2 - 0.5)
            t.segment_mask_value.copy_(torch.rand(1, P, R, generator=g) * 2 - 0.5)
        else:  # after pruning: token 1 and segment (2, 3) pruned in every layer, the masks exact 0/1
            token_mask, segment_mask = torch.ones(DEPTH, P), torch.ones(DEPTH, P, R)
            token_mask[:, 1] = 0
            segment_mask[:, 2, 3] = 0
            model.set_masks(token_mask, segment_mask)
            model.train_mask_values(False)
    token = t.token_mask[0] * t.token_mask_value[0]
    segment = t.segment_mask[0] * t.segment_mask_value[0]
    expected = official_reference(model.backbone, t.visual, t.kv_key, token, segment, images(), pool)
    assert torch.allclose(model.forward_features(images()), expected, atol=1e-5)
    if not trained:  # zeroed is not removed: the zero token still yields keys and values (LayerNorm's bias)
        model.pruned_tokens = "remove"
        assert not torch.allclose(model.forward_features(images()), expected, atol=1e-4)


def test_official_importance_is_the_signed_gradient_at_the_trained_mask_values():
    model = official_model(prompt_dropout=0.0)
    t = model.tuned
    with torch.no_grad():
        t.token_mask_value.mul_(torch.linspace(0.3, 1.7, P))
        t.segment_mask_value.mul_(torch.linspace(1.5, 0.5, R))
    x, y = images(6, seed=2), torch.arange(6) % CLASSES
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    scores = score_importance(model, loader, torch.device("cpu"), "signed")
    loss = F.cross_entropy(model(x), y)  # mean over the images, as the official pass takes it
    g_token, g_segment = torch.autograd.grad(loss, [t.token_mask_value, t.segment_mask_value])
    # the shared mask's gradient is the sum over layers of each layer's share
    assert torch.allclose(scores.token.sum(0), g_token[0], atol=1e-6)
    assert torch.allclose(scores.segment.sum(0), g_segment[0], atol=1e-6)


def test_key_value_prompts_start_uniform_within_the_official_kaiming_bound():
    """kaiming_uniform_(a=0) on each layer's (heads, l, head_dim) tensor: fan-in l * head_dim."""
    torch.manual_seed(0)
    backbone = VisionTransformer(img_size=16, patch_size=4, embed_dim=192, depth=2, num_heads=3, num_classes=0)
    model = PromptedViT(backbone, CLASSES, prompt_len=1, kv_len=5)
    bound = math.sqrt(6 / (5 * 64))  # 0.137, as for ViT-B/16 at l = 5
    for kv in (model.tuned.kv_key, model.tuned.kv_value):
        assert kv.abs().max() <= bound and kv.abs().max() > 0.99 * bound
        assert abs(kv.mean()) < 0.05 * bound and abs(kv.std() / (bound / math.sqrt(3)) - 1) < 0.05
    swin = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                           num_classes=0)
    model = PromptedSwin(swin, CLASSES, prompt_len=1, kv_len=3)
    for layer, tensor in enumerate(model.tuned.kv_key):
        heads, length, head_dim = tensor.shape
        assert (heads, length) == (model.layer_heads[layer], 3)
        assert tensor.abs().max() <= math.sqrt(6 / (length * head_dim))


def test_trained_masks_learn_in_the_first_phase_only():
    model = official_model()
    t = model.tuned
    names = {n for n, _ in model.trainable_named_parameters()}
    assert {"tuned.token_mask_value", "tuned.segment_mask_value"} <= names
    model.train_mask_values(False)  # what every phase after pruning does
    names = {n for n, _ in model.trainable_named_parameters()}
    assert "tuned.token_mask_value" not in names and bool((t.token_mask_value == 1).all())
    studio = build_model(TrainConfig(prompt_len=P, kv_len=L, segments=R), tiny_vit(), CLASSES)
    assert studio.tuned.token_mask_value is None  # fixed 0/1 masks outside the official recipe


def run_cli(*args):
    return procs.run("train", "--backbone", "demo", "--dataset", "digits", "--epochs", "1", "--retrain-epochs", "1",
                     "--prune-rounds", "1", "--quiet", *args, timeout=600)


def official_count(n: int, pct: int) -> int:
    """The official code's count (`tune_vtab_PruningRewind_CVK.py`): int(n x pct / 100) pieces of n."""
    return int(n * pct / 100)


@pytest.mark.parametrize("prompts", [5, 8, 10, 32, 50])
def test_the_official_recipe_prunes_as_many_tokens_and_segments_as_the_official_code(prompts):
    from e2vpt.models.pruning import prune_segments, prune_tokens

    config = TrainConfig.from_dict({"recipe": "official"})
    differs = 0
    for pct in (10, 20, 25, 29, 30, 40, 50, 60, 70, 75, 90):
        scores = torch.rand(3, prompts, generator=torch.Generator().manual_seed(pct))
        tokens = prune_tokens(torch.ones(3, prompts), scores, pct / 100, config.mask_scope, count=config.prune_count)
        pruned = prompts - int(tokens[0].sum())
        assert pruned == min(official_count(prompts, pct), prompts - 1), (prompts, pct)
        assert bool((tokens == tokens[:1]).all())  # shared: the same positions in every layer
        segments = prune_segments(tokens, torch.ones(3, prompts, 16), torch.rand(3, prompts, 16), pct / 100, 4,
                                  config.mask_scope, per_token=True, count=config.prune_count)
        assert set(segments.sum(-1)[tokens > 0].tolist()) == {16 - min(official_count(16, pct), 12)}, (prompts, pct)
        rounded = prune_tokens(torch.ones(3, prompts), scores, pct / 100, "shared")  # studio's count
        differs += int(rounded[0].sum()) != int(tokens[0].sum())
    assert differs  # at some level rounding would prune another number: the count is really tested


@pytest.mark.slow  # a short training of the demo (about 35 s); studio's CLI runs are in test_cli.py
@pytest.mark.parametrize("recipe", ["official"])  # paper's flags: the next test; both train the same loop
def test_each_recipe_trains_on_digits_from_the_cli(tmp_path, recipe):
    # 30 % of 5 tokens and of 16 segments: the official code prunes int(1.5) = 1 token and int(4.8) = 4
    # segments of each token, where rounding would prune 2 and 5
    result = run_cli("--recipe", recipe, "--run-dir", str(tmp_path / "run"), "--prompt-len", "5",
                     "--prune-ratio", "0.3", "--segment-ratio", "0.3")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"] == recipe and all(config[k] == v for k, v in RECIPES[recipe].items())
    pruning = json.loads((tmp_path / "run" / "pruning.json").read_text())
    last = pruning["rounds"][-1]
    tokens, segments = torch.tensor(last["token_mask"]), torch.tensor(last["segment_mask"])
    assert tokens.sum(-1).tolist() == [5 - official_count(5, 30)] * tokens.shape[0]
    assert set((segments * tokens[..., None]).sum(-1)[tokens > 0].tolist()) == {16 - official_count(16, 30)}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_acc"] > 0.3  # 10 classes: it learned something in two short phases
    init = load_file(tmp_path / "run" / "init.safetensors")
    kv = init["tuned.kv_key"]
    assert kv.abs().max() <= math.sqrt(6 / (kv.shape[-2] * kv.shape[-1]))
    assert ("tuned.kv_value" in init) == (not config["kv_shared"])


@pytest.mark.parametrize("recipe", ["paper", "official", "studio"])
def test_the_cli_recipe_flag_resolves_every_setting_of_the_recipe_and_flags_still_win(recipe):
    from e2vpt.cli import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["train", "--recipe", recipe, "--segments", "8"]))
    assert config.recipe == recipe and config.segments == 8
    assert all(getattr(config, k) == v for k, v in RECIPES[recipe].items() if k != "segments")


@pytest.mark.slow  # a real (short) official run, about 40 s
def test_an_official_run_trains_its_masks_first_then_fixes_them_and_keeps_pruned_tokens_zeroed(tmp_path):
    from e2vpt.training.build import load_run_model
    from e2vpt import train

    config = TrainConfig.from_dict({"recipe": "official", "backbone": "demo", "dataset": "digits", "epochs": 1,
                                    "retrain_epochs": 1, "prune_rounds": 1, "prompt_len": 4, "kv_len": 2})
    train(config, tmp_path / "run", quiet=True)
    first = load_file(tmp_path / "run" / "round_0.safetensors")
    trained = first["tuned.segment_mask_value"]  # trained in the first phase, by gradients, not weight decay alone
    assert trained.std() > 1e-6 and "tuned.token_mask_value" in first
    last = load_file(tmp_path / "run" / "round_1.safetensors")
    assert "tuned.token_mask_value" not in last  # fixed 0/1 after pruning, so not saved
    model, _, _ = load_run_model(tmp_path / "run", round_index=1)
    t = model.tuned
    assert bool((t.token_mask_value == 1).all()) and not t.token_mask_value.requires_grad
    assert t.token_mask.sum() < t.token_mask.numel() and bool((t.token_mask == t.token_mask[:1]).all())  # shared
    prompts = model._layer_prompts(0, 1, None, None)
    assert prompts.shape[1] == 4  # zeroed, not removed
    assert bool((prompts[0, t.token_mask[0] == 0] == 0).all())


def test_the_token_mask_gradient_vanishes_for_deep_prompts_so_studio_ranks_tokens_by_their_segments():
    """LayerNorm ignores a token's scale and a deep prompt's output is dropped: d(loss)/d(token mask) is
    rounding noise, while each segment, scaling part of the channels, matters (docs/RECIPES.md)."""
    model = build_model(TrainConfig(prompt_len=P, kv_len=L, segments=R), tiny_vit(), CLASSES)
    x, y = images(6, seed=3), torch.arange(6) % CLASSES
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    by_mask = score_importance(model, loader, torch.device("cpu"), "abs")
    assert by_mask.token.max() < 1e-3 * by_mask.segment.sum(-1).min()
    token_mask = torch.ones(DEPTH, P)
    token_mask[0, 2] = 0
    model.set_masks(token_mask, model.tuned.segment_mask)
    by_segments = score_importance(model, loader, torch.device("cpu"), "abs", token_from="segments")
    alive = token_mask > 0
    assert torch.allclose(by_segments.token[alive], by_segments.segment.nansum(-1)[alive])
    assert by_segments.token[0, 2].isnan() and by_segments.token[alive].min() > 0


def _token_and_segment_scores(eps: float, global_pool: str = "token", **settings) -> tuple[float, float]:
    backbone = tiny_vit(global_pool)
    for module in backbone.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps
    config = TrainConfig(prompt_len=P, kv_len=L, segments=R, global_pool=global_pool, **settings)
    model = build_model(config, backbone, CLASSES)
    x, y = images(6, seed=3), torch.arange(6) % CLASSES
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    scores = score_importance(model, loader, torch.device("cpu"), "abs")
    return float(scores.token.mean()), float(scores.segment.nansum(-1).mean())


def test_the_token_mask_gradient_is_layernorms_epsilon_and_not_small_when_prompts_reach_the_output():
    """docs/RECIPES.md's finding, with its scope: a deep prompt read through [CLS] reaches the loss only
    through LayerNorm, which removes its scale but for eps, so d(loss)/d(token mask) grows linearly with
    eps and vanishes at 0; averaged into the output (official MAE pooling) the token matters as its segments do."""
    by_eps = {eps: _token_and_segment_scores(eps) for eps in (0.0, 1e-5, 1e-4)}
    assert 5 < by_eps[1e-4][0] / by_eps[1e-5][0] < 15  # linear in eps
    assert by_eps[0.0][0] < 1e-2 * by_eps[1e-5][0] < 1e-5 * by_eps[0.0][1]
    token, segments = _token_and_segment_scores(1e-6, "avg", avg_pool="tokens")
    assert token > 0.1 * segments


def test_official_schedule_steps_per_epoch_and_trains_its_first_epoch_at_rate_zero():
    from e2vpt.training.schedule import warmup_cosine

    official = warmup_cosine(4, 2, first=0)
    assert [official(e) for e in range(4)] == pytest.approx([0.0, 0.5, 1.0, 0.5])
    studio = warmup_cosine(4, 2)
    assert studio(0) == 0.5  # stepped per batch, the first step already trains


def test_official_segment_pruning_takes_the_same_share_of_every_token():
    from e2vpt.models.pruning import prune_segments

    token_mask = torch.ones(2, 3)
    token_mask[1, 0] = 0
    scores = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(0))
    scores[0, 0] *= 100  # one important token: ranked globally it would keep all its segments
    per_token = prune_segments(token_mask, torch.ones(2, 3, 16), scores, 0.25, 4, per_token=True)
    assert per_token.sum(-1).tolist() == [[12, 12, 12], [0, 12, 12]]
    for layer, token in (token_mask > 0).nonzero().tolist():  # each token loses its own lowest four
        lowest = torch.argsort(scores[layer, token])[:4]
        assert per_token[layer, token, lowest].sum() == 0
    ranked = prune_segments(token_mask, torch.ones(2, 3, 16), scores, 0.25, 4)
    assert ranked[0, 0].sum() == 16 and ranked.sum() == per_token.sum()
    again = prune_segments(token_mask, per_token, scores, 0.9, 4, per_token=True)
    assert again.sum(-1)[token_mask > 0].tolist() == [4] * 5  # never below 4 of 16


def test_the_official_recipe_runs_on_swin_with_zeroed_tokens_and_trained_masks():
    torch.manual_seed(0)
    swin = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                           num_classes=0).eval()
    config = TrainConfig.from_dict({"recipe": "official", "prompt_len": 3, "kv_len": 2, "segments": 4})
    model = build_model(config, swin, CLASSES).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4) % CLASSES
    token_mask = torch.ones_like(model.tuned.token_mask)
    token_mask[:, 1] = 0
    model.set_masks(token_mask, model.tuned.segment_mask)
    assert model._layer_prompts(0, 1, None, None).shape[1] == 3  # zeroed, not removed
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert model.tuned.segment_mask_value.grad.abs().sum() > 0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    scores = score_importance(model, loader, torch.device("cpu"), "signed")
    assert scores.token[:, 1].isnan().all() and not scores.token[:, 0].isnan().any()
