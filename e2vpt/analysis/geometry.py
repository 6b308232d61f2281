"""The geometry report of one feature set, and the side-by-side comparison of two.

Why a module of its own: the app and the run-directory cache need one call that turns (features,
labels) into everything the hyperbolic view shows — three 2-D views, class centroids, the metric
table and the parameters that produced them — as a plain JSON-serialisable dict they can store and
reload. The math lives in `hyperbolic`, `projection` and `separability`; this module only composes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from . import hyperbolic, projection, separability
from .hyperbolic import ArrayLike, _as_float64

# Bumped whenever the protocol changes the numbers, so caches keyed on it are invalidated.
PROTOCOL_VERSION = 2  # 2: per-point scores kept, UMAP centroids are medoids


@contextlib.contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    """Cap torch's and the BLAS/OpenMP libraries' thread pools for the duration, then restore them.

    Why: on a 2-core machine that is also training (the app's normal situation), torch's 2-thread
    pool turned millisecond operations into seconds: the second core is taken, so every parallel
    region waits for a time slice. Measured with two training processes running: Euclidean PCA
    4.0 s with 2 threads vs 0.01 s with 1, class centroids 3.5 s vs 0.04 s, all distances 0.7 s vs
    0.4 s. The work here is either small-tensor or already single-threaded (seeded UMAP), so one
    thread loses little on an idle machine. The pools are process-wide: other threads of the same
    process that use torch meanwhile are capped too. `None` leaves them alone.
    """
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def subsample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic, class-stratified subset of at most `max_points` points.

    Why: distances are an N x N matrix and UMAP is super-linear, so very large test sets are thinned
    to keep the analysis interactive; stratifying keeps every class's share.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    counts = np.bincount(codes)
    stratify = codes if counts.min() >= 2 and len(counts) <= max_points else None
    keep, _ = train_test_split(np.arange(n), train_size=max_points, stratify=stratify, random_state=seed)
    return np.sort(keep)


def _rows(xy: np.ndarray | None) -> list[list[float]] | None:
    return None if xy is None else np.asarray(xy, dtype=np.float64).tolist()


def _disk_centroids(xy: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Fréchet means of each class's 2-D points in the unit disk (curvature -1, as drawn)."""
    return hyperbolic.class_centroids(xy, codes, c=1.0)[1]


def _disk_medoids(xy: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each class's medoid in the unit disk: its point with the least total hyperbolic distance to
    the others. Why for UMAP: UMAP may split a class into islands or bend it into an arc, and a mean
    then falls in the empty space between; a medoid is always one of the class's own points."""
    medoids = []
    for k in range(int(codes.max()) + 1):
        members = xy[codes == k]
        medoids.append(members[hyperbolic.poincare_distances(members, c=1.0).sum(axis=1).argmin()])
    return np.stack(medoids)


def ball_and_tangent(features: torch.Tensor, c: float, clip_r: float | None, center: bool,
                     rescale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's map of (already subsampled) features into the ball, and the tangent vectors at
    its origin (logmap0) where Davies-Bouldin is measured."""
    points = hyperbolic.to_poincare(features, c=c, clip_r=clip_r, center=center, rescale=rescale)
    return points, hyperbolic.logmap0(points, c=c)


def report_tangent(features: ArrayLike, report: dict[str, Any]) -> np.ndarray:
    """The tangent vectors a report's Davies-Bouldin was computed on, rebuilt from the features it
    was made from (the report stores 2-D views, not D-dimensional vectors)."""
    x = _as_float64(features)
    if report.get("indices") is not None:
        x = x[torch.as_tensor(report["indices"])]
    if x.shape[0] != len(report["labels"]):
        raise ValueError(f"the features have {x.shape[0]} rows where the report analysed {len(report['labels'])}")
    p = report["params"]
    return ball_and_tangent(x, p["c"], p["clip_r"], p["center"], p["rescale"])[1]


def analyze_embeddings(features: ArrayLike, labels: ArrayLike, c: float = 1.0, clip_r: float | None = 2.3,
                       umap: bool = True, seed: int = 0, *, center: bool = True, rescale: float | None = None,
                       k: int = 5, max_points: int | None = 4000, n_neighbors: int = 15,
                       umap_epochs: int | None = 200, delta_subset_size: int = 300,
                       delta_subsets: int = 5, threads: int | None = 1) -> dict[str, Any]:
    """Everything the hyperbolic view shows for one feature set, as a JSON-serialisable dict.

    Protocol: features are centred (`center`), optionally rescaled, norm-clipped at `clip_r` and
    mapped into the Poincaré ball of curvature -c (`hyperbolic.to_poincare`); distances are the
    closed-form hyperbolic distances; metrics are computed on all (kept) points in the ball, with
    Euclidean contrasts on the centred features.

    Args:
        features: (N, D) features, e.g. final [CLS] embeddings of test images.
        labels: (N,) class labels (ints or strings).
        c: curvature magnitude of the ball.
        clip_r: feature-norm clipping radius (None: no clipping).
        umap: also compute the UMAP disk view (slow the first time in a process: numba compiles).
        seed: seeds UMAP, the k-NN split, the delta subsets and the subsample.
        center, rescale: see `hyperbolic.to_poincare`.
        k: neighbours for the k-NN accuracies.
        max_points: above this many points a stratified subset is analysed (None: never).
        n_neighbors, umap_epochs: UMAP settings.
        delta_subset_size, delta_subsets: Gromov delta estimator settings.
        threads: torch/BLAS threads while analysing (see `limited_threads`; None: leave as set).

    Returns:
        {"n_points", "n_features", "indices" (rows of `features` analysed, None if all), "labels",
         "classes", "points_umap" (N x 2 in the unit disk, or None), "points_hpca" (N x 2 in the unit
         disk), "points_euclid" (N x 2, farthest at norm 1), "centroids" ({"classes", "umap", "hpca",
         "euclid": K x 2 per view, "radius": hyperbolic distance of each class's Fréchet mean from
         the origin, "distances": K x K hyperbolic distances between class means}), "metrics"
         (list of {"name", "value", "higher_is_better", "meaning"}), "params", "timings_s"}.
    """
    with limited_threads(threads):
        return _analyze(features, labels, c=c, clip_r=clip_r, umap=umap, seed=seed, center=center,
                        rescale=rescale, k=k, max_points=max_points, n_neighbors=n_neighbors,
                        umap_epochs=umap_epochs, delta_subset_size=delta_subset_size, delta_subsets=delta_subsets)


def _analyze(features: ArrayLike, labels: ArrayLike, *, c: float, clip_r: float | None, umap: bool, seed: int,
             center: bool, rescale: float | None, k: int, max_points: int | None, n_neighbors: int,
             umap_epochs: int | None, delta_subset_size: int, delta_subsets: int) -> dict[str, Any]:
    """`analyze_embeddings` without the thread cap."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 4)
        tick = now

    x = _as_float64(features)
    y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
    indices = None
    if max_points is not None and x.shape[0] > max_points:
        indices = subsample(y, max_points, seed)
        x, y = x[torch.from_numpy(indices)], y[indices]
    classes, codes = np.unique(y, return_inverse=True)
    codes = codes.reshape(-1)

    points, tangent = ball_and_tangent(x, c, clip_r, center, rescale)
    lap("map")
    dist = hyperbolic.poincare_distances(points, c=c)
    feats = (x - x.mean(dim=0, keepdim=True)) if center else x
    edist = hyperbolic.squared_euclidean_distances(feats, feats).sqrt()
    edist = 0.5 * (edist + edist.T)
    edist.fill_diagonal_(0.0)
    edist = edist.numpy()
    lap("distances")

    xy_umap = None
    if umap:
        xy_umap = projection.umap_disk(dist, seed=seed, n_neighbors=n_neighbors, n_epochs=umap_epochs)
        lap("umap")
    xy_hpca = projection.hyperbolic_pca(points, c=c, center_at="origin" if center else "frechet")
    xy_euclid, euclid_scale = projection.euclidean_pca(feats)
    lap("pca_views")

    kk = len(classes)
    _, cents = hyperbolic.class_centroids(points, codes, c=c, method="frechet")
    centroids = {
        "classes": classes.tolist(),
        "umap": None if xy_umap is None else _rows(_disk_medoids(xy_umap, codes)),
        "hpca": _rows(_disk_centroids(xy_hpca, codes)),
        "euclid": _rows(np.stack([xy_euclid[codes == i].mean(axis=0) for i in range(kk)])),
        "radius": (2.0 / np.sqrt(c) * np.arctanh(np.sqrt(c) * np.linalg.norm(cents, axis=1))).tolist(),
        "distances": _rows(hyperbolic.poincare_distances(cents, c=c)),
    }
    lap("centroids")

    per_point = separability.per_point_scores(dist, edist, codes, k=k, seed=seed)
    metrics = separability.embedding_metrics(feats.numpy(), dist, edist, tangent, codes, k=k, seed=seed,
                                             delta_subset_size=delta_subset_size, delta_subsets=delta_subsets,
                                             per_point=per_point)
    lap("metrics")

    return {
        "n_points": int(x.shape[0]),
        "n_features": int(x.shape[1]),
        "indices": None if indices is None else indices.tolist(),
        "labels": y.tolist(),
        "classes": classes.tolist(),
        "points_umap": _rows(xy_umap),
        "points_hpca": _rows(xy_hpca),
        "points_euclid": _rows(xy_euclid),
        "centroids": centroids,
        "metrics": [m.to_dict() for m in metrics],
        "per_point": {name: None if values is None else [v if np.isfinite(v) else None for v in values.tolist()]
                      for name, values in per_point.items()},
        "params": {
            "protocol_version": PROTOCOL_VERSION, "c": float(c), "clip_r": clip_r, "center": center,
            "rescale": rescale, "umap": umap, "seed": seed, "k": k, "max_points": max_points,
            "n_neighbors": n_neighbors, "umap_epochs": umap_epochs, "delta_subset_size": delta_subset_size,
            "delta_subsets": delta_subsets, "centroid_method": "frechet",
            "hpca_center_at": "origin" if center else "frechet", "euclid_scale": euclid_scale,
            "max_radius_fraction": float(np.sqrt(c) * np.linalg.norm(points, axis=1).max()),
        },
        "timings_s": timings,
    }


def compare_embeddings(a: ArrayLike | dict, b: ArrayLike | dict, labels: ArrayLike | None = None,
                       names: tuple[str, str] = ("a", "b"), features: tuple[ArrayLike, ArrayLike] | None = None,
                       resamples: int = separability.RESAMPLES, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """The metric tables of two embeddings of the same images side by side, each difference with a
    paired bootstrap 95 % interval and a plain verdict (a name, or "no clear difference" when the
    interval spans 0).

    `a` and `b` are either (N, D) feature arrays (then `labels` is required and both are analysed
    with `analyze_embeddings(..., umap=False, **kwargs)`: the metrics do not need UMAP) or dicts
    already returned by `analyze_embeddings` (e.g. from the run-directory cache); for dicts, pass
    the features they were made from as `features` to get Davies-Bouldin's interval too (it is
    recomputed per resample, from the D-dimensional vectors a report does not store). Typical use:
    the test features of a VPT run against those of an E2VPT run.

    Returns:
        {"names", "rows": [{"name", "meaning", "higher_is_better", names[0]: value, names[1]: value,
         "difference": b - a, "interval": [low, high] of the difference or None, "verdict"}],
         "wins": {names[0]: count, names[1]: count, "no clear difference": count}, "summary": one
         sentence, "resamples", "params": {names[0]: ..., names[1]: ...}}.
    """
    if names[0] == names[1]:
        raise ValueError(f"names must differ, got {names}")
    reports, vectors = [], [None, None]
    for i, side in enumerate((a, b)):
        if isinstance(side, dict):
            reports.append(side)
            vectors[i] = None if features is None else features[i]
        else:
            if labels is None:
                raise ValueError("labels are required when comparing feature arrays")
            reports.append(analyze_embeddings(side, labels, **{"umap": False, **kwargs}))
            vectors[i] = side
    ra, rb = reports
    if ra["labels"] != rb["labels"]:
        raise ValueError("the two embeddings were analysed on different labels (or point subsets); "
                         "compare features of the same images")
    by_name_b = {m["name"]: m for m in rb["metrics"]}
    rows, wins = [], {names[0]: 0, names[1]: 0, "no clear difference": 0}
    for ma in ra["metrics"]:
        mb = by_name_b.get(ma["name"])
        if mb is None:
            continue
        va, vb, hib = ma["value"], mb["value"], ma["higher_is_better"]
        interval = None
        if hib is not None and va is not None and vb is not None:
            interval = _interval(ma["name"], ra, rb, vectors, resamples, seed)
        outcome = separability.verdict(interval, hib, names) if va is not None and vb is not None else "undefined"
        if outcome in wins:
            wins[outcome] += 1
        rows.append({"name": ma["name"], "meaning": ma["meaning"], "higher_is_better": hib,
                     names[0]: va, names[1]: vb, "difference": None if va is None or vb is None else vb - va,
                     "interval": None if interval is None else list(interval), "verdict": outcome})
    decided = sum(wins.values())
    summary = (f"Of {decided} separability metrics, {names[0]} is clearly better on {wins[names[0]]}, {names[1]} on "
               f"{wins[names[1]]}, and {wins['no clear difference']} show no clear difference (95 % intervals from "
               f"{resamples} paired resamples of the {len(ra['labels'])} images).")
    return {"names": list(names), "rows": rows, "wins": wins, "summary": summary, "resamples": resamples,
            "params": {names[0]: ra["params"], names[1]: rb["params"]}}


def _with_nan(values: list) -> np.ndarray:
    """A JSON list of per-point values (None where undefined) as floats with NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _interval(name: str, ra: dict, rb: dict, vectors: list, resamples: int, seed: int) -> tuple[float, float] | None:
    """The bootstrap interval of one metric's difference (b - a), where the inputs allow one."""
    if name in separability.PER_POINT:
        pa, pb = ((r.get("per_point") or {}).get(name) for r in (ra, rb))
        if pa is None or pb is None:
            return None
        return separability.paired_interval(_with_nan(pa), _with_nan(pb), resamples, seed)
    if name == "davies_bouldin_tangent" and vectors[0] is not None and vectors[1] is not None:
        return separability.davies_bouldin_interval(report_tangent(vectors[0], ra), report_tangent(vectors[1], rb),
                                                    np.asarray(ra["labels"]), resamples, seed)
    return None
