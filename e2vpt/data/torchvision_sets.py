"""torchvision datasets by name, cut to VTAB-1k's protocol.

Rule for every dataset: train = 800 images of the official train split (a fixed permutation, seed
0); val = 200 images of the official val split where one exists, else 200 more from train
(disjoint); test = the official test split. Datasets with no split argument (EuroSAT, SUN397,
Caltech101) get a fixed permutation instead: the last 20% is test and 800/200 come from the rest.
Only the images a split uses are decoded, once per image size, into the decoded cache (`decoded.py`),
keyed on the dataset's files, so a later run at the same size reads them back instead.

The pitfalls users hit (see docs/DATASETS.md) are handled here: a missing dataset offline becomes
a `DataError` naming the folder torchvision looks in; StanfordCars no longer downloads; Caltech101
has 101 classes (VTAB's 102 include the background class torchvision drops); CLEVR's labels are
object counts, shifted by 3 to VTAB's 0..7, and its test split has no labels, so its official val
split is the test set; Flowers102, SVHN and StanfordCars need scipy, PCAM needs h5py.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from e2vpt.data.common import (DATA_SEED, N_TRAIN, N_VAL, DatasetSplits, sample_indices, split_train_val,
                               split_train_val_test)
from e2vpt.data.square_images import cached_splits
from e2vpt.errors import DataError

ROOT_ENV = "E2VPT_DATA_ROOT"


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to build one torchvision dataset.

    Attributes:
        cls: class name in `torchvision.datasets`.
        num_classes: classes when the dataset object does not list them.
        splits: split name ("train", "val", "test" or "all") -> constructor keyword arguments.
        files: where torchvision expects the data under root (for error messages).
        description: one line for the app's picker.
        requires: importable modules the loader needs.
        label_offset: subtracted from every label (CLEVR counts start at 3).
        can_download: False where torchvision's download is broken.
    """

    cls: str
    num_classes: int
    splits: dict
    files: str
    description: str
    requires: tuple = ()
    label_offset: int = 0
    can_download: bool = True
    class_names: list = field(default_factory=list)


_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
_SPLIT_TV_T = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}
_SPLIT_T_T = {"train": {"split": "train"}, "test": {"split": "test"}}

TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "cifar10": TorchvisionSpec("CIFAR10", 10, _TRAIN_TEST, "cifar-10-batches-py/", "CIFAR-10 (10 classes)"),
    "cifar100": TorchvisionSpec("CIFAR100", 100, _TRAIN_TEST, "cifar-100-python/",
                                "CIFAR-100 (100 classes), a VTAB natural task"),
    "mnist": TorchvisionSpec("MNIST", 10, _TRAIN_TEST, "MNIST/raw/", "MNIST handwritten digits (10 classes)"),
    "svhn": TorchvisionSpec("SVHN", 10, _SPLIT_T_T, "{train,test}_32x32.mat",
                            "SVHN house numbers (10 classes), a VTAB natural task", requires=("scipy",),
                            class_names=[str(i) for i in range(10)]),
    "flowers102": TorchvisionSpec("Flowers102", 102, _SPLIT_TV_T, "flowers-102/",
                                  "Oxford Flowers-102, a VTAB natural task", requires=("scipy",)),
    "dtd": TorchvisionSpec("DTD", 47, {k: {**v, "partition": 1} for k, v in _SPLIT_TV_T.items()}, "dtd/dtd/",
                           "Describable Textures (47 classes), a VTAB natural task"),
    "oxford-pets": TorchvisionSpec("OxfordIIITPet", 37, {"train": {"split": "trainval"},
                                                         "test": {"split": "test"}},
                                   "oxford-iiit-pet/", "Oxford-IIIT Pets (37 breeds), a VTAB natural task"),
    "caltech101": TorchvisionSpec("Caltech101", 101, {"all": {"target_type": "category"}},
                                  "caltech101/101_ObjectCategories/",
                                  "Caltech-101 (101 classes: torchvision drops VTAB's background class)"),
    "eurosat": TorchvisionSpec("EuroSAT", 10, {"all": {}}, "eurosat/2750/",
                               "EuroSAT satellite land use (10 classes), a VTAB specialized task"),
    "sun397": TorchvisionSpec("SUN397", 397, {"all": {}}, "SUN397/", "SUN397 scenes, a VTAB natural task"),
    "stanford-cars": TorchvisionSpec("StanfordCars", 196, _SPLIT_T_T, "stanford_cars/ (devkit/, cars_train/, "
                                     "cars_test/, cars_test_annos_withlabels.mat)",
                                     "Stanford Cars (196 classes), an FGVC task; manual download only",
                                     requires=("scipy",), can_download=False),
    "fgvc-aircraft": TorchvisionSpec("FGVCAircraft", 100, {k: {**v, "annotation_level": "variant"}
                                                          for k, v in _SPLIT_TV_T.items()},
                                     "fgvc-aircraft-2013b/", "FGVC-Aircraft variants (100 classes)"),
    "food101": TorchvisionSpec("Food101", 101, _SPLIT_T_T, "food-101/", "Food-101 (101 dishes)"),
    "gtsrb": TorchvisionSpec("GTSRB", 43, _SPLIT_T_T, "gtsrb/", "German traffic signs (43 classes)",
                             class_names=[str(i) for i in range(43)]),
    "pcam": TorchvisionSpec("PCAM", 2, _SPLIT_TV_T, "pcam/", "PatchCamelyon tumour patches, a VTAB specialized "
                            "task", requires=("h5py",), class_names=["no tumour", "tumour"]),
    "clevr": TorchvisionSpec("CLEVRClassification", 8, {"train": {"split": "train"}, "test": {"split": "val"}},
                             "clevr/CLEVR_v1.0/", "CLEVR object counts 3-10 (VTAB CLEVR-count labels), 18 GB",
                             label_offset=3, class_names=[f"{i} objects" for i in range(3, 11)]),
}


def read_item(item) -> Image.Image:
    """The image of `(dataset, index)`: torchvision datasets built without a transform give PIL images."""
    base, index = item
    return base[index][0]


# where torchvision datasets keep their labels, so the labels of a split are known without decoding it
_LABEL_ATTRIBUTES = ("targets", "labels", "_labels", "y")


def _labels_of(base, indices, offset: int) -> list[int]:
    labels = None
    for attribute in _LABEL_ATTRIBUTES:
        value = getattr(base, attribute, None)
        if value is not None and len(value) == len(base):
            labels = value
            break
    if labels is None and isinstance(getattr(base, "_samples", None), list) and len(base._samples) == len(base):
        labels = [sample[1] for sample in base._samples]
    if labels is None:  # no attribute: read each item (decodes its image)
        return [int(base[i][1]) - offset for i in indices]
    return [int(labels[i]) - offset for i in indices]


def _dataset_files(root: Path, spec: TorchvisionSpec) -> list:
    """Every file of the dataset (path, size, mtime), for the decoded cache's version: its own folder
    under root when torchvision keeps one, else the files directly in root."""
    top = root / spec.files.split("/")[0]
    found = []
    if top.is_dir():
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                found.append((os.path.join(dirpath, name), st.st_size, st.st_mtime_ns))
    else:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                found.append((entry.path, st.st_size, st.st_mtime_ns))
    return found


def _resolve_root(name: str, root: str | None, download: bool) -> Path:
    root = root or os.environ.get(ROOT_ENV)
    if not root:
        raise DataError(f"{name} needs a data root: run with --data-root DIR (add --download to fetch it), "
                        f"or set {ROOT_ENV}")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"data root {path} is not a directory; check --data-root")
    if not path.exists() and not download:
        raise DataError(f"{name} not found under {path} (the directory does not exist); run with --download "
                        f"or place the files at {_where(path, TORCHVISION_DATASETS[name])}")
    return path


def _where(root: Path, spec: TorchvisionSpec) -> str:
    """Where torchvision looks for the files, as a path a user can act on."""
    return f"{root}{os.sep}{spec.files}"


def _construct(name: str, spec: TorchvisionSpec, root: Path, download: bool, kwargs: dict):
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.cls)
    try:
        return cls(str(root), download=download and spec.can_download, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = _where(root, spec)
        if not spec.can_download:
            raise DataError(f"{name} not found under {root}: torchvision can no longer download it; "
                            f"place the files at {where}") from None
        if download:
            raise DataError(f"could not download {name} into {root} ({reason}); check the connection "
                            f"or place the files at {where}") from None
        raise DataError(f"{name} not found under {root}; run with --download or place the files at "
                        f"{where}") from None


def _class_names(spec: TorchvisionSpec, base) -> list[str]:
    if spec.class_names:
        return list(spec.class_names)
    names = getattr(base, "classes", None) or getattr(base, "categories", None)
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(spec.num_classes)]


def build_torchvision_splits(name: str, root: str | None, img_size: int, mean, std, download: bool,
                             train_augment: bool) -> DatasetSplits:
    """`DatasetSplits` for a torchvision dataset under the VTAB-1k rule in the module docstring."""
    spec = TORCHVISION_DATASETS[name]
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise DataError(f"{name} needs {', '.join(missing)}: pip install {' '.join(missing)}")
    path = _resolve_root(name, root, download)
    bases = {split: _construct(name, spec, path, download, kw) for split, kw in spec.splits.items()}
    if "all" in bases:
        base = bases["all"]
        tr, va, te = split_train_val_test(len(base), f"{name} under {path}")
        parts = {"train": (base, tr), "val": (base, va), "test": (base, te)}
        protocol = (f"no official split, so a fixed permutation (seed {DATA_SEED}) of its {len(base)} images: "
                    f"last 20% ({len(te)}) test, {len(tr)} train / {len(va)} val from the rest")
    else:
        train_base = bases["train"]
        if "val" in bases:
            tr = sample_indices(len(train_base), N_TRAIN)
            va = sample_indices(len(bases["val"]), N_VAL)
            parts = {"train": (train_base, tr), "val": (bases["val"], va)}
            origin = "the official val split"
        else:
            tr, va = split_train_val(len(train_base), f"{name} train split")
            parts = {"train": (train_base, tr), "val": (train_base, va)}
            origin = "the rest of the train split"
        test_base = bases["test"]
        parts["test"] = (test_base, range(len(test_base)))
        protocol = (f"VTAB-1k style: {len(tr)} train from the official train split and {len(va)} val from "
                    f"{origin} (fixed permutation, seed {DATA_SEED}), test = the official "
                    f"{spec.splits['test'].get('split', 'test')} split ({len(test_base)})")
    keys = {id(base): key for key, base in bases.items()}
    items = {split: [(base, int(i)) for i in idx] for split, (base, idx) in parts.items()}
    identity = ([spec.cls, os.path.realpath(path), spec.splits],
                [{split: [(keys[id(b)], i) for b, i in its] for split, its in items.items()},
                 _dataset_files(path, spec)])
    datasets, _ = cached_splits({split: (its, _labels_of(parts[split][0], [i for _, i in its], spec.label_offset))
                                 for split, its in items.items()}, img_size, mean, std, train_augment,
                                f"{name} under {path}", read=read_item, identity=identity)
    class_names = _class_names(spec, parts["train"][0])
    aug = "random resized crop and flip on the training device" if train_augment else "no augmentation"
    source = (f"torchvision {spec.cls} from {path}: {protocol}; resized to {img_size}x{img_size} (bicubic), "
              f"{aug}.")
    return DatasetSplits(train=datasets["train"], val=datasets["val"], test=datasets["test"],
                         num_classes=len(class_names), class_names=class_names, source=source)

