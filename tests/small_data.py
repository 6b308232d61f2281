"""A small real image folder for tests that train many times but test no learning (kills, resumes, faults).

scikit-learn's handwritten digits written as PNG files, `per_class` per digit, in the `imagefolder`
layout (ROOT/<class>/<image>.png). The demo ViT trains an epoch of 800 built-in digits in ~6 s on two
cores; these tests train dozens of runs and only need every code path (epochs, scoring, pruning,
rewinding, checkpoints), which a few batches exercise as well as thirteen. The folder is made once and
kept under tests/artifacts (git-ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def digits_folder(per_class: int = 24) -> Path:
    """The folder's path, writing it first if it is missing or incomplete (a `complete` file marks it)."""
    root = ARTIFACTS / f"digits-{per_class}-per-class"
    if (root / "complete").is_file():
        return root
    import shutil

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    staging = root.with_name(f"{root.name}.{os.getpid()}.tmp")
    for label in range(10):
        folder = staging / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(digits.target == label)[:per_class]
        for i in picks:
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    (staging / "complete").write_text("")
    if root.exists() and not (root / "complete").is_file():
        shutil.rmtree(root, ignore_errors=True)  # an interrupted earlier attempt
    try:
        staging.rename(root)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return root
