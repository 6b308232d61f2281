"""Datasets that are files on disk: a class-per-folder tree, VTAB-1k task lists, VPT's FGVC json.

Download links for VTAB-1k and FGVC are often dead, so users arrive with whatever copy they found;
every layout problem (missing root, empty class folder, malformed list line, unreadable image)
therefore becomes a one-line `DataError` naming the file, never a stack trace from a DataLoader
worker an hour into training. Small collections are verified eagerly (`EAGER_VERIFY_MAX`); every
image is also checked lazily when it is read.

Layouts:
- `imagefolder`: `root/<class>/<image>` (nested folders allowed), split deterministically: the last
  20% of a fixed permutation is test, then 800 train / 200 val from the rest (or 80/20 of the rest
  when it is smaller). If `root/train/` exists with `root/test/` and/or `root/val/`, those folders
  are used as given; a missing val is carved from train (200, or 20% when train is small), and a
  `val/` without `test/` is treated as the test set (the ImageNet convention).
- `vtab`: `train800.txt` (train), `val200.txt` (val), `test.txt` (test); each line
  `images/<split>/NNNNNN.jpg <label>` relative to root. `vtab-train800val200` is VTAB's final
  protocol: train on `train800val200.txt`; val is still `val200.txt`, a subset of train, so its
  accuracy is not held-out and selecting the last epoch is the honest choice.
- `fgvc`: VPT's `train.json` / `val.json` / `test.json`, each `{relative image path: label}`. Paths
  resolve against root, `root/images` (CUB, NABirds) or `root/Images` (Stanford Dogs), whichever
  holds the first entries, as VPT's per-dataset loaders do. Labels (any ints or strings) are mapped
  to 0..K-1 in sorted order over all three files. A missing `val.json` is carved from train.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from e2vpt.data.common import DatasetSplits, split_train_val, split_train_val_test
from e2vpt.data.images import refuse_unreadable, verify_images
from e2vpt.data.square_images import SquareImages, cached_splits
from e2vpt.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Up to this many images, every image a run will read is decoded once before training starts
# (about 1 ms each with JPEG draft mode); larger collections check train+val only, and test lazily.
EAGER_VERIFY_MAX = 3000
VTAB_LISTS = {"vtab": ("train800.txt", "val200.txt", "test.txt"),
              "vtab-train800val200": ("train800val200.txt", "val200.txt", "test.txt")}

Sample = tuple[str, int]


def _check_inside(splits: Sequence[list[Sample]], folder: Path) -> None:
    """Every image must really be inside the dataset folder: a link or a '..' in a list that leads
    out of it is refused, so a dataset never reads files elsewhere on the machine."""
    top = os.path.realpath(folder)
    for split in splits:
        for path, _ in split:
            real = os.path.realpath(path)
            if os.path.commonpath([top, real]) != top:
                raise DataError(f"{path} leads outside the dataset folder {folder} (to {real}); only images "
                                "inside it are read: copy them in instead of linking")


def _eager_verify(splits: Sequence[list[Sample]], where: str) -> None:
    """Check everything if small, else train+val (used every epoch) if that is small."""
    train_val = [p for p, _ in splits[0]] + [p for p, _ in splits[1]]
    everything = train_val + [p for p, _ in splits[2]]
    if len(everything) <= EAGER_VERIFY_MAX:
        refuse_unreadable(verify_images(everything), where)
    elif len(train_val) <= EAGER_VERIFY_MAX:
        refuse_unreadable(verify_images(train_val), where)


class ImageFileDataset(SquareImages):
    """Image files given as `(path, label)` samples (see `SquareImages`)."""

    def __init__(self, samples: Sequence[Sample], img_size: int, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False, decoded=None, rows_in_cache: Sequence[int] | None = None):
        super().__init__([p for p, _ in samples], [label for _, label in samples], img_size, mean, std, augment,
                         decoded, rows_in_cache)


def _require_dir(root: str | None, name: str) -> Path:
    if not root:
        raise DataError(f"dataset {name!r} needs a data root: run with --data-root DIR")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data root {path} does not exist; check --data-root")
    if not path.is_dir():
        raise DataError(f"data root {path} is not a directory; check --data-root")
    return path


# ---------------------------------------------------------------------------------------------
# imagefolder


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _class_dirs(directory: Path) -> list[Path]:
    dirs = sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DataError(f"no class folders in {directory}; expected {directory}/<class name>/<image files>")
    return dirs


def _images_in(class_dir: Path) -> list[str]:
    """Image files under `class_dir`, sub-folders included. Links are followed (where they lead is
    checked by `_check_inside`), but a folder reached twice, a link loop, is refused: followed, it
    would copy the same images over and over, into train and test alike."""
    found, seen = [], {}
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise DataError(f"{dirpath} is the folder {seen[real]} again, through a link (a link loop or a "
                            "second link to it); remove the link so each image is read once")
        seen[real] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
    if not found:
        raise DataError(f"class folder {class_dir} has no images ({', '.join(IMG_EXTENSIONS)}); "
                        "add images or remove the folder")
    return found


def _scan(directory: Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    """Classes (sorted folder names) and samples of one class-per-folder tree."""
    dirs = _class_dirs(directory)
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    unknown = [d for d in dirs if d.name not in classes]
    if unknown:
        raise DataError(f"class folder {unknown[0]} has no counterpart in the train folder; "
                        "rename or remove it")
    index = {c: i for i, c in enumerate(classes)}
    samples = [(p, index[d.name]) for d in dirs for p in _images_in(d)]
    return classes, samples


def _take(samples: list[Sample], indices) -> list[Sample]:
    return [samples[i] for i in indices]


def load_imagefolder(root: str | None) -> tuple[list[list[Sample]], list[str], str]:
    """Train/val/test samples, class names and a source sentence for a class-per-folder tree."""
    path = _require_dir(root, "imagefolder")
    train_dir, val_dir, test_dir = path / "train", path / "val", path / "test"
    if train_dir.is_dir() and (val_dir.is_dir() or test_dir.is_dir()):
        classes, train = _scan(train_dir)
        if not test_dir.is_dir():  # train/ + val/: val/ plays test, as with ImageNet
            test_dir, val_dir = val_dir, None
        test = _scan(test_dir, classes)[1]
        if val_dir is not None and val_dir.is_dir():
            val = _scan(val_dir, classes)[1]
            protocol = f"the given train/ val/ test/ folders ({len(train)}/{len(val)}/{len(test)} images)"
        else:
            tr, va = split_train_val(len(train), str(train_dir))
            train, val = _take(train, tr), _take(train, va)
            protocol = (f"the given train/ and {test_dir.name}/ folders, with {len(val)} val images held out "
                        f"of train by a fixed permutation (seed 0): {len(train)}/{len(val)}/{len(test)}")
    else:
        classes, samples = _scan(path)
        tr, va, te = split_train_val_test(len(samples), str(path))
        train, val, test = _take(samples, tr), _take(samples, va), _take(samples, te)
        protocol = (f"a fixed permutation (seed 0) of its {len(samples)} images: last 20% test, then "
                    f"{len(train)} train / {len(val)} val")
    splits = [train, val, test]
    _check_inside(splits, path)
    return splits, classes, f"Image folder {path} ({len(classes)} classes), split by {protocol}."


# ---------------------------------------------------------------------------------------------
# VTAB-1k lists


def _read_vtab_list(root: Path, list_name: str) -> list[Sample]:
    list_path = root / list_name
    samples = []
    with open(list_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{list_path}:{lineno}: expected '<image path> <integer label>', got {line!r}")
            label = int(parts[1])
            if label < 0:
                raise DataError(f"{list_path}:{lineno}: negative label {label}")
            samples.append((str(root / parts[0]), label))
    if not samples:
        raise DataError(f"{list_path} lists no images")
    missing = [p for p, _ in samples if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {list_path} are missing, e.g. {missing[0]}; "
                        "paths are relative to the task folder")
    return samples


def load_vtab(root: str | None, name: str = "vtab") -> tuple[list[list[Sample]], list[str], str]:
    """Train/val/test samples from a VTAB-1k task folder (NOAH's layout)."""
    path = _require_dir(root, name)
    lists = VTAB_LISTS[name]
    absent = [n for n in lists if not (path / n).is_file()]
    if absent:
        raise DataError(f"{path} is not a VTAB-1k task folder: missing {', '.join(absent)}; "
                        f"expected {', '.join(lists)} with lines 'images/<split>/NNNNNN.jpg <label>'")
    splits = [_read_vtab_list(path, n) for n in lists]
    _check_inside(splits, path)
    num_classes = 1 + max(label for split in splits for _, label in split)
    note = (" (VTAB's final protocol; val200 is inside train, so val accuracy is not held-out)"
            if name == "vtab-train800val200" else "")
    source = (f"VTAB-1k task folder {path}: train = {lists[0]} ({len(splits[0])}), val = {lists[1]} "
              f"({len(splits[1])}), test = {lists[2]} ({len(splits[2])}){note}.")
    return splits, [str(i) for i in range(num_classes)], source


# ---------------------------------------------------------------------------------------------
# VPT FGVC json


def _read_fgvc_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            anno = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}; it should map image paths to labels") from None
    if not isinstance(anno, dict) or not anno:
        raise DataError(f"{path} should be a non-empty JSON object mapping image paths to labels")
    bad = [v for v in anno.values() if isinstance(v, bool) or not isinstance(v, (int, str))]
    if bad:
        raise DataError(f"{path}: labels must be integers or strings, got {bad[0]!r}")
    return anno


def _fgvc_image_dir(root: Path, anno: dict) -> Path:
    """The folder VPT's loader for this dataset would join the json's paths to."""
    probe = list(anno)[:5]
    candidates = [root, root / "images", root / "Images"]
    for base in candidates:
        if all((base / p).is_file() for p in probe):
            return base
    tried = ", ".join(str(base / probe[0]) for base in candidates)
    raise DataError(f"images listed in {root / 'train.json'} not found (tried {tried}); place them under "
                    f"{root} or {root / 'images'}")


def load_fgvc(root: str | None) -> tuple[list[list[Sample]], list[str], str]:
    """Train/val/test samples from VPT's FGVC json layout."""
    path = _require_dir(root, "fgvc")
    absent = [n for n in ("train.json", "test.json") if not (path / n).is_file()]
    if absent:
        raise DataError(f"{path} is not a VPT FGVC folder: missing {', '.join(absent)}; expected train.json, "
                        "val.json, test.json mapping image paths to labels")
    annos = {s: _read_fgvc_json(path / f"{s}.json") for s in ("train", "val", "test")
             if (path / f"{s}.json").is_file()}
    image_dir = _fgvc_image_dir(path, annos["train"])
    # Sort ints numerically and strings alphabetically, without ever comparing an int with a string.
    labels = sorted({v for a in annos.values() for v in a.values()}, key=lambda v: (isinstance(v, str), v))
    index = {v: i for i, v in enumerate(labels)}
    samples = {s: [(str(image_dir / p), index[v]) for p, v in a.items()] for s, a in annos.items()}
    for split, items in samples.items():
        missing = [p for p, _ in items if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{len(missing)} image(s) listed in {path / (split + '.json')} are missing, "
                            f"e.g. {missing[0]}")
    if "val" in samples:
        train, val = samples["train"], samples["val"]
        protocol = "train.json / val.json / test.json as given"
    else:
        tr, va = split_train_val(len(samples["train"]), str(path / "train.json"))
        train, val = _take(samples["train"], tr), _take(samples["train"], va)
        protocol = f"train.json with {len(val)} val images held out by a fixed permutation (seed 0), test.json"
    splits = [train, val, samples["test"]]
    _check_inside(splits, path)
    source = (f"VPT FGVC folder {path} (images under {image_dir}), {protocol}: "
              f"{len(train)} train / {len(val)} val / {len(splits[2])} test.")
    return splits, [str(v) for v in labels], source


def build_folder_splits(name: str, root: str | None, img_size: int, mean, std,
                        train_augment: bool) -> DatasetSplits:
    """`DatasetSplits` for one of the on-disk layouts, read through the decoded cache when there is one.

    Building the cache decodes every image, so it also verifies them all (an unreadable one is
    named and the dataset refused); without a cache, images are verified as `_eager_verify` says.
    """
    if name == "imagefolder":
        splits, classes, source = load_imagefolder(root)
    elif name == "fgvc":
        splits, classes, source = load_fgvc(root)
    else:
        splits, classes, source = load_vtab(root, name)
    where = str(Path(root).expanduser())
    named = {"train": splits[0], "val": splits[1], "test": splits[2]}
    datasets, decoded = cached_splits({k: ([p for p, _ in v], [label for _, label in v]) for k, v in named.items()},
                                      img_size, mean, std, train_augment, where)
    if decoded is None:
        _eager_verify(splits, where)
    if train_augment:
        source = source[:-1] + "; training images augmented (random resized crop and flip, on the training device)."
    return DatasetSplits(train=datasets["train"], val=datasets["val"], test=datasets["test"],
                         num_classes=len(classes), class_names=classes, source=source)
