"""Class probabilities for image files, from a run (at any finished round) or from an adapter folder.

Each image goes through the run's own preprocessing (`data.preprocess`), so an image of the run's test
split saved as a file gets the prediction the run's evaluation gave it. An image that cannot be used
(missing, not an image, truncated, too large) is one line, and every other image is still predicted.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..data.folders import IMG_EXTENSIONS
from ..data.preprocess import ImageRule, read_image
from ..errors import DataError, UserError
from ..fileio import atomic_write_bytes
from ..training.build import autocast_for, resolve_device

MAX_IMAGES = 100_000  # images one command predicts; more is refused before any is read
MAX_ENTRIES = 1_000_000  # files and folders looked at while searching folders and patterns
MAX_BATCH = 4096


@dataclass
class Predictor:
    """A model with what turns files into its inputs and its outputs into names."""

    model: torch.nn.Module
    rule: ImageRule
    class_names: list[str]
    device: torch.device
    precision: str
    label: str  # what it is, for messages: "run R, round 2" or "adapter A"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes, (B, classes), for a batch of preprocessed images."""
        autocast = autocast_for(self.device, self.precision)
        images = images.to(self.device)
        if autocast:
            with autocast():
                logits = self.model(images)
        else:
            logits = self.model(images)
        return logits.float().softmax(dim=1).cpu()


def open_predictor(source: str | Path, round_index: int | None = None, device: str = "auto",
                   backbone: str | None = None, weights: str | None = None) -> Predictor:
    """A predictor from a run folder (at `round_index`, default the round it reports) or an adapter folder."""
    from .adapter import CONFIG_FILE, load_adapter

    source, dev = Path(source).expanduser(), resolve_device(device)
    if (source / CONFIG_FILE).is_file():
        if round_index is not None:
            raise UserError(f"{source} is an adapter (one round, fixed when it was exported); --round is for runs")
        model = load_adapter(source, backbone=backbone, weights=weights, device=str(dev))
        config = model.adapter_config
        return Predictor(model, ImageRule.from_dict(config["preprocessing"]), config["dataset"]["class_names"], dev,
                         config["settings"].get("precision", "fp32"), f"adapter {source}")
    if backbone is not None or weights is not None:
        raise UserError(f"{source} is a run: it is predicted with the backbone it trained on; --backbone and "
                        "--weights are for adapters")
    from .trained import open_trained

    trained = open_trained(source, round_index, device=str(dev))
    return Predictor(trained.model, trained.rule, trained.class_names, dev, trained.config.precision,
                     f"run {trained.run_id}, round {trained.round}")


def find_images(specs: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files, [(what, why not)]) for files, folders (searched recursively, hidden ones skipped) and
    glob patterns. Bounded as it goes: more than `MAX_IMAGES` images, or more than `MAX_ENTRIES` entries
    looked at, is a `UserError` before any image is read."""
    found, problems, seen, looked = [], [], set(), [0]

    def count_entry() -> None:
        looked[0] += 1
        if looked[0] > MAX_ENTRIES:
            raise UserError(f"more than {MAX_ENTRIES:,} files and folders searched; name the images more precisely")

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            found.append(path)
            if len(found) > MAX_IMAGES:
                raise UserError(f"more than {MAX_IMAGES:,} images given; predict them in several commands")

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            count = len(found)
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    count_entry()
                    if name.lower().endswith(IMG_EXTENSIONS) and not name.startswith("."):
                        add(os.path.join(folder, name))
            if len(found) == count:
                problems.append((spec, f"a folder with no image files ({', '.join(IMG_EXTENSIONS[:4])}, ...)"))
        elif path.exists():
            add(str(path))
        elif glob.has_magic(spec):
            matched = []
            for match in glob.iglob(os.path.expanduser(spec), recursive=True):  # lazily: bounded as it goes
                count_entry()
                if os.path.isfile(match):
                    matched.append(match)
                    if len(matched) > MAX_IMAGES:
                        raise UserError(f"more than {MAX_IMAGES:,} images given; predict them in several commands")
            for match in sorted(matched):
                add(match)
            if not matched:
                problems.append((spec, "no file matches this pattern"))
        else:
            problems.append((spec, "no such file or folder"))
    return found, problems


def check_request(top_k: int, batch_size: int, out: str | Path | None) -> None:
    """Refuse impossible options before anything is loaded or read."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise UserError(f"--batch-size must be 1 to {MAX_BATCH}, got {batch_size}")
    if top_k < 1:
        raise UserError(f"--top-k must be 1 or more, got {top_k}")
    if out is not None:
        out = Path(out).expanduser()
        if out.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"--out {out}: give a .csv or a .json file")
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give a .csv or a .json file")
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: the folder {out.parent} does not exist")


def predict_files(predictor: Predictor, paths: list[str], top_k: int = 5, batch_size: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """(one row per predicted image, [(path, why it was skipped)]).

    A row: {"image", "top": [{"class", "index", "probability"}, ...] best first}. `progress(done, total)`
    is called after each batch."""
    check_request(top_k, batch_size, None)
    top_k = min(top_k, len(predictor.class_names))
    rows, skipped = [], []
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for path in paths[start:start + batch_size]:
            try:
                batch.append(read_image(path, predictor.rule))
                names.append(path)
            except DataError as exc:
                skipped.append((path, str(exc).removeprefix(f"{path}: ")))
        if batch:
            probs = predictor.probabilities(torch.stack(batch))
            values, indices = probs.topk(top_k, dim=1)
            for name, vals, idx in zip(names, values.tolist(), indices.tolist()):
                rows.append({"image": name, "top": [{"class": predictor.class_names[i], "index": i, "probability": v}
                                                    for v, i in zip(vals, idx)]})
        if progress:
            progress(min(start + batch_size, len(paths)), len(paths))
    return rows, skipped


def table(rows: list[dict]) -> str:
    """The predictions as an aligned text table: the image, then `class probability` best first."""
    if not rows:
        return ""
    width = min(max(len(r["image"]) for r in rows), 60)
    lines = []
    for row in rows:
        name = row["image"] if len(row["image"]) <= width else "..." + row["image"][-(width - 3):]
        cells = "  ".join(f"{t['class']} {100 * t['probability']:5.1f}%" for t in row["top"])
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """The rows as CSV (`image, rank, class, index, probability`, one line per class) or JSON, by `out`'s suffix."""
    out = Path(out).expanduser()
    check_request(1, 1, out)
    if out.suffix.lower() == ".json":
        data = json.dumps(rows, indent=1).encode()
    else:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", "rank", "class", "index", "probability"])
        for row in rows:
            for rank, top in enumerate(row["top"], 1):
                writer.writerow([row["image"], rank, top["class"], top["index"], f"{top['probability']:.6f}"])
        data = text.getvalue().encode()
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
