"""How one image file becomes the tensor a run's model reads: the run's own preprocessing, for prediction.

Why here: each data source decides how its images are made square and small. The built-in tasks are
grayscale or small renders resized bilinearly with antialiasing (`common.resize_to_uint8`); image files
and torchvision sets are resized whole with PIL's bicubic filter (`decoded.py`). A prediction on a new
image must do what the run's dataset did, or the model is judged on inputs unlike any it saw. A
dataset image saved as a file at the run's size comes back as the very tensor the run evaluated.

The rule is plain data (`ImageRule.to_dict`), so an exported adapter carries it to another machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from e2vpt.data.builtin import BUILTIN_DESCRIPTIONS
from e2vpt.data.common import resize_to_uint8
from e2vpt.data.decoded import decode_square
from e2vpt.data.images import image_problem
from e2vpt.data.pipeline import normalise
from e2vpt.errors import DataError

GRAY_DATASETS = ("digits", "fashion-mnist")  # built in as one channel, replicated to three
BUILTIN_DATASETS = tuple(BUILTIN_DESCRIPTIONS)  # resized bilinearly from their small native size
MAX_PIXELS = 50_000_000  # an image's width x height, read from its header before it is decoded
MAX_SIZE = 4096  # the largest square side a rule may ask for


@dataclass(frozen=True)
class ImageRule:
    """What a run did to every image: resize it whole to `size` x `size` (`bilinear`: antialiased, as the
    built-in tasks; `bicubic`: PIL's, as image files), as `gray` or `rgb`, then `(x / 255 - mean) / std`."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str  # bilinear | bicubic
    channels: str  # gray | rgb

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, value) -> "ImageRule":
        """The rule an adapter recorded; `DataError` naming what is wrong with it."""
        try:
            rule = cls(size=value["size"], mean=tuple(float(m) for m in value["mean"]),
                       std=tuple(float(s) for s in value["std"]), resize=value["resize"], channels=value["channels"])
        except (KeyError, TypeError, ValueError):
            raise DataError("the preprocessing recorded is not {size, mean, std, resize, channels}") from None
        if (type(rule.size) is not int or not 1 <= rule.size <= MAX_SIZE or len(rule.mean) != 3 or len(rule.std) != 3
                or not all(np.isfinite(rule.mean)) or not all(s > 0 and np.isfinite(s) for s in rule.std)
                or rule.resize not in ("bilinear", "bicubic") or rule.channels not in ("gray", "rgb")):
            raise DataError(f"the preprocessing recorded is not usable: {rule.to_dict()}")
        return rule


def image_rule(dataset: str, size: int, mean, std) -> ImageRule:
    """The rule of a run on `dataset` (a canonical name) with its backbone's size and normalisation."""
    return ImageRule(size=int(size), mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                     resize="bilinear" if dataset in BUILTIN_DATASETS else "bicubic",
                     channels="gray" if dataset in GRAY_DATASETS else "rgb")


def square_pixels(image: Image.Image, rule: ImageRule) -> torch.Tensor:
    """A PIL image as uint8 `(1|3, size, size)`, resized the way the run's dataset resized its own."""
    if rule.resize == "bicubic" and rule.channels == "rgb":  # the decoded cache's own resize
        return torch.from_numpy(decode_square(image, rule.size, read=lambda same: same)).permute(2, 0, 1).contiguous()
    image = image.convert("L" if rule.channels == "gray" else "RGB")
    if rule.resize == "bicubic":
        image = image.resize((rule.size, rule.size), Image.BICUBIC) if image.size != (rule.size,) * 2 else image
        return torch.from_numpy(np.array(image, dtype=np.uint8)).unsqueeze(0)
    pixels = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0)
    pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    return resize_to_uint8(pixels.unsqueeze(0), rule.size)[0]


def prepare(image: Image.Image, rule: ImageRule) -> torch.Tensor:
    """A PIL image as the normalised float `(3, size, size)` the model reads."""
    return normalise(square_pixels(image, rule), torch.tensor(rule.mean), torch.tensor(rule.std))


def read_image(path: str, rule: ImageRule) -> torch.Tensor:
    """An image file as the model reads it; `DataError` saying in one line why it cannot be used
    (missing, not an image, truncated, larger than `MAX_PIXELS`)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DataError(f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS:,} read here")
            image.load()
            return prepare(image, rule)
    except DataError:
        raise
    except Exception:  # PIL raises many kinds for a file that is not a whole image
        raise DataError(f"{path}: {image_problem(path) or 'cannot be decoded'}") from None
