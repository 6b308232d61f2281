"""The method registry (`e2vpt/methods.py`) is the one place a method is described: the settings, the
command line, the Train form, the charts and the models read it, and a new row is a new method."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from e2vpt import charts
from e2vpt.config import TrainConfig, kind, meta, settings, used_by
from e2vpt.methods import METHODS, REGISTRY
from e2vpt.models.prompted import build_model

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 3


def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=DEPTH, num_heads=2, num_classes=0).eval()


def method_field():
    return next(f for f in settings() if f.name == "method")


@pytest.mark.parametrize("name", METHODS)
def test_every_row_builds_the_model_it_describes(name):
    row = REGISTRY[name]
    model = build_model(TrainConfig(method=name, prompt_len=3, kv_len=2), tiny_vit(), num_classes=4)
    trainable = {n.split(".")[1] for n, _ in model.trainable_named_parameters() if n.startswith("tuned.")}
    assert ("visual" in trainable) == (row.visual != "none")
    assert ("kv_key" in trainable) == row.kv
    assert "head" in trainable
    assert all(p.requires_grad == row.train_backbone for p in model.backbone.parameters())
    if row.visual != "none":
        assert model.tuned.visual.shape[0] == model.prompt_sets == {"deep": DEPTH, "shallow": 1}[row.visual]
    entering = [model.prompts_entering(i) for i in range(DEPTH)]
    assert entering == {"deep": [0, 1, 2], "shallow": [0, None, None], "none": [None] * DEPTH}[row.visual]
    assert model.prompts_carried == (row.visual == "shallow")
    assert TrainConfig(method=name, prune_rounds=2).rounds == (2 if row.prune else 0)


@pytest.mark.parametrize("name", METHODS)
def test_settings_take_the_rows_defaults(name):
    row = REGISTRY[name]
    assert TrainConfig(method=name).resolved_lr == row.lr
    assert TrainConfig(method=name, optimizer="sgd").resolved_lr == row.sgd_lr
    assert TrainConfig(method=name, lr=0.123).resolved_lr == 0.123  # the user's rate wins
    pruning = [f for f in settings() if meta(f)["group"] == "pruning"]
    assert all(used_by(f, name) == row.prune for f in pruning)


def test_the_command_line_the_form_and_the_charts_list_the_registry():
    assert kind(method_field())[1] == METHODS
    labels = meta(method_field())["choice_labels"]
    assert list(labels) == list(METHODS)
    assert all(REGISTRY[m].label in labels[m] and REGISTRY[m].trains in labels[m] for m in METHODS)
    assert all(f"{m} ({REGISTRY[m].trains})" in meta(method_field())["help"] for m in METHODS)
    assert charts.METHOD_ORDER == METHODS


@pytest.mark.slow
def test_a_new_row_is_a_new_method(tmp_path):
    """Key-value prompts alone (no visual prompts), declared by one row before e2vpt is used: it is
    accepted as a setting, trained, counted and saved like the shipped methods."""
    script = textwrap.dedent(f"""
        import json, sys
        import e2vpt.methods as methods
        row = methods.Method("kv-only", "Key-value prompts only", "key-value prompts", visual="none", kv=True,
                             prune=False, train_backbone=False, lr=1e-2, sgd_lr=0.5)
        methods.REGISTRY[row.name] = row
        methods.METHODS = tuple(methods.REGISTRY)
        from e2vpt import TrainConfig, train
        config = TrainConfig(method="kv-only", backbone="demo", dataset="digits", epochs=1, kv_len=2, batch_size=64)
        summary = train(config, {str(tmp_path / 'run')!r}, quiet=True, embeddings=False)
        print(json.dumps({{"method": summary["method"], "tuned": summary["tuned_params"],
                          "no_head": summary["tuned_params_no_head"], "acc": summary["test_acc"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    from e2vpt.models.backbones import DEMO_CONFIG

    layers, width, heads = DEMO_CONFIG["depth"], DEMO_CONFIG["embed_dim"], DEMO_CONFIG["num_heads"]
    assert result["method"] == "kv-only"
    assert result["no_head"] == 2 * layers * heads * 2 * (width // heads)  # keys and values, l = 2, every layer
    assert result["acc"] > 0.2  # it learned something beyond chance (10 classes)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method"] == "kv-only"
