"""The input pipeline: decoded-image cache (decoded.py) and device batches (pipeline.py).

Properties: the cache gives exactly the evaluation transform's pixels; an edited folder or another
size is rebuilt; an unreadable image is named and leaves no cache; a kill -9 mid-write leaves no
half-written cache; two builds at once both succeed; the same seed gives the same batches with and
without the cache and whatever the number of worker processes; crops follow RandomResizedCrop's rule.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2vpt.data import decoded, load_splits
from e2vpt.data.common import eval_transform
from e2vpt.data.images import load_image
from e2vpt.data.pipeline import RATIO, SCALE, DeviceBatches, random_resized_crops
from e2vpt.errors import DataError
from e2vpt.training.distributed import global_batches

REPO = Path(__file__).resolve().parents[1]


def photo_folder(root: Path, per_class: int = 8, classes: int = 3, size=(50, 38)) -> Path:
    """A class-per-folder tree of small JPEGs (smooth colour fields, like photographs)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            coarse = rng.random((size[1] // 6 + 1, size[0] // 6 + 1, 3))
            pixels = np.kron(coarse, np.ones((6, 6, 1)))[:size[1], :size[0]] * 200 + c * 20
            path = root / f"class{c}" / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


def batches_of(dataset, seed: int, workers="auto", batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = global_batches(len(dataset), batch, True, seed)
    return list(DeviceBatches(dataset, order, torch.device("cpu"), seed=seed, workers=workers))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("E2VPT_CACHE_DIR", str(folder))
    return folder


def test_cached_images_are_the_evaluation_transforms_pixels_bit_for_bit(tmp_path, cache):
    root = photo_folder(tmp_path / "pics")
    splits = load_splits("imagefolder", str(root), img_size=24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    assert splits.test.decoded is not None and len(list(cache.glob("*.npy"))) == 1
    reference = eval_transform(24, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    for ds in (splits.train, splits.val, splits.test):
        for i in (0, len(ds) - 1):
            assert torch.equal(ds[i][0], reference(load_image(ds.samples[i][0])))
    plain = next(iter(DeviceBatches(splits.test, [[0, 1, 2]], torch.device("cpu"))))[0]
    assert torch.equal(plain, torch.stack([splits.test[i][0] for i in range(3)]))


def test_an_edited_folder_is_rebuilt_and_the_stale_cache_removed(tmp_path, cache):
    root = photo_folder(tmp_path / "pics")
    first = load_splits("imagefolder", str(root), img_size=16)
    old_files = sorted(cache.glob("*.npy"))
    path = first.test.samples[0][0]
    Image.new("RGB", (50, 38), (255, 0, 0)).save(path)  # same name, new pixels
    second = load_splits("imagefolder", str(root), img_size=16)
    assert sorted(cache.glob("*.npy")) != old_files and len(list(cache.glob("*.npy"))) == 1
    red = second.test.square(0).float().mean(dim=(1, 2))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15  # the new pixels, not the cached old ones
    third = load_splits("imagefolder", str(root), img_size=16)
    assert third.test.decoded.build_s == 0.0  # unchanged: read back, not rebuilt
    load_splits("imagefolder", str(root), img_size=20)  # another size: its own cache, the first kept
    assert len(list(cache.glob("*.npy"))) == 2


def test_a_cache_file_that_is_not_whole_is_rebuilt(tmp_path, cache):
    root = photo_folder(tmp_path / "pics")
    good = load_splits("imagefolder", str(root), img_size=16).test.square(3).clone()
    (file,) = cache.glob("*.npy")
    file.write_bytes(file.read_bytes()[:1000])  # cut short behind our back
    again = load_splits("imagefolder", str(root), img_size=16)
    assert again.test.decoded.build_s > 0 and torch.equal(again.test.square(3), good)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory build", "streamed build"])
def test_an_unreadable_image_is_named_and_no_cache_is_left(tmp_path, cache, monkeypatch, in_memory):
    root = photo_folder(tmp_path / "pics")
    bad = root / "class1" / "003.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    monkeypatch.setattr(decoded, "_fits_in_memory", lambda nbytes: in_memory)
    with pytest.raises(DataError, match=r"1 unreadable image.*class1/003\.jpg"):
        load_splits("imagefolder", str(root), img_size=16)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_crops_follow_random_resized_crops_rule():
    boxes, flips = random_resized_crops(4000, 224, 224, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T.double()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    area, ratio = h * w / 224**2, w / h
    assert area.min() >= SCALE[0] * 0.95 and area.max() <= SCALE[1]
    assert ratio.min() >= RATIO[0] * 0.97 and ratio.max() <= RATIO[1] * 1.03  # rounding to whole pixels
    assert abs(area.mean().item() - 0.5) < 0.05  # area share is uniform between 0.08 and 1 before rejection
    assert abs(flips.float().mean().item() - 0.5) < 0.03
    again, _ = random_resized_crops(4000, 224, 224, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_augmented_batches_depend_on_the_seed_only_not_on_workers_or_the_cache(tmp_path, cache, monkeypatch):
    root = photo_folder(tmp_path / "pics")
    train = load_splits("imagefolder", str(root), img_size=16, train_augment=True).train
    in_process = batches_of(train, seed=5, workers=0)
    with_workers = batches_of(train, seed=5, workers=2)
    monkeypatch.setenv("E2VPT_CACHE_DIR", "off")
    monkeypatch.setattr(decoded, "_fits_in_memory", lambda nbytes: False)
    uncached = load_splits("imagefolder", str(root), img_size=16, train_augment=True).train
    assert uncached.decoded is None
    decoded_as_read = batches_of(uncached, seed=5, workers=0)
    for other in (with_workers, decoded_as_read):
        assert len(other) == len(in_process)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, other))
    different = batches_of(train, seed=6, workers=0)
    assert not torch.equal(in_process[0][0], different[0][0])
    plain = load_splits("imagefolder", str(root), img_size=16).train
    assert not torch.equal(batches_of(plain, seed=5, workers=0)[0][0], in_process[0][0])  # really augmented


def test_built_in_batches_are_the_datasets_own_tensors():
    splits = load_splits("digits", img_size=16)
    batch = [3, 1, 4, 1, 5]
    images, labels = next(iter(DeviceBatches(splits.train, [batch], torch.device("cpu"))))
    assert torch.equal(images, torch.stack([splits.train[i][0] for i in batch]))
    assert labels.tolist() == [splits.train[i][1] for i in batch]


# --------------------------------------------------------------------------------------------------
# real processes: a kill -9 while the cache is written, and two builds of the same cache at once

BUILD = """
import sys, time
from e2vpt.data import decoded, load_splits
if sys.argv[3] == "slow":  # a build that streams to disk and takes its time (so the test can kill it)
    decoded._fits_in_memory = lambda nbytes: False
    decoded.CHUNK = 2
    real = decoded._decode
    decoded._decode = lambda item, size, read: (time.sleep(0.05), real(item, size, read))[1]
print(load_splits("imagefolder", sys.argv[1], img_size=int(sys.argv[2])).test.decoded.where, flush=True)
"""


def build_process(root: Path, size: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD, str(root), str(size), mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.fault
def test_kill_9_while_the_cache_is_written_leaves_no_cache_and_the_next_run_builds_it(tmp_path, cache):
    root = photo_folder(tmp_path / "pics", per_class=20)
    proc = build_process(root, 16, "slow")
    deadline = time.monotonic() + 60

    def partly_written() -> bool:
        return cache.exists() and any(p.stat().st_size > 2000 for p in cache.glob(".*.tmp"))

    while not partly_written():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(cache.glob("*.npy")) == [] and len(list(cache.glob(".*.tmp"))) == 1  # never a half cache
    splits = load_splits("imagefolder", str(root), img_size=16)
    assert splits.test.decoded.build_s > 0
    assert [p.name for p in cache.iterdir()] == [splits.test.decoded.file.name]  # the dead writer's temp removed
    reference = eval_transform(16, (0.5,) * 3, (0.5,) * 3)
    assert torch.equal(splits.test[0][0], reference(load_image(splits.test.samples[0][0])))


@pytest.mark.fault
def test_two_builds_of_the_same_cache_at_once_both_succeed(tmp_path, cache):
    root = photo_folder(tmp_path / "pics", per_class=20)
    procs = [build_process(root, 16, "fast") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [p.suffix for p in cache.iterdir()] == [".npy"]
    splits = load_splits("imagefolder", str(root), img_size=16)
    assert splits.test.decoded.build_s == 0.0
    reference = eval_transform(16, (0.5,) * 3, (0.5,) * 3)
    assert all(torch.equal(splits.test[i][0], reference(load_image(splits.test.samples[i][0])))
               for i in range(len(splits.test)))


def test_images_too_big_for_memory_are_memory_mapped(tmp_path, cache, monkeypatch):
    root = photo_folder(tmp_path / "pics")
    monkeypatch.setattr(decoded, "_fits_in_memory", lambda nbytes: False)
    splits = load_splits("imagefolder", str(root), img_size=16)
    assert splits.train.decoded.where == "memory-mapped file"
    assert isinstance(splits.train.decoded.pixels, np.memmap)
    reference = eval_transform(16, (0.5,) * 3, (0.5,) * 3)
    assert torch.equal(splits.train[2][0], reference(load_image(splits.train.samples[2][0])))
    assert math.isclose(splits.train.decoded.pixels.nbytes, len(set(p for s in (splits.train, splits.val, splits.test)
                                                                      for p, _ in s.samples)) * 16 * 16 * 3)


@pytest.mark.slow
def test_a_run_learns_the_same_weights_whatever_the_number_of_loading_processes(tmp_path, cache):
    from small_data import digits_folder

    from e2vpt import train
    from e2vpt.config import TrainConfig
    from e2vpt.runs import RunDir

    weights, accs, builds = [], [], []
    for workers in ("0", "2"):
        config = TrainConfig(method="e2vpt", backbone="demo", dataset="imagefolder", data_root=str(digits_folder()),
                             train_augment=True, epochs=1, prune_rounds=1, retrain_epochs=1, batch_size=32,
                             workers=workers)
        summary = train(config, tmp_path / f"w{workers}", quiet=True)
        accs.append((summary["val_acc"], summary["test_acc"]))
        builds.append((summary["decoded_cache"], summary["decoded_cache_build_s"]))
        weights.append(RunDir(tmp_path / f"w{workers}").load_weights())
    assert accs[0] == accs[1]
    assert builds[0][0] == builds[1][0] == "memory" and builds[0][1] > 0 and builds[1][1] == 0  # reused
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_torchvision_set_is_cached_too_and_rebuilt_when_one_of_its_files_changes(tmp_path, cache):
    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"]
    for c, name in enumerate(classes):  # EuroSAT's layout: torchvision's ImageFolder under eurosat/2750
        photo_folder(tmp_path / "tv" / "eurosat" / "2750" / name, per_class=3, classes=1)
    first = load_splits("eurosat", str(tmp_path / "tv"), img_size=16)
    assert first.train.decoded.build_s > 0
    reference = eval_transform(16, (0.5,) * 3, (0.5,) * 3)
    for ds in (first.train, first.test):
        base, index = ds.items[0]
        image, label = base[index]
        assert torch.equal(ds[0][0], reference(image.convert("RGB"))) and ds[0][1] == label
    again = load_splits("eurosat", str(tmp_path / "tv"), img_size=16)
    assert again.train.decoded.build_s == 0.0 and torch.equal(again.test[1][0], first.test[1][0])
    base, index = first.test.items[0]
    Image.new("RGB", (50, 38), (0, 0, 255)).save(base.samples[index][0])
    edited = load_splits("eurosat", str(tmp_path / "tv"), img_size=16)
    assert edited.train.decoded.build_s > 0 and edited.test.square(0)[2].float().mean() > 240
    assert len(list(cache.glob("*.npy"))) == 1
