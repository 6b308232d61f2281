"""How long the hyperbolic analysis of one test set takes: `analyze_embeddings` stage by stage.

Target: 2,000 points of 192-d features (the demo ViT's width), Poincaré map + distances + UMAP disk
view + all metrics, in <= 15 s on 2 CPU cores once numba is warm. UMAP compiles numba code the first
time it runs in a process, so three situations are timed:

- cold process: the first call in this process (numba's on-disk cache as this machine has it);
- warm: later calls in the same process (the app's server process after its first analysis);
- empty numba cache (--empty-numba-cache): a child process with a fresh NUMBA_CACHE_DIR, i.e. the
  very first run after installing.

- cached: `run_embedding_report`'s second call for the same run and parameters, which reads the
  report the first call stored in the run's `analysis/` folder (the app's path after a refresh;
  target <= 0.5 s). The run's features are these synthetic ones (no model is evaluated).

Usage: python benchmarks/analysis_speed.py [--n 2000] [--dim 192] [--classes 10] [--empty-numba-cache]
The last line is exactly `analysis: N points in X.X s` (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def clustered_features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random but clustered features shaped like ViT [CLS] embeddings: class centres, overlapping
    noise, and a large common offset (which `center=True` removes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 1.5
    labels = rng.integers(0, classes, size=n)
    feats = centres[labels] + rng.normal(size=(n, dim)) * 2.0 + rng.normal(size=dim) * 5.0
    return feats.astype(np.float32), labels


def run(args: argparse.Namespace) -> dict:
    """Import, then analyse the same features `1 + args.repeats` times; return the timings."""
    t0 = time.perf_counter()
    from e2vpt.analysis import analyze_embeddings
    import_s = time.perf_counter() - t0
    feats, labels = clustered_features(args.n, args.dim, args.classes)
    runs = []
    for _ in range(1 + args.repeats):
        t0 = time.perf_counter()
        report = analyze_embeddings(feats, labels, c=args.c, umap=True, seed=0)
        runs.append({"total": time.perf_counter() - t0, **report["timings_s"]})
    metrics = {m["name"]: m["value"] for m in report["metrics"]}
    return {"import_s": import_s, "runs": runs, "metrics": metrics, "cached_s": cached_reload_s(feats, labels, args)}


def cached_reload_s(feats: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> float:
    """Seconds of a cache hit of `run_embedding_report` (the first call computes and stores the report)."""
    import torch

    from e2vpt.analysis import embeddings

    original = embeddings.run_features
    embeddings.run_features = lambda *a, **k: (torch.from_numpy(feats), torch.from_numpy(labels),
                                               [str(i) for i in range(args.classes)])
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            embeddings.run_embedding_report(run_dir, c=args.c, umap=True, max_points=args.n)
            t0 = time.perf_counter()
            embeddings.run_embedding_report(run_dir, c=args.c, umap=True, max_points=args.n)
            return time.perf_counter() - t0
    finally:
        embeddings.run_features = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="warm runs after the cold one")
    parser.add_argument("--empty-numba-cache", action="store_true",
                        help="also time a child process with an empty NUMBA_CACHE_DIR")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # print the raw timings for the parent and stop
        print(json.dumps(run(args)))
        return

    empty = None
    if args.empty_numba_cache:
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, __file__, "--child", "--repeats", "0", "--n", str(args.n), "--dim",
                   str(args.dim), "--classes", str(args.classes), "--c", str(args.c)]
            out = subprocess.run(cmd, env={**os.environ, "NUMBA_CACHE_DIR": cache}, capture_output=True,
                                 text=True, check=True)
            empty = json.loads(out.stdout.strip().splitlines()[-1])

    result = run(args)
    cold, warm = result["runs"][0], result["runs"][1:]
    stages = ["map", "distances", "umap", "pca_views", "centroids", "metrics", "total"]
    cols = [("empty numba cache", empty["runs"][0] if empty else None), ("cold process", cold)]
    cols += [(f"warm #{i + 1}", w) for i, w in enumerate(warm)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.n} points x {args.dim} dims, {args.classes} classes, c={args.c}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f}; import {result['import_s']:.1f} s"
          + (f" (empty cache: {empty['import_s']:.1f} s)" if empty else ""))
    print(f"{'stage (s)':<12}" + "".join(f"{name:>19}" for name, _ in cols))
    for stage in stages:
        cells = "".join(f"{'-' if t is None else f'{t[stage]:.2f}':>19}" for _, t in cols)
        print(f"{stage:<12}{cells}")
    print("metrics: " + ", ".join(f"{k}={'n/a' if v is None else f'{v:.3f}'}" for k, v in result["metrics"].items()))
    print(f"cached report reload (run_embedding_report, {args.n} points): {result['cached_s']:.3f} s (target <= 0.5 s)")
    best_warm = min(w["total"] for w in warm) if warm else cold["total"]
    print(f"analysis: {args.n} points in {best_warm:.1f} s")


if __name__ == "__main__":
    main()
