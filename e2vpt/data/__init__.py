"""Datasets for E2VPT: one entry point, `load_splits`, over every source the app and CLI offer.

Every source returns the same `DatasetSplits` (train/val/test Datasets yielding a normalised
float32 `(3, H, W)` tensor and an int label, plus `num_classes`, `class_names` and a `source`
sentence that a run records), so the trainer never knows where images came from.

Split protocol (the choice recorded in `source`): VTAB-1k style, 800 train / 200 val, drawn from
a fixed permutation with `DATA_SEED = 0`. The run's `seed` does not change the data: runs with
different seeds are compared on identical images, as VTAB-1k's fixed lists intend. Sources:

- built-in (no download, in memory, cached): `digits`, `fashion-mnist`, `dsprites-loc`,
  `dsprites-ori`, `clevr-count` (see `builtin.py`, `synthetic.py`);
- torchvision datasets by name, `download` passed through (see `torchvision_sets.py`);
- folders: `imagefolder`, `vtab`, `vtab-train800val200`, `fgvc` (see `folders.py`).
"""

from __future__ import annotations

from typing import Sequence

from e2vpt.data.builtin import BUILTIN_DESCRIPTIONS, clear_cache, fashion_mnist_available, load_builtin
from e2vpt.data.common import DATA_SEED, DatasetSplits, MemoryDataset, check_normalisation, with_val_in_train
from e2vpt.data.folders import ImageFileDataset, build_folder_splits
from e2vpt.data.images import verify_images
from e2vpt.data.torchvision_sets import TORCHVISION_DATASETS, build_torchvision_splits
from e2vpt.errors import DataError

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "dsprites-loc", "dsprites-ori", "clevr-count")
FOLDER_DATASETS: dict[str, str] = {
    "imagefolder": "your images as ROOT/<class>/<image>, or ROOT/train|val|test/<class>/<image>",
    "vtab": "a VTAB-1k task folder (train800.txt, val200.txt, test.txt, images/)",
    "vtab-train800val200": "a VTAB-1k task folder, final protocol: train on train800val200.txt",
    "fgvc": "a VPT FGVC folder (train.json, val.json, test.json mapping image paths to labels)",
}
# Spellings users type, mapped to the canonical names above.
ALIASES = {"fashionmnist": "fashion-mnist", "folder": "imagefolder", "image-folder": "imagefolder",
           "pets": "oxford-pets", "oxford-iiit-pet": "oxford-pets", "cars": "stanford-cars",
           "aircraft": "fgvc-aircraft", "flowers": "flowers102", "caltech": "caltech101",
           "dsprites-location": "dsprites-loc", "dsprites-orientation": "dsprites-ori",
           "vtab-1k": "vtab", "vtab-final": "vtab-train800val200"}

__all__ = ["BUILTIN_DATASETS", "DATA_SEED", "DatasetSplits", "FOLDER_DATASETS", "ImageFileDataset",
           "MemoryDataset", "TORCHVISION_DATASETS", "canonical_name", "clear_cache", "list_datasets", "load_splits",
           "verify_images"]


def list_datasets() -> list[dict]:
    """Every dataset name the app can offer: `{name, kind, needs_root, description}`.

    `kind` is "builtin", "torchvision" or "folder"; `label` says in a few true words what a dataset
    needs on this machine. Fashion-MNIST is built in but reads files: `needs_root` is False where
    Debian's copy is installed, True (a folder holding its files) where it is not.
    """
    fashion_found = fashion_mnist_available()
    entries = [{"name": n, "kind": "builtin", "needs_root": False, "description": BUILTIN_DESCRIPTIONS[n],
                "label": "built in, no files needed"} for n in BUILTIN_DATASETS if n != "fashion-mnist"]
    entries.insert(1, {"name": "fashion-mnist", "kind": "builtin", "needs_root": not fashion_found,
                       "description": BUILTIN_DESCRIPTIONS["fashion-mnist"],
                       "label": "built in, files found" if fashion_found else
                                "needs its files: Debian's dataset-fashion-mnist or a data folder"})
    entries += [{"name": n, "kind": "torchvision", "needs_root": True, "description": spec.description,
                 "label": "torchvision: files in the data root, or download"} for n, spec in TORCHVISION_DATASETS.items()]
    entries += [{"name": n, "kind": "folder", "needs_root": True, "description": d,
                 "label": "your images: a data folder"} for n, d in FOLDER_DATASETS.items()]
    return entries


def canonical_name(name: str) -> str:
    """Lower-case, `_` -> `-`, aliases resolved; raises `DataError` listing valid names if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    known = [e["name"] for e in list_datasets()]
    if key not in known:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(known)}")
    return key


def load_splits(name: str, root: str | None = None, img_size: int = 32,
                mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                seed: int = 0, download: bool = False, train_augment: bool = False,
                train_on_val: bool = False) -> DatasetSplits:
    """Load a dataset's train/val/test splits at `img_size`, normalised with `mean`/`std`.

    Args:
        name: a name from `list_datasets()` (case and `_`/`-` do not matter; a few aliases work).
        root: data folder; required for torchvision (or `$E2VPT_DATA_ROOT`) and folder datasets,
            optional for Fashion-MNIST (searched before Debian's copy), ignored by other built-ins.
        img_size: square side the images are resized to.
        mean: per-channel mean subtracted after scaling to [0, 1] (the backbone's data config).
        std: per-channel std divided by.
        seed: the run's seed. It does not change the data: splits and synthetic images are fixed
            by `DATA_SEED` so runs with different seeds see identical images.
        download: let torchvision (or Fashion-MNIST's fallback) download into `root`.
        train_augment: timm's training augmentation on the train split of file-backed datasets;
            built-in tasks are never augmented (their labels live in position and orientation).
        train_on_val: the train split also holds the val images (VPT's final protocol, once the
            hyper-parameters are chosen); val stays as it is, so its accuracy is no longer held-out.

    Raises:
        DataError: unknown name, missing or malformed files, unreadable images (named by path).
    """
    del seed  # documented above: the data are deliberately independent of the run's seed
    key = canonical_name(name)
    check_normalisation(img_size, mean, std)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    img_size = int(img_size)
    if key in BUILTIN_DATASETS:
        splits = load_builtin(key, root, img_size, mean, std, download)
    elif key in TORCHVISION_DATASETS:
        splits = build_torchvision_splits(key, root, img_size, mean, std, download, train_augment)
    else:
        splits = build_folder_splits(key, root, img_size, mean, std, train_augment)
    return with_val_in_train(splits) if train_on_val else splits
