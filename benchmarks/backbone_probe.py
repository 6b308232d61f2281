"""Linear probe of the shipped demo backbone against the same architecture with random weights.

Why: prompt tuning is only meaningful on a backbone whose frozen features already carry
information; this is the quality bar of issue 3 (digits: demo >= 0.90, random near 0.54).

Protocol (fixed, no tuning on test): for each built-in task, `e2vpt.data.load_splits(name,
img_size=32, mean=0.5, std=0.5, seed=0)` (digits: scaled 0..16 -> [0, 1], bilinear antialiased to
32x32, 3 channels, a fixed 800 train / 200 val / 797 test permutation seeded 0). Features are the
frozen final [CLS] token after the final norm (`forward_features(x)[:, 0]`, what the engine's head
sees), unscaled. A scikit-learn `LogisticRegression(C=1.0, max_iter=2000)` is fit on train and
scored on test. Raw pixels (32x32 grey, the same splits) are the reference a backbone should approach.

    python benchmarks/backbone_probe.py                  # all built-in tasks, shipped weights
    python benchmarks/backbone_probe.py --datasets digits --weights other.safetensors

The last line printed is exactly `probe digits: demo=0.xx random=0.xx`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2vpt.models.backbones import DEMO_MEAN, DEMO_STD, DEMO_WEIGHTS, build_demo_vit, create_backbone  # noqa: E402

ALL_TASKS = ("digits", "fashion-mnist", "dsprites-loc", "dsprites-ori", "clevr-count")


def _digits_by_hand() -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Fallback when `e2vpt.data` is unavailable: the same digits protocol, written out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", antialias=True, align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.5) / 0.5
    order = np.random.default_rng(0).permutation(len(x))
    parts = {"train": order[:800], "val": order[800:1000], "test": order[1000:]}
    return {k: (x[idx], d.target[idx]) for k, idx in parts.items()}


def load_task(name: str) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """{split: (normalised images (N,3,32,32), labels)} for a built-in task."""
    try:
        from e2vpt.data import load_splits
    except ImportError:
        if name != "digits":
            raise
        return _digits_by_hand()
    splits = load_splits(name, root=None, img_size=32, mean=DEMO_MEAN, std=DEMO_STD, seed=0)
    out = {}
    for split in ("train", "test"):
        ds = getattr(splits, split)
        if hasattr(ds, "tensors"):
            x, y = ds.tensors()
        else:
            items = [ds[i] for i in range(len(ds))]
            x, y = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
        out[split] = (x, np.asarray(y))
    return out


@torch.no_grad()
def cls_features(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Final [CLS] token after the final norm, as the engine uses it."""
    model.eval()
    return torch.cat([model.forward_features(x[i:i + batch])[:, 0] for i in range(0, len(x), batch)]).numpy()


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on raw pixels are expected and harmless
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(DEMO_WEIGHTS), help="demo backbone .safetensors (default: shipped)")
    p.add_argument("--datasets", nargs="+", default=list(ALL_TASKS), help="built-in tasks (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    demo = create_backbone("demo", weights=args.weights)
    torch.manual_seed(0)
    random = build_demo_vit()
    results = {}
    for name in args.datasets:
        t0 = time.time()
        try:
            data = load_task(name)
        except Exception as exc:  # e.g. Fashion-MNIST files absent: report, keep going
            print(f"{name}: skipped ({type(exc).__name__}: {exc})")
            continue
        (xtr, ytr), (xte, yte) = data["train"], data["test"]
        row = {"n_train": len(ytr), "n_test": len(yte), "classes": int(len(np.unique(ytr)))}
        for label, model in (("demo", demo), ("random", random)):
            row[label] = probe(cls_features(model, xtr), ytr, cls_features(model, xte), yte)
        grey = lambda x: x.mean(1).flatten(1).numpy()  # noqa: E731
        row["pixels"] = probe(grey(xtr), ytr, grey(xte), yte)
        row["seconds"] = round(time.time() - t0, 1)
        results[name] = row
        print(f"{name}: demo={row['demo']:.3f} random={row['random']:.3f} pixels={row['pixels']:.3f} "
              f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    print(f"weights: {args.weights}")
    print("| task | train/test | classes | demo | random init | raw pixels |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['n_train']}/{r['n_test']} | {r['classes']} | {r['demo']:.3f} | {r['random']:.3f} "
              f"| {r['pixels']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights, "results": results}, indent=2))
    if "digits" in results:
        print(f"probe digits: demo={results['digits']['demo']:.2f} random={results['digits']['random']:.2f}")
    else:
        print("probe digits: not run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
