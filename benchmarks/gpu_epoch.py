"""One E2VPT training epoch on a JPEG folder: samples/s, the loader's own images/s, GPU utilisation.

Issue 17's question, on a machine with a GPU: does the input pipeline keep the GPU busy? The epoch is
the trainer's own (`Trainer._train_epoch` over a real `imagefolder`: its JPEGs decoded once into the
decoded cache during setup, then each batch read from the cache as uint8, moved to the device, and
augmented and normalised there, then the step), timed after one warm-up epoch, with
`torch.compile` off or on (`--compile`). The loader alone is timed over the same epoch, so the two
numbers show whether the step or the data sets the pace. GPU utilisation is `nvidia-smi`'s, sampled
every 0.2 s during the timed epoch (n/a without it).

    python benchmarks/gpu_epoch.py --device cuda                  # ViT-B/16 @224, 1,000 JPEGs 500x375
    python benchmarks/gpu_epoch.py --device cpu --backbone demo --images 64 --img-size 32   # a dry run

Last line: `gpu epoch: X samples/s (loader alone: Y img/s, GPU busy Z %)`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from common import RESULTS, jpeg_folder, machine_info, write_csv


class UtilisationSampler:
    """nvidia-smi's GPU utilisation, sampled in a thread while the timed epoch runs."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s, self.samples, self.stop = period_s, [], threading.Event()
        self.tool = shutil.which("nvidia-smi")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run([self.tool, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self.stop.wait(self.period_s)

    def __enter__(self):
        if self.tool:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.tool:
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default="vit_base_patch16_224", help="random-init weights: cost does not depend on them")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the backbone's)")
    p.add_argument("--images", type=int, default=1000, help="JPEGs in the folder (VTAB-1k's 1,000 by default)")
    p.add_argument("--folder", default=None, help="the JPEG folder (default: made under benchmarks/results/)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for the step")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (eager: a quick dry run)")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/gpu_epoch.csv)")
    args = p.parse_args()

    import torch

    from e2vpt.config import TrainConfig
    from e2vpt.training.schedule import Phase, make_optimizer
    from e2vpt.training.trainer import Trainer

    folder = Path(args.folder) if args.folder else RESULTS / f"jpeg-{args.images}"
    jpeg_folder(folder, args.images)
    config = TrainConfig(method="e2vpt", backbone=args.backbone, pretrained=False, img_size=args.img_size,
                         dataset="imagefolder", data_root=str(folder), epochs=2, prune_rounds=0,
                         batch_size=args.batch, device=args.device, precision=args.precision, train_augment=True)
    trainer = Trainer(config, None, quiet=True)
    trainer.started = time.monotonic()
    trainer.setup()
    if args.compile:
        trainer.train_model = torch.compile(trainer.model, backend=args.compile_backend)
    optimizer, scheduler = make_optimizer(trainer.model, config, len(trainer.splits.train), 2)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    images = len(trainer.splits.train)

    start = time.perf_counter()
    trainer._train_epoch(Phase(0, 2), 0, optimizer, scheduler)  # warm-up (and compilation)
    sync()
    warmup_s = time.perf_counter() - start
    with UtilisationSampler() as gpu:
        start = time.perf_counter()
        trainer._train_epoch(Phase(0, 2), 1, optimizer, scheduler)
        sync()
        epoch_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in trainer._loader("train", shuffle=True, seed=1, training=True):
        pass
    loader_s = time.perf_counter() - start

    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else None
    row = {"backbone": args.backbone, "img_size": trainer.splits.train[0][0].shape[-1], "images": images,
           "batch": args.batch, "precision": "bf16" if trainer.autocast else "fp32", "compile": args.compile,
           "cache_build_s": round(getattr(trainer.splits.train.decoded, "build_s", 0.0), 3),
           "warmup_epoch_s": round(warmup_s, 3), "epoch_s": round(epoch_s, 3),
           "samples_per_s": round(images / epoch_s, 1), "loader_img_per_s": round(images / loader_s, 1),
           "gpu_util_pct": None if gpu.mean is None else round(gpu.mean, 1),
           "peak_gpu_gb": None if peak_gb is None else round(peak_gb, 2), **machine_info(str(trainer.device))}
    write_csv(Path(args.out) if args.out else RESULTS / "gpu_epoch.csv", [row])
    busy = "n/a" if row["gpu_util_pct"] is None else f"{row['gpu_util_pct']:.0f} %"
    print(f"gpu epoch: {row['samples_per_s']:.0f} samples/s (loader alone: {row['loader_img_per_s']:.0f} img/s, "
          f"GPU busy {busy}; {args.backbone}, compile {'on' if args.compile else 'off'}, {row['precision']})")


if __name__ == "__main__":
    main()
