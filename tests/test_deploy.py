"""Using what was trained (issue 31): predict on image files, an adapter to share, a model to deploy.

One real demo run (E2VPT, one pruning round) is trained once for the file; every property is checked
against the run's own evaluation: the same predictions, the same logits bit for bit, the same accuracy.
"""

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import e2vpt
from e2vpt import TrainConfig
from e2vpt.cli import main
from e2vpt.data.preprocess import MAX_PIXELS, ImageRule, image_rule, read_image
from e2vpt.deploy.adapter import AdapterError, write_adapter
from e2vpt.deploy.trained import Trained
from e2vpt.errors import BackboneError, UserError
from e2vpt.fileio import tensors_sha256
from e2vpt.models.prompted import build_model

sys.path.insert(0, str(Path(__file__).parent))
from test_methods import tiny_vit  # noqa: E402
from test_swin import tiny_swin  # noqa: E402

TEST_IMAGES = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished demo run: E2VPT on digits, one epoch, one pruning round (so rounds 0 and 1 exist)."""
    path = tmp_path_factory.mktemp("runs") / "demo"
    e2vpt.train(TrainConfig(epochs=1, retrain_epochs=1, prune_rounds=1), path, quiet=True, embeddings=False)
    return path


@pytest.fixture(scope="module")
def test_images(run, tmp_path_factory):
    """The run's first test images saved as PNG files (uint8 at the run's size, as its dataset holds them)."""
    splits = e2vpt.load_run_splits(run)
    folder = tmp_path_factory.mktemp("images")
    for i in range(TEST_IMAGES):
        Image.fromarray(splits.test.images[i][0].numpy(), mode="L").save(folder / f"test{i:02d}.png")
    return folder


def run_logits(run, round_index=None, n=None):
    model, _, splits = e2vpt.load_run_model(run, round_index=round_index)
    n = n or len(splits.test)
    x = torch.stack([splits.test[i][0] for i in range(n)])
    with torch.no_grad():
        return model(x), x, splits.test.labels[:n]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------------
# predict
def test_predict_gives_the_runs_own_predictions_on_its_test_images(run, test_images, capsys, tmp_path):
    logits, _, _ = run_logits(run, n=TEST_IMAGES)
    probs = logits.softmax(1)
    code, out, err = cli(capsys, "predict", run, test_images, "--top-k", 3, "--out", tmp_path / "p.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [Path(r["image"]).name for r in rows] == [f"test{i:02d}.png" for i in range(TEST_IMAGES)]
    for i, row in enumerate(rows):
        assert [t["index"] for t in row["top"]] == probs[i].topk(3).indices.tolist()
        assert row["top"][0]["probability"] == pytest.approx(probs[i].max().item(), abs=1e-6)
        assert out.splitlines()[i].split()[1] == row["top"][0]["class"]  # the table's first class column
    assert f"{TEST_IMAGES} image(s) predicted by run demo, round" in err


def test_predict_round_zero_is_the_unpruned_model(run, test_images, capsys, tmp_path):
    logits, _, _ = run_logits(run, round_index=0, n=TEST_IMAGES)
    code, _, err = cli(capsys, "predict", run, str(test_images / "test0*.png"), "--round", 0, "--top-k", 1,
                       "--out", tmp_path / "p.csv")
    assert code == 0, err
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "image,rank,class,index,probability" and len(lines) == 1 + 10  # test00..test09
    assert [int(line.split(",")[3]) for line in lines[1:]] == logits[:10].argmax(1).tolist()
    assert "round 0" in err


def test_bad_images_are_one_line_each_and_the_rest_is_predicted(run, test_images, capsys, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    png = (test_images / "test00.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    code, out, err = cli(capsys, "predict", run, test_images / "test01.png", tmp_path / "notes.png",
                         tmp_path / "cut.png", tmp_path / "empty.png", tmp_path / "missing.png",
                         str(tmp_path / "none*.jpg"))
    assert code == 1
    assert len(out.splitlines()) == 1 and "test01.png" in out
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 5 and "Traceback" not in err
    for name in ("notes.png", "cut.png", "empty.png", "missing.png", "none*.jpg"):
        assert sum(name in line for line in skipped) == 1
    assert "1 image(s) predicted" in err and "5 skipped" in err


def test_a_round_that_does_not_exist_and_an_unfinished_run_are_one_line(run, test_images, capsys, tmp_path):
    code, _, err = cli(capsys, "predict", run, test_images, "--round", 5)
    assert code == 2 and err.strip() == "error: demo has no finished round 5; its finished rounds: 0, 1"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "pruning.json", "round_0.safetensors", "e2vpt-run.json"):  # no summary yet
        (unfinished / name).write_bytes((run / name).read_bytes())
    code, _, err = cli(capsys, "predict", unfinished, test_images)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has not finished" in err and "use --round N" in err
    code, out, _ = cli(capsys, "predict", unfinished, test_images / "test00.png", "--round", 0)
    assert code == 0 and "test00.png" in out


def test_an_image_too_large_is_refused_from_its_header(tmp_path, monkeypatch):
    side = int(MAX_PIXELS ** 0.5) + 10
    Image.new("L", (side, side)).save(tmp_path / "huge.png")
    rule = ImageRule(32, (0.5,) * 3, (0.5,) * 3, "bicubic", "rgb")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    with pytest.raises(UserError, match="more than the 50,000,000 read here"):
        read_image(str(tmp_path / "huge.png"), rule)
    assert not decoded  # refused from the header: the pixels were never decoded


def test_bad_options_are_refused_before_anything_is_loaded(run, test_images, capsys, tmp_path):
    for argv, says in ((["--batch-size", 0], "--batch-size must be 1 to"), (["--top-k", 0], "--top-k must be 1"),
                       (["--out", tmp_path / "p.txt"], "give a .csv or a .json file"),
                       (["--out", tmp_path / "no" / "p.csv"], "does not exist"),
                       (["--backbone", "demo"], "--backbone and --weights are for adapters")):
        code, out, err = cli(capsys, "predict", run, test_images, *argv)
        assert code == 2 and says in err and not out and len(err.strip().splitlines()) == 1, err


def test_a_finished_run_names_its_classes_from_its_summary(run, test_images, capsys, tmp_path):
    """Its dataset is not read: the names come from summary.json (here rewritten to show it)."""
    copy_dir = tmp_path / "named"
    copy_dir.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (copy_dir / path.name).write_bytes(path.read_bytes())
    summary = json.loads((copy_dir / "summary.json").read_text())
    assert summary["class_names"] == [str(i) for i in range(10)]
    summary["class_names"] = list("abcdefghij")
    (copy_dir / "summary.json").write_text(json.dumps(summary))
    code, out, err = cli(capsys, "predict", copy_dir, test_images / "test00.png", "--top-k", 10)
    assert code == 0, err
    assert sorted(out.split()[1::2]) == list("abcdefghij")


def test_file_datasets_preprocess_as_their_decoded_images(tmp_path):
    """bicubic rule = the image-folder datasets' own decoding (decoded.decode_square), pixel for pixel."""
    from e2vpt.data.decoded import decode_square

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rule = image_rule("imagefolder", 24, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    assert (rule.resize, rule.channels) == ("bicubic", "rgb")
    theirs = torch.from_numpy(decode_square(str(tmp_path / "a.png"), 24)).permute(2, 0, 1).float()
    expected = (theirs / 255 - torch.tensor(rule.mean).view(3, 1, 1)) / torch.tensor(rule.std).view(3, 1, 1)
    assert torch.equal(read_image(str(tmp_path / "a.png"), rule), expected)


# --------------------------------------------------------------------------------------------------
# the adapter
def test_adapter_gives_the_runs_logits_bit_for_bit_and_its_test_accuracy(run, tmp_path, capsys):
    code, out, err = cli(capsys, "export", run, "--out", tmp_path / "A")
    assert code == 0, err
    model = e2vpt.load_adapter(tmp_path / "A", backbone="demo")
    logits, x, labels = run_logits(run)
    with torch.no_grad():
        ours = model(x)
    assert torch.equal(ours, logits)
    summary = json.loads((run / "summary.json").read_text())
    assert (ours.argmax(1) == labels).sum().item() / len(labels) == pytest.approx(summary["test_acc"], abs=1e-12)
    config = json.loads((tmp_path / "A" / "adapter_config.json").read_text())
    assert config["accuracy"]["test"] == summary["test_acc"]
    assert config["dataset"]["class_names"] == [str(i) for i in range(10)]
    assert config["base_model"]["sha256"] == tensors_sha256(model.backbone.state_dict())
    card = (tmp_path / "A" / "README.md").read_text()
    assert f"{100 * summary['test_acc']:.2f} %" in card and "load_adapter" in card


def test_pruned_prompts_are_absent_from_the_file(run, tmp_path, capsys):
    for name, extra in (("pruned", []), ("unpruned", ["--round", 0])):
        assert cli(capsys, "export", run, "--out", tmp_path / name, *extra)[0] == 0
    pruned, unpruned = (tmp_path / n / "adapter_model.safetensors" for n in ("pruned", "unpruned"))
    assert pruned.stat().st_size < unpruned.stat().st_size
    config = json.loads((tmp_path / "pruned" / "adapter_config.json").read_text())
    kept = load_file(str(pruned))["tuned.visual.kept"]
    mask = torch.tensor(config["segment_mask"])  # (layers, p, R): channels kept = segments kept x width / R
    assert kept.numel() == config["prompts"]["kept_values"] < config["prompts"]["values_before_pruning"]
    assert kept.numel() == int(mask.sum()) * (192 // 16)
    assert config["file_bytes"]["unpruned"] == unpruned.stat().st_size
    assert (kept != 0).all()  # only survivors: no stored zeros


def test_predict_through_the_adapter_equals_predict_through_the_run(run, test_images, tmp_path, capsys):
    assert cli(capsys, "export", run, "--out", tmp_path / "A")[0] == 0
    assert cli(capsys, "predict", run, test_images, "--out", tmp_path / "run.json")[0] == 0
    code, _, err = cli(capsys, "predict", tmp_path / "A", test_images, "--out", tmp_path / "adapter.json")
    assert code == 0 and "predicted by adapter" in err
    assert json.loads((tmp_path / "run.json").read_text()) == json.loads((tmp_path / "adapter.json").read_text())


def test_another_backbone_is_refused_in_one_line(run, tmp_path, capsys):
    from e2vpt.models.backbones import create_backbone

    assert cli(capsys, "export", run, "--out", tmp_path / "A")[0] == 0
    altered = create_backbone("demo")
    with torch.no_grad():
        altered.blocks[2].mlp.fc1.weight[0, 0] += 1e-3
    with pytest.raises(BackboneError, match="the same shapes but other weights") as caught:
        e2vpt.load_adapter(tmp_path / "A", backbone=altered)
    assert "\n" not in str(caught.value)
    with pytest.raises(BackboneError, match="parameters where the adapter's has 1,804,608"):
        e2vpt.load_adapter(tmp_path / "A", backbone=tiny_vit())
    with pytest.raises(BackboneError, match="not the one the adapter was trained on"):
        e2vpt.load_adapter(tmp_path / "A", backbone=create_backbone("demo", pretrained=False))


def test_a_damaged_or_mismatched_adapter_is_one_line(run, tmp_path, capsys):
    for name, extra in (("A", []), ("B", ["--round", 0])):
        assert cli(capsys, "export", run, "--out", tmp_path / name, *extra)[0] == 0
    a = tmp_path / "A"
    (a / "adapter_model.safetensors").write_bytes((tmp_path / "B" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match="do not belong together"):
        e2vpt.load_adapter(a)
    good = json.loads((tmp_path / "B" / "adapter_config.json").read_text())
    for broken, says in (({k: v for k, v in good.items() if k != "token_mask"}, "incomplete or damaged"),
                         ({**good, "token_mask": [[0.5] * len(good["token_mask"][0])] * len(good["token_mask"])},
                          "not 0/1 token and segment masks"),
                         ({**good, "token_mask": "all"}, "not lists of 0/1 values"),
                         ({**good, "base_model": {**good["base_model"], "params": "many", "sha256": "0"}},
                          "a backbone of 1,804,608 parameters")):
        (a / "adapter_config.json").write_text(json.dumps(broken))
        with pytest.raises(UserError, match=says):
            e2vpt.load_adapter(a)
    (a / "adapter_config.json").write_bytes(b'{"format": \xff}')
    with pytest.raises(AdapterError, match="is not valid JSON"):
        e2vpt.load_adapter(a)
    (a / "adapter_config.json").write_text(json.dumps({"format": "e2vpt-adapter/1", "dataset": {}}))
    with pytest.raises(AdapterError, match="incomplete or damaged"):
        e2vpt.load_adapter(a)
    with pytest.raises(AdapterError, match="is not an adapter folder"):
        e2vpt.load_adapter(tmp_path / "nowhere")


def test_export_never_overwrites_a_folder_of_other_things(run, tmp_path, capsys, monkeypatch):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"precious")
    code, _, err = cli(capsys, "export", run, "--out", other)
    assert code == 2 and "is not an adapter folder" in err
    assert sorted(os.listdir(other)) == ["holiday.jpg"] and (other / "holiday.jpg").read_bytes() == b"precious"
    lora = tmp_path / "lora"  # another library's adapter: same file name, not ours
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert cli(capsys, "export", run, "--out", lora)[0] == 2 and (lora / "adapter_config.json").is_file()
    monkeypatch.chdir(tmp_path / "photos")
    for here in (".", ".."):
        code, _, err = cli(capsys, "export", run, "--out", here)
        assert code == 2 and "the current folder or one above it" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora", "photos"]  # nothing written beside them

    assert cli(capsys, "export", run, "--out", tmp_path / "A")[0] == 0
    assert cli(capsys, "export", run, "--out", tmp_path / "A", "--round", 0)[0] == 0  # an adapter is replaced
    assert json.loads((tmp_path / "A" / "adapter_config.json").read_text())["run"]["round"] == 0

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("e2vpt.deploy.onnx_model.export_onnx", failing)
    code, _, err = cli(capsys, "export", run, "--out", tmp_path / "A", "--format", "onnx")
    assert code == 2 and "No space left on device" in err
    assert json.loads((tmp_path / "A" / "adapter_config.json").read_text())["run"]["round"] == 0  # kept whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "lora", "photos"]  # no half-built folder left


def random_pruning(model, generator):
    """Prune about a third of the tokens and of the remaining segments, at random."""
    t = model.tuned
    token = (torch.rand(t.token_mask.shape, generator=generator) > 0.33).float()
    segment = (torch.rand(t.segment_mask.shape, generator=generator) > 0.33).float()
    model.set_masks(token, segment)


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("method,options,pruned", [
    ("linear", {}, False), ("full", {}, False), ("vpt-shallow", {}, False), ("vpt-deep", {}, False),
    ("e2vpt", {}, True), ("e2vpt", {"pruned_tokens": "zero", "train_masks": True, "kv_shared": True}, True),
    ("e2vpt", {"train_masks": True}, False),  # round 0 of the official recipe: trained mask values stored
])
def test_every_method_and_family_round_trips_through_an_adapter(family, method, options, pruned, tmp_path):
    base = tiny_vit() if family == "vit" else tiny_swin()
    settings = TrainConfig(method=method, prompt_len=4, kv_len=2, segments=4, **options)
    model = build_model(settings, copy.deepcopy(base), 3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    if pruned:
        random_pruning(model, generator)
        model.train_mask_values(False)
    size = 8 if family == "vit" else 32
    rule = ImageRule(size, (0.5,) * 3, (0.5,) * 3, "bicubic", "rgb")
    trained = Trained(model=model.eval(), config=settings, class_names=["a", "b", "c"], rule=rule, round=1,
                      record={"val_acc": 0.5, "test_acc": 0.4}, run_id="r", rounds=2, summary=None,
                      data_source="made here", backbone_sha256=tensors_sha256(base.state_dict()),
                      device=torch.device("cpu"))
    write_adapter(trained, tmp_path / "A")
    stored = load_file(str(tmp_path / "A" / "adapter_model.safetensors"))
    assert not [name for name in stored if name.startswith("tuned.visual") and not name.endswith(".kept")]
    assert sum(t.numel() for name, t in stored.items() if name.endswith(".kept")) == model.kept_prompt_entries()
    assert ("tuned.token_mask_value" in stored) == (options.get("train_masks", False) and not pruned)
    loaded = e2vpt.load_adapter(tmp_path / "A", backbone=copy.deepcopy(base))
    x = torch.randn(4, 3, size, size, generator=generator)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.tuned_param_count() == model.tuned_param_count()


def adapter_of(settings, base, folder, classes=3):
    """An adapter of a model built on `base` with `settings`, its tuned values drawn at random."""
    model = build_model(settings, copy.deepcopy(base), classes)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    trained = Trained(model=model.eval(), config=settings, class_names=[str(i) for i in range(classes)],
                      rule=ImageRule(32, (0.5,) * 3, (0.5,) * 3, "bilinear", "gray"), round=0,
                      record={"val_acc": 0.5, "test_acc": 0.4}, run_id="r", rounds=1, summary=None,
                      data_source="made here", backbone_sha256=tensors_sha256(base.state_dict()),
                      device=torch.device("cpu"))
    write_adapter(trained, folder)
    return model


def test_a_backbone_named_is_rebuilt_as_the_run_built_it(tmp_path):
    """By name: a local weights file must be given again (its path is not carried); a random-init backbone
    (--no-pretrained) is drawn again from the run's seed."""
    from safetensors.torch import save_file

    from e2vpt.models.backbones import create_backbone

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    own = create_backbone("demo", pretrained=False)
    save_file(own.state_dict(), str(tmp_path / "mine.safetensors"))
    settings = TrainConfig(method="e2vpt", backbone="demo", weights=str(tmp_path / "mine.safetensors"))
    model = adapter_of(settings, own, tmp_path / "W")
    config = json.loads((tmp_path / "W" / "adapter_config.json").read_text())
    assert config["settings"]["weights"] is None and config["base_model"]["weights_file"] == "mine.safetensors"
    with pytest.raises(BackboneError, match="with the weights file mine.safetensors; pass that file"):
        e2vpt.load_adapter(tmp_path / "W")
    with torch.no_grad():
        assert torch.equal(e2vpt.load_adapter(tmp_path / "W", weights=tmp_path / "mine.safetensors")(x), model(x))

    settings = TrainConfig(method="vpt-deep", backbone="demo", pretrained=False, seed=7)
    torch.manual_seed(7)
    drawn = create_backbone("demo", pretrained=False)
    model = adapter_of(settings, drawn, tmp_path / "R")
    state = torch.random.get_rng_state()
    loaded = e2vpt.load_adapter(tmp_path / "R")
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the caller's random numbers alone
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --------------------------------------------------------------------------------------------------
# ONNX
@pytest.mark.slow
def test_onnx_matches_pytorch_with_a_dynamic_batch(run, tmp_path, capsys):
    import onnxruntime

    code, out, err = cli(capsys, "export", run, "--out", tmp_path / "A", "--format", "onnx")
    assert code == 0, err
    assert "checked against onnxruntime" in out
    session = onnxruntime.InferenceSession(str(tmp_path / "A" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, x, _ = run_logits(run, n=64)
    for n in (1, 5, 64):
        theirs = session.run(None, {"images": x[:n].numpy()})[0]
        assert np.abs(theirs - logits[:n].numpy()).max() < 1e-4
    assert "## ONNX" in (tmp_path / "A" / "README.md").read_text()


def test_onnx_on_swin_is_refused_in_one_line(tmp_path):
    from e2vpt.deploy.onnx_model import export_onnx

    model = build_model(TrainConfig(method="e2vpt", prompt_len=2, kv_len=1, segments=4), tiny_swin(), 3)
    with pytest.raises(UserError, match="ONNX export supports ViT backbones"):
        export_onnx(model, ImageRule(32, (0.5,) * 3, (0.5,) * 3, "bicubic", "rgb"), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_fixed_prompts_give_the_same_logits_and_cannot_train(run):
    model, _, splits = e2vpt.load_run_model(run)
    x = torch.stack([splits.test[i][0] for i in range(16)])
    with torch.no_grad():
        before = model(x)
        after = model.fix_prompts()(x)
    assert torch.equal(before, after)
    with pytest.raises(RuntimeError, match="fixed for inference"):
        model.train()
