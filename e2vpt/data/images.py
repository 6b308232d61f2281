"""Reading one image file, and saying clearly why one cannot be used.

Why a module of its own: the decoded-pixel cache (`decoded.py`) and the image-folder datasets
(`folders.py`) both open image files and both must name a bad file and its problem the same way;
each imports this, and neither imports the other.
"""

from __future__ import annotations

import os
from typing import Iterable

from PIL import Image

from e2vpt.errors import DataError


def open_file(path: str) -> Image.Image:
    """An image file, fully read (a truncated file fails here, not later)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def image_problem(path: str) -> str | None:
    """Why an image cannot be used, or None. Decodes it fully (JPEG at reduced size: fast)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (64, 64))  # decode at 1/8 scale: still reads every byte
            im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return str(exc).replace(str(path), "").strip(" '\"") or type(exc).__name__
    return None


def verify_images(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Decode each image; return `(path, reason)` for every one that is missing, empty or corrupt."""
    problems = []
    for path in paths:
        reason = image_problem(str(path))
        if reason is not None:
            problems.append((str(path), reason))
    return problems


def load_image(path: str) -> Image.Image:
    """Open an image as RGB, or raise a `DataError` that names the file and what is wrong with it."""
    try:
        return open_file(path)
    except Exception:
        reason = image_problem(path) or "cannot be decoded"
        raise DataError(f"cannot read image {path}: {reason}; delete or replace it") from None


def refuse_unreadable(problems: list[tuple[str, str]], where: str) -> None:
    """A `DataError` naming the first five unreadable images and counting the rest, if there are any."""
    if problems:
        shown = "; ".join(f"{p} ({r})" for p, r in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise DataError(f"{len(problems)} unreadable image(s) in {where}: {shown}{more}; delete or replace them")
