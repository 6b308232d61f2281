"""The dataset package as a specification: what each source yields, how it splits, how it fails.

Everything runs on data the tests make in tmp_path or render in memory; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2vpt.data import (BUILTIN_DATASETS, DatasetSplits, ImageFileDataset, list_datasets, load_splits,
                        verify_images)
from e2vpt.data import builtin, decoded, folders, synthetic
from e2vpt.errors import DataError, UserError


# ---------------------------------------------------------------------------------------------
# helpers


def write_image(path: Path, seed: int, size=(12, 10)) -> Path:
    """A small noise image; the format follows the suffix (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_class_tree(root: Path, classes=("cat", "dog", "owl"), per_class=10) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}", seed=100 * c + i)
    return root


def truncated_jpeg(path: Path) -> Path:
    write_image(path, seed=7, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def all_labels(ds) -> list[int]:
    return [ds[i][1] for i in range(len(ds))]


def samples_of(ds) -> list[tuple[str, int]]:
    return list(ds.samples)


# ---------------------------------------------------------------------------------------------
# registry


def test_list_datasets_offers_every_kind_with_unique_resolvable_names():
    entries = list_datasets()
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names))
    assert {e["kind"] for e in entries} == {"builtin", "torchvision", "folder"}
    assert set(BUILTIN_DATASETS) <= set(names)
    for e in entries:
        assert set(e) == {"name", "kind", "needs_root", "description", "label"} and e["label"]
        assert isinstance(e["needs_root"], bool) and e["description"]
        assert e["needs_root"] == (e["kind"] != "builtin")
    assert {"cifar100", "eurosat", "caltech101", "imagefolder", "vtab", "fgvc"} <= set(names)


def test_unknown_dataset_name_is_a_user_error_listing_valid_names():
    with pytest.raises(DataError) as info:
        load_splits("imagenet-42k")
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "imagenet-42k" in message and "digits" in message and "vtab" in message and "cifar10" in message


def test_names_are_case_and_underscore_insensitive():
    assert load_splits("Fashion_MNIST" if builtin.fashion_mnist_available() else "DIGITS").num_classes == 10


def test_bad_img_size_or_std_is_rejected_before_loading():
    with pytest.raises(DataError, match="img_size"):
        load_splits("digits", img_size=0)
    with pytest.raises(DataError, match="std"):
        load_splits("digits", std=(0.5, 0.0, 0.5))


# ---------------------------------------------------------------------------------------------
# built-in datasets


def test_digits_has_vtab_sizes_shapes_and_normalised_float_tensors():
    splits = load_splits("digits", img_size=32)
    assert isinstance(splits, DatasetSplits)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (800, 200, 797)
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale replicated
    xs, ys = splits.train.tensors()
    assert xs.min() >= -1.0 and xs.max() <= 1.0 and xs.min() == -1.0  # (0 - 0.5) / 0.5
    assert splits.num_classes == 10 and splits.class_names == [str(i) for i in range(10)]
    assert set(ys.tolist()) == set(range(10))
    assert "scikit-learn" in splits.source and "800" in splits.source


def test_mean_and_std_are_applied_as_given():
    raw = load_splits("digits", mean=(0, 0, 0), std=(1, 1, 1)).val.tensors()[0]
    imagenet = load_splits("digits", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).val.tensors()[0]
    assert raw.min() >= 0 and raw.max() <= 1
    expected = (raw - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(imagenet, expected, atol=1e-5)


def test_img_size_is_respected():
    assert load_splits("digits", img_size=16).test[0][0].shape == (3, 16, 16)


def test_builtin_data_are_deterministic_and_independent_of_the_run_seed():
    first = load_splits("digits", seed=0).train.tensors()
    builtin.clear_cache()
    again = load_splits("digits", seed=0).train.tensors()
    other_seed = load_splits("digits", seed=123).train.tensors()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(first[0], other_seed[0]) and torch.equal(first[1], other_seed[1])


def test_builtin_tensors_are_cached_in_process():
    a, b = load_splits("digits"), load_splits("digits", mean=(0, 0, 0), std=(1, 1, 1))
    assert a.train.images is b.train.images


def test_builtin_splits_are_disjoint():
    splits = load_splits("digits", img_size=8)
    rows = [tuple(img.flatten().tolist()) for ds in (splits.train, splits.val, splits.test) for img in ds.images]
    # digits has a handful of exact duplicate images; disjoint indices keep duplicates rare.
    assert len(set(rows)) >= len(rows) - 10


def test_memory_dataset_batches_through_a_dataloader():
    batch, labels = next(iter(torch.utils.data.DataLoader(load_splits("digits").train, batch_size=16)))
    assert batch.shape == (16, 3, 32, 32) and batch.dtype == torch.float32 and labels.dtype == torch.int64


@pytest.mark.parametrize("name,classes", [("dsprites-loc", 16), ("dsprites-ori", 16), ("clevr-count", 8)])
def test_synthetic_tasks_have_vtab_sizes_and_balanced_labels(name, classes):
    splits = load_splits(name, img_size=32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (800, 200, 1000)
    assert splits.num_classes == classes == len(splits.class_names)
    x, _ = splits.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    labels = torch.cat([ds.labels for ds in (splits.train, splits.val, splits.test)])
    assert torch.bincount(labels).tolist() == [2000 // classes] * classes


def test_synthetic_rendering_is_deterministic_per_seed_and_task():
    a, b = synthetic.generate("clevr-count", 50, seed=0), synthetic.generate("clevr-count", 50, seed=0)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, synthetic.generate("clevr-count", 50, seed=1).images)
    loc, ori = synthetic.generate("dsprites-loc", 50, 0), synthetic.generate("dsprites-ori", 50, 0)
    assert not np.array_equal(loc.images, ori.images)


def _centre_of_mass(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:mask.shape[1], 0:mask.shape[2]] + 0.5
    mass = mask.sum(axis=(1, 2))
    return (mask * xx).sum(axis=(1, 2)) / mass, (mask * yy).sum(axis=(1, 2)) / mass


def test_dsprites_loc_sprite_moves_right_as_the_label_grows():
    rendered = synthetic.generate("dsprites-loc", 800, seed=0)
    cx, _ = _centre_of_mass(rendered.images[..., 0] > 0)
    assert np.abs(cx - rendered.factors["x"]).max() < 2.0  # the drawn sprite is where the factor says
    # and through load_splits, at the resolution a model sees:
    xs, ys = load_splits("dsprites-loc", img_size=32, mean=(0, 0, 0), std=(1, 1, 1)).train.tensors()
    cx32, _ = _centre_of_mass(xs[:, 0].numpy())
    means = [cx32[ys.numpy() == k].mean() for k in range(16)]
    assert all(a < b for a, b in zip(means, means[1:]))


def test_dsprites_ori_pointer_direction_matches_its_orientation_bin():
    rendered = synthetic.generate("dsprites-ori", 800, seed=0)
    cx, cy = _centre_of_mass(rendered.images[..., 0] > 0)
    # The triangle's centroid lies a third of the way from its base towards its apex.
    angle = np.mod(np.arctan2(-(cy - rendered.factors["y"]), cx - rendered.factors["x"]), 2 * np.pi)
    error = np.abs(np.angle(np.exp(1j * (angle - rendered.factors["angle"]))))
    assert np.degrees(error).max() < 6.0
    bins = np.floor(angle / (2 * np.pi / 16)).astype(int) % 16
    assert (bins == rendered.labels).mean() > 0.95


def test_clevr_count_label_is_the_number_of_separate_objects_minus_three():
    from scipy import ndimage

    rendered = synthetic.generate("clevr-count", 300, seed=0)
    for image, label in zip(rendered.images.astype(int), rendered.labels):
        foreground = np.abs(image - image[0, 0]).max(axis=-1) > 20  # corner is always background
        assert ndimage.label(foreground, structure=np.ones((3, 3)))[1] == label + 3


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.skipif(not builtin.fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_has_800_200_and_a_fixed_2000_test_subset():
    splits = load_splits("fashion-mnist", img_size=32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (800, 200, 2000)
    assert splits.class_names[0] == "T-shirt/top" and splits.num_classes == 10
    assert splits.train[0][0].shape == (3, 32, 32)
    assert set(splits.test.labels.tolist()) == set(range(10))
    assert "2000" in splits.source


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_is_read_from_a_torchvision_layout_under_root(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "FASHION_MNIST_SYSTEM_DIRS", [])
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (1100, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(1100) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(30) % 10)
    splits = load_splits("fashion-mnist", root=str(tmp_path), img_size=28, mean=(0, 0, 0), std=(1, 1, 1))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (800, 200, 30)
    assert str(raw) in splits.source


def test_missing_fashion_mnist_names_where_it_looked_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "FASHION_MNIST_SYSTEM_DIRS", [str(tmp_path / "system")])
    with pytest.raises(DataError) as info:
        load_splits("fashion-mnist", root=str(tmp_path / "mine"))
    message = str(info.value)
    assert "Fashion-MNIST not found" in message and str(tmp_path / "mine") in message
    assert "dataset-fashion-mnist" in message and "--download" in message


# ---------------------------------------------------------------------------------------------
# image folders


def test_imagefolder_split_is_deterministic_disjoint_and_complete(tmp_path):
    root = make_class_tree(tmp_path / "pics")
    splits = load_splits("imagefolder", root=str(root), img_size=24)
    parts = [samples_of(s) for s in (splits.train, splits.val, splits.test)]
    assert [len(p) for p in parts] == [19, 5, 6]  # 20% test, then 20% of the rest for val
    paths = [p for part in parts for p, _ in part]
    assert len(set(paths)) == 30
    assert splits.class_names == ["cat", "dog", "owl"] and splits.num_classes == 3
    x, y = splits.train[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y in (0, 1, 2)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    again = load_splits("imagefolder", root=str(root), img_size=24, seed=5)
    assert samples_of(again.train) == parts[0] and samples_of(again.test) == parts[2]


def test_imagefolder_uses_given_train_val_test_folders(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        make_class_tree(tmp_path / split, classes=("a", "b"), per_class=n)
    splits = load_splits("imagefolder", root=str(tmp_path))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 6)
    assert all(Path(p).parts[-3] == "test" for p, _ in samples_of(splits.test))


def test_imagefolder_train_augment_changes_only_the_train_split(tmp_path):
    root = make_class_tree(tmp_path / "pics")
    splits = load_splits("imagefolder", root=str(root), img_size=32, train_augment=True)
    assert splits.train[0][0].shape == (3, 32, 32)
    assert splits.train.augment and not splits.val.augment and not splits.test.augment
    torch.manual_seed(0)
    draws = [splits.train[0][0] for _ in range(4)]
    assert not all(torch.equal(draws[0], d) for d in draws[1:])  # random crops and flips
    assert torch.equal(splits.test[0][0], splits.test[0][0])  # evaluation stays deterministic


def test_training_on_train_and_val_adds_the_val_images_to_train_and_says_val_is_not_held_out():
    plain = load_splits("digits", img_size=16)
    both = load_splits("digits", img_size=16, train_on_val=True)
    assert len(both.train) == len(plain.train) + len(plain.val) and len(both.val) == len(plain.val)
    train_x = torch.stack([both.train[i][0] for i in range(len(both.train))])
    for i in (0, len(plain.val) - 1):  # every val image is now a training image, with its label
        x, y = plain.val[i]
        assert torch.equal(train_x[len(plain.train) + i], x) and both.train[len(plain.train) + i][1] == y
    assert torch.equal(both.test.images, plain.test.images)
    assert "val accuracy is not held-out" in both.source and plain.source in both.source


def test_val_images_trained_on_go_through_the_training_augmentation(tmp_path):
    root = make_class_tree(tmp_path / "pics")
    splits = load_splits("imagefolder", root=str(root), img_size=32, train_augment=True, train_on_val=True)
    plain = load_splits("imagefolder", root=str(root), img_size=32, train_augment=True)
    assert samples_of(splits.train)[len(plain.train):] == samples_of(splits.val)
    assert splits.train.augment  # val images in train are augmented like the rest of train
    assert not splits.val.augment  # val itself is still evaluated plainly
    last = len(splits.train) - 1
    assert torch.equal(splits.train.fetch([last])[0][0], splits.val.fetch([len(splits.val) - 1])[0][0])


def test_empty_class_folder_is_named(tmp_path):
    root = make_class_tree(tmp_path / "pics")
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="zebra"):
        load_splits("imagefolder", root=str(root))


def test_test_folder_class_missing_from_train_is_named(tmp_path):
    make_class_tree(tmp_path / "train", classes=("a", "b"), per_class=3)
    make_class_tree(tmp_path / "test", classes=("a", "c"), per_class=2)
    with pytest.raises(DataError, match=r"test.c"):
        load_splits("imagefolder", root=str(tmp_path))


@pytest.mark.parametrize("name", ["imagefolder", "vtab", "fgvc"])
def test_missing_root_is_named(tmp_path, name):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DataError, match="does-not-exist"):
        load_splits(name, root=str(missing))
    with pytest.raises(DataError, match="data root"):
        load_splits(name, root=None)


def _tree_with_bad_images(root: Path) -> list[Path]:
    make_class_tree(root, classes=("a", "b"), per_class=4)
    zero = root / "a" / "zero.png"
    zero.write_bytes(b"")
    garbage = root / "b" / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    return [zero, truncated_jpeg(root / "b" / "cut.jpg"), garbage]


def test_corrupt_zero_byte_and_truncated_images_are_reported_by_path(tmp_path):
    bad = _tree_with_bad_images(tmp_path / "pics")
    with pytest.raises(DataError) as info:
        load_splits("imagefolder", root=str(tmp_path / "pics"))
    message = str(info.value)
    assert "3 unreadable" in message and "\n" not in message
    for path in bad:
        assert str(path) in message
    problems = dict(verify_images(sorted((tmp_path / "pics").rglob("*.*"))))
    assert set(problems) == {str(p) for p in bad}
    assert problems[str(bad[0])] == "empty file (0 bytes)"
    assert "truncated" in problems[str(bad[1])]


def test_large_folders_still_fail_lazily_with_the_path(tmp_path, monkeypatch):
    bad = _tree_with_bad_images(tmp_path / "pics")
    monkeypatch.setattr(folders, "EAGER_VERIFY_MAX", 0)  # as if the folder were too big to check upfront
    monkeypatch.setattr(decoded, "_fits_in_memory", lambda nbytes: False)  # ... and to cache without a disk
    monkeypatch.setenv("E2VPT_CACHE_DIR", "off")
    splits = load_splits("imagefolder", root=str(tmp_path / "pics"))
    assert splits.train.decoded is None
    seen = []
    for ds in (splits.train, splits.val, splits.test):
        for i in range(len(ds)):
            try:
                ds[i]
            except DataError as exc:
                seen.append(str(exc))
    assert len(seen) == 3
    assert all(any(str(p) in m for m in seen) for p in bad)
    with pytest.raises(DataError, match="cut.jpg.*truncated"):
        ImageFileDataset([(str(bad[1]), 0)], 8, (0.5,) * 3, (0.5,) * 3)[0]


# ---------------------------------------------------------------------------------------------
# VTAB-1k lists


def make_vtab_task(root: Path, n_train=6, n_val=3, n_test=4, classes=3) -> Path:
    lines = {}
    counter = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}/{counter:06d}.jpg"
            write_image(root / rel, seed=counter)
            lines[split].append(f"{rel} {counter % classes}")
            counter += 1
    (root / "train800.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "val200.txt").write_text("\n".join(lines["val"]) + "\n")
    (root / "train800val200.txt").write_text("\n".join(lines["train"] + lines["val"]) + "\n")
    (root / "test.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


def test_vtab_lists_define_the_splits(tmp_path):
    root = make_vtab_task(tmp_path / "svhn")
    splits = load_splits("vtab", root=str(root), img_size=16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 4)
    assert splits.num_classes == 3
    assert all_labels(splits.train) == [0, 1, 2, 0, 1, 2]
    assert samples_of(splits.train)[0][0] == str(root / "images/train/000000.jpg")
    assert splits.train[0][0].shape == (3, 16, 16)


def test_vtab_final_protocol_trains_on_train800val200(tmp_path):
    root = make_vtab_task(tmp_path / "svhn")
    splits = load_splits("vtab-train800val200", root=str(root))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 4)
    assert "not held-out" in splits.source


def test_vtab_malformed_line_is_reported_with_file_and_line(tmp_path):
    root = make_vtab_task(tmp_path / "task")
    with open(root / "train800.txt", "a") as f:
        f.write("images/train/000000.jpg\n")
    with pytest.raises(DataError, match=r"train800\.txt:7"):
        load_splits("vtab", root=str(root))


def test_vtab_missing_listed_image_and_missing_lists_are_named(tmp_path):
    root = make_vtab_task(tmp_path / "task")
    (root / "images/test/000010.jpg").unlink()
    with pytest.raises(DataError, match="000010.jpg"):
        load_splits("vtab", root=str(root))
    (root / "val200.txt").unlink()
    with pytest.raises(DataError, match="val200.txt"):
        load_splits("vtab", root=str(root))


# ---------------------------------------------------------------------------------------------
# VPT FGVC json


def make_fgvc(root: Path, image_subdir: str, with_val=True) -> Path:
    labels = {"001.albatross": 1, "005.crow": 5, "009.wren": 9}
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        if split == "val" and not with_val:
            continue
        anno = {}
        for cls, label in labels.items():
            for i in range(n):
                rel = f"{cls}/{split}_{i}.jpg"
                write_image(root / image_subdir / rel, seed=label * 10 + i)
                anno[rel] = label
        (root / f"{split}.json").write_text(json.dumps(anno))
    return root


@pytest.mark.parametrize("image_subdir", ["images", "Images", "."])
def test_fgvc_json_paths_resolve_and_labels_become_contiguous(tmp_path, image_subdir):
    root = make_fgvc(tmp_path / "CUB", image_subdir)
    splits = load_splits("fgvc", root=str(root), img_size=16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 6)
    assert splits.num_classes == 3 and splits.class_names == ["1", "5", "9"]
    assert sorted(set(all_labels(splits.test))) == [0, 1, 2]
    assert splits.test[0][0].shape == (3, 16, 16)


def test_fgvc_without_val_json_holds_out_val_from_train(tmp_path):
    root = make_fgvc(tmp_path / "cars", ".", with_val=False)
    splits = load_splits("fgvc", root=str(root))
    assert len(splits.train) + len(splits.val) == 12 and len(splits.val) >= 1
    assert not {p for p, _ in samples_of(splits.train)} & {p for p, _ in samples_of(splits.val)}


def test_fgvc_images_that_cannot_be_found_are_named(tmp_path):
    root = make_fgvc(tmp_path / "dogs", "elsewhere")
    with pytest.raises(DataError, match="images listed in .*train.json"):
        load_splits("fgvc", root=str(root))


# ---------------------------------------------------------------------------------------------
# torchvision


def test_torchvision_dataset_missing_offline_names_root_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_splits("cifar10", root=str(tmp_path))
    message = str(info.value)
    assert "cifar10 not found" in message and str(tmp_path) in message and "--download" in message
    assert "cifar-10-batches-py" in message


def test_torchvision_dataset_without_root_asks_for_one(monkeypatch):
    monkeypatch.delenv("E2VPT_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match="--data-root"):
        load_splits("cifar100")


def test_stanford_cars_says_it_cannot_be_downloaded(tmp_path):
    with pytest.raises(DataError, match="no longer download"):
        load_splits("stanford-cars", root=str(tmp_path), download=True)


def test_eurosat_has_no_official_split_so_one_is_built(tmp_path):
    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"]
    make_class_tree(tmp_path / "eurosat" / "2750", classes=classes, per_class=3)
    splits = load_splits("eurosat", root=str(tmp_path), img_size=16)
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sizes == (19, 5, 6) and splits.num_classes == 10 and splits.class_names == classes
    indices = [{i for _, i in s.items} for s in (splits.train, splits.val, splits.test)]
    assert not (indices[0] & indices[1]) and not (indices[0] & indices[2]) and not (indices[1] & indices[2])
    x, y = splits.test[0]
    assert x.shape == (3, 16, 16) and isinstance(y, int)
    assert "no official split" in splits.source
