"""What a prompt looks at: attention recorded from the real forward, split by what is attended."""


import numpy as np
import pytest
import torch
from small_data import digits_folder
from test_app import open_page

from e2vpt import charts
from e2vpt import runs as run_store
from e2vpt import train
from e2vpt.analysis import attention
from e2vpt.analysis.embeddings import split_images
from e2vpt.config import TrainConfig
from e2vpt.fileio import read_json
from e2vpt.training.build import load_run_model, load_run_splits

SMALL = dict(backbone="demo", pretrained=True, dataset="imagefolder", data_root=str(digits_folder()), epochs=1,
             retrain_epochs=1, prune_rounds=1, prune_ratio=0.5, prompt_len=4, kv_len=2, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("att") / "runs"
    run_dir = runs / "20260101-000000-e2vpt-imagefolder"
    train(TrainConfig(method="e2vpt", **SMALL), run_dir, quiet=True)
    return runs, run_dir


def test_recording_attention_changes_nothing_and_every_query_shares_out_all_of_it(pruned_run):
    _, run_dir = pruned_run
    model, _, splits = load_run_model(run_dir, round_index=0)
    image = splits.test[0][0].unsqueeze(0)
    record = []
    with torch.no_grad():
        assert torch.equal(model.forward_features(image), model.forward_features(image, record_attention=record))
    assert len(record) == model.num_layers
    for entry in record:
        cls_total = (entry["cls_to_prefix"] + entry["cls_to_kv"].sum() + entry["cls_to_prompt"].sum()
                     + entry["cls_to_patches"].sum())
        assert cls_total.item() == pytest.approx(1.0, abs=1e-5)
        assert entry["prompt_to_patches"].shape[0] == len(entry["tokens"]) == 4  # round 0: nothing pruned yet
        assert entry["kv_from_patches"].shape[0] == 2
        assert (entry["prompt_to_patches"].sum(dim=(1, 2)) < 1.0).all()  # the rest goes elsewhere


def test_with_every_prompt_pruned_cls_attends_exactly_as_in_the_frozen_backbone(pruned_run):
    _, run_dir = pruned_run
    model, config, splits = load_run_model(run_dir)
    model.set_masks(torch.zeros_like(model.tuned.token_mask), torch.zeros_like(model.tuned.segment_mask))
    model.tuned.kv_key = model.tuned.kv_value = None  # no key-value prompts either
    image = splits.test[1][0].unsqueeze(0)
    record = []
    with torch.no_grad():
        model.forward_features(image, record_attention=record)
    # ground truth from the backbone's own forward: each block's input, timm's projections, plain softmax
    bb, inputs = model.backbone, []
    hooks = [block.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for block in bb.blocks]
    with torch.no_grad():
        bb.forward_features(image)
    for hook in hooks:
        hook.remove()
    for entry, block, x in zip(record, bb.blocks, inputs):
        attn = block.attn
        qkv = attn.qkv(block.norm1(x)).reshape(1, x.shape[1], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        reference = (q @ k.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1)[0].mean(0)[0]
        assert entry["tokens"] == [] and entry["cls_to_kv"].numel() == 0
        torch.testing.assert_close(entry["cls_to_patches"].flatten(), reference[bb.num_prefix_tokens:],
                                   rtol=1e-5, atol=1e-6)


def test_tokens_are_marked_by_the_decision_that_followed_and_the_result_is_cached(pruned_run, monkeypatch):
    _, run_dir = pruned_run
    result = attention.prompt_attention(run_dir, 0, index=2)
    after = torch.tensor(read_json(run_dir / "pruning.json")["rounds"][1]["token_mask"])
    for layer in result["layers"]:
        for token, fate in zip(layer["tokens"], layer["status"]):
            assert fate == ("kept" if after[layer["layer"] - 1, token - 1] == 1 else "pruned next")
    assert result["next_round"] == 1 and {"pruned next", "kept"} <= {f for l in result["layers"] for f in l["status"]}
    final = attention.prompt_attention(run_dir, 1, index=2)  # the last round: survivors only, nothing next
    assert final["next_round"] is None
    assert all(set(l["status"]) <= {"kept"} for l in final["layers"])
    assert sum(len(l["tokens"]) for l in final["layers"]) == int(after.sum())

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed what the run's analysis/ holds")

    monkeypatch.setattr("e2vpt.training.build.load_run_model", refuse)
    assert attention.prompt_attention(run_dir, 0, index=2) == result


def test_an_image_that_does_not_exist_is_refused_clearly(pruned_run):
    _, run_dir = pruned_run
    with pytest.raises(run_store.RunDirError, match="does not exist"):
        attention.prompt_attention(run_dir, 0, index=10_000)


def test_the_prompts_page_shows_what_each_prompt_looks_at(pruned_run, monkeypatch):
    runs, run_dir = pruned_run
    monkeypatch.setenv(run_store.RUNS_ROOT_ENV, str(runs))
    monkeypatch.setenv(run_store.DATA_ROOT_ENV, str(digits_folder().parent))
    at = open_page("app_pages/prompts.py", run=run_dir.name)
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert "What a prompt looks at" in [s.value for s in at.subheader]
    charts_before = len(at.get("plotly_chart"))
    at.number_input(key="attention_image").set_value(3).run()
    at.select_slider(key="attention_layer").set_value(2).run()
    assert not at.exception and len(at.get("plotly_chart")) == charts_before
    assert (run_dir / "analysis" / "attention-round-0-test-3.json").is_file()


def test_the_attention_charts_draw_each_token_over_the_image(pruned_run):
    _, run_dir = pruned_run
    result = attention.prompt_attention(run_dir, 0, index=2)
    overview = charts.attention_prompt_map(result)
    assert "pruned next" in {t.name for t in overview.data}
    image = split_images(load_run_splits(run_dir), "test", [2])[0]
    layer = next(l for l in result["layers"] if "pruned next" in l["status"] and "kept" in l["status"])
    fig = charts.attention_over_image(image, result, layer["layer"])
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "[CLS] looks at" and any("(kept)" in t for t in titles) and any("(pruned next)" in t for t in titles)
    assert sum(t.startswith("patches reading key-value prompt") for t in titles) == 2
    assert sum(trace.type == "image" for trace in fig.data) == len(titles)
    heatmaps = [trace for trace in fig.data if trace.type == "heatmap"]
    assert [trace.showscale for trace in heatmaps].count(True) == 1  # one colour scale reads every panel:
    assert all(trace.zmax == 100 and abs(float(np.nanmax(trace.z)) - 100) < 1e-9 for trace in heatmaps)  # % of its peak
    assert fig.layout.annotations[0].font.size >= 12



def test_a_method_without_prompts_is_told_so_whatever_its_unused_settings_say(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    config = {**SMALL, "prune_rounds": 0, "prompt_len": 8, "kv_len": 4}  # settings a linear probe does not read
    train(TrainConfig(method="linear", **config), runs / "20260101-000000-linear-imagefolder", quiet=True)
    monkeypatch.setenv(run_store.RUNS_ROOT_ENV, str(runs))
    monkeypatch.setenv(run_store.DATA_ROOT_ENV, str(digits_folder().parent))
    at = open_page("app_pages/prompts.py", run="20260101-000000-linear-imagefolder")
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert "This run has no prompts to look at." in [c.value for c in at.caption]
    assert not [n for n in at.number_input if n.label == "Test image"]
