"""Images/s delivered as ready training batches: today's loader against the cached, batched pipeline.

Issue 17's benchmark. A folder of 2,000 JPEGs of 500x375 pixels (synthetic photographs, made once
under benchmarks/results/), read at 224 with training augmentation, in batches of 64 on this
machine's CPU (the training device here):

- "today's loader" is the pipeline the trainer used before: a `DataLoader` in the training process
  (`num_workers=0`) over the images, each decoded by PIL and put through timm's training transform
  (random resized crop, flip, colour jitter, normalisation);
- the pipeline is `e2vpt.data`'s: the folder decoded once into a uint8 cache at 224 (`decoded.py`;
  its build is the first epoch's extra cost), then `DeviceBatches` (`pipeline.py`): uint8 batches
  from the cache, random resized crop and flip, normalisation, as the trainer iterates them.

Both are timed as an epoch's worth of batches, ready as float32 tensors on the device, the pipeline
after its first epoch. Each is timed several times and the fastest pass is reported (timeit's rule:
this shared 2-core machine's speed varies by up to 2x from minute to minute, and the fastest pass
is the one least disturbed); every pass is in the CSV. Also recorded: the cache's size, the process's peak
memory while building it (resident set size growth), the build time, and the mean first-epoch rate.

    python benchmarks/input_pipeline.py                 # 2,000 images, about 2 minutes here
    python benchmarks/input_pipeline.py --images 200 --baseline-images 64 --epochs 1 --out /tmp/ip.csv  # dry run

Writes benchmarks/results/input_pipeline.csv (with the commit and the machine; it reads no
`TrainConfig` default, so `defaults_used` is False) and, when every option is at its default, the
README block `input_pipeline` (`render`). Last line: `input pipeline: X img/s (today's loader: Y img/s)`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from common import (RESULTS, jpeg_folder, met, provenance, provenance_line, read_csv, write_csv,
                    write_readme_block)

SIZE = 224
MEAN = STD = (0.5, 0.5, 0.5)
TARGET = 3000  # issue 17: images/s after the first epoch


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's block `input_pipeline`, from input_pipeline.csv's row."""
    if not rows:
        return "No result yet: run `python benchmarks/input_pipeline.py`.\n"
    r = rows[0]
    rate, epochs = float(r["pipeline_img_per_s"]), [float(v) for v in r["pipeline_epochs"].split()]
    where = "in memory" if r["cache_where"] == "memory" else f"in {r['cache_where']}"
    return "\n".join([
        f"{int(r['images']):,} JPEGs, batches of {r['batch']} at {r['size']}, workers `{r['workers']}`; "
        f"{provenance_line(r)}.", "",
        "| | images/s |", "|---|---|",
        f"| today's loader, the trainer's before issue 17 (PIL decode + timm's training transform per image, "
        f"`num_workers=0`; fastest of "
        f"{len(r['todays_loader_passes'].split())} passes over {int(r['todays_loader_images']):,} images: "
        f"{r['todays_loader_passes']}) | {float(r['todays_loader_img_per_s']):,.0f} |",
        f"| the pipeline, first epoch including the cache's build | {float(r['first_epoch_img_per_s']):,.0f} |",
        f"| **the pipeline after its first epoch** (fastest of {len(epochs)} epochs: {r['pipeline_epochs']}) "
        f"| **{rate:,.0f}** |", "",
        f"Speed-up **{float(r['speedup']):.1f}x**; target >= {TARGET:,} img/s after the first epoch: "
        f"{met(rate >= TARGET)}. The cache is **{float(r['cache_mb']):.0f} MB** (uint8, "
        f"{r['size']}x{r['size']}x3 per image, {where}), built in **{float(r['cache_build_s']):.1f} s**; the "
        f"process's peak memory grew by {float(r['build_peak_rss_growth_mb']):.0f} MB while building it. The "
        f"pipeline's epochs ranged from {min(epochs):,.0f} to {max(epochs):,.0f} img/s "
        f"({max(epochs) / min(epochs):.1f}x)."]) + "\n"


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def todays_loader_rate(samples, batch: int) -> float:
    """The old trainer's loader: per-image PIL decode + timm's training transform, no workers."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader, Dataset

    from e2vpt.data.images import load_image

    class PerImage(Dataset):  # what ImageFileDataset was: its transform, as `train_transform` built it
        transform = create_transform(input_size=SIZE, is_training=True, interpolation="bicubic", mean=MEAN, std=STD)

        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return self.transform(load_image(samples[i][0])), samples[i][1]

    start, seen = time.perf_counter(), 0
    for images, _ in DataLoader(PerImage(), batch_size=batch, shuffle=True, num_workers=0):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def pipeline_epoch(dataset, batch: int, seed: int, workers: str) -> float:
    import torch

    from e2vpt.data.pipeline import DeviceBatches
    from e2vpt.training.distributed import global_batches

    batches = DeviceBatches(dataset, global_batches(len(dataset), batch, True, seed), torch.device("cpu"),
                            seed=seed, workers=workers)
    start, seen = time.perf_counter(), 0
    for images, _ in batches:
        assert images.dtype == torch.float32 and images.shape[-1] == SIZE
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--baseline-images", type=int, default=640, help="images today's loader reads (it is slow)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5, help="pipeline epochs after the first (the fastest reported)")
    p.add_argument("--baseline-passes", type=int, default=2, help="passes of today's loader (the fastest reported)")
    p.add_argument("--workers", default="auto")
    p.add_argument("--folder", default=None, help="the JPEG folder (default: made under benchmarks/results/)")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/input_pipeline.csv)")
    args = p.parse_args()

    folder = Path(args.folder) if args.folder else RESULTS / f"jpeg-{args.images}"
    jpeg_folder(folder, args.images)
    cache = Path(tempfile.mkdtemp(prefix="e2vpt-bench-cache-"))
    os.environ["E2VPT_CACHE_DIR"] = str(cache)  # a cold cache: the build is part of what is measured
    try:
        from e2vpt.data.decoded import open_decoded
        from e2vpt.data.folders import ImageFileDataset, _scan

        samples = _scan(folder)[1]  # every image of the folder, not only the 800/200/test splits
        baselines = [todays_loader_rate(samples[:args.baseline_images], args.batch)
                     for _ in range(args.baseline_passes)]
        baseline = max(baselines)

        rss_before = max_rss_mb()
        start = time.perf_counter()
        decoded = open_decoded([p for p, _ in samples], SIZE, where=str(folder))
        build_s = time.perf_counter() - start
        rss_growth = max_rss_mb() - rss_before
        dataset = ImageFileDataset(samples, SIZE, MEAN, STD, augment=True, decoded=decoded)
        first_epoch = pipeline_epoch(dataset, args.batch, 0, args.workers)
        first_epoch_with_build = len(samples) / (build_s + len(samples) / first_epoch)
        rates = [pipeline_epoch(dataset, args.batch, seed, args.workers) for seed in range(1, args.epochs + 1)]
        rate = max(rates)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    row = {"images": len(samples), "size": SIZE, "batch": args.batch, "workers": args.workers,
           "pipeline_img_per_s": round(rate, 1), "pipeline_epochs": " ".join(f"{r:.0f}" for r in rates),
           "first_epoch_img_per_s": round(first_epoch_with_build, 1), "cache_build_s": round(build_s, 2),
           "cache_mb": round(decoded.pixels.nbytes / 2**20, 1), "cache_where": decoded.where,
           "build_peak_rss_growth_mb": round(rss_growth, 1),
           "todays_loader_img_per_s": round(baseline, 1),
           "todays_loader_passes": " ".join(f"{r:.0f}" for r in baselines),
           "todays_loader_images": min(len(samples), args.baseline_images),
           "speedup": round(rate / baseline, 1), "defaults_used": False, **provenance("cpu")}
    write_csv(Path(args.out) if args.out else RESULTS / "input_pipeline.csv", [row])
    defaults = vars(p.parse_args([]))
    if all(getattr(args, k) == v for k, v in defaults.items()):  # the published numbers: default settings only
        write_readme_block("input_pipeline", render(read_csv(RESULTS / "input_pipeline.csv")))
    print(f"cache: {row['cache_mb']:.0f} MB in {decoded.where}, built in {build_s:.1f} s (peak memory growth "
          f"{rss_growth:.0f} MB); first epoch with the build: {first_epoch_with_build:.0f} img/s")
    print(f"pipeline epochs after the first: {row['pipeline_epochs']} img/s")
    print(f"input pipeline: {rate:.0f} img/s (today's loader: {baseline:.0f} img/s)")


if __name__ == "__main__":
    main()
