"""2-D views of an embedding: two inside the unit Poincaré disk, one Euclidean, for the chart's toggle.

Why three: UMAP with a hyperboloid output metric (`umap_disk`) shows neighbourhoods best but is
stochastic and slow to compile; tangent PCA (`hyperbolic_pca`) is exact, deterministic and fast, and
keeps the ball's radial meaning (distance from the centre of the data); Euclidean PCA
(`euclidean_pca`) is the flat baseline that the hyperbolic views are compared with. Every disk view
returns points with norm < 1, whatever the curvature of the ball the points came from.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

from .hyperbolic import ArrayLike, _as_float64, ball, frechet_mean

# Disk points are kept at most this far out: float64 rounds (u, v)/(1 + z) to norm 1.0 for |(u, v)|
# beyond ~1e8, which UMAP can reach, and "inside the disk" must hold for the chart and the metrics.
MAX_DISK_NORM = 1.0 - 1e-9


def _keep_inside_disk(xy: np.ndarray) -> np.ndarray:
    """Pull the rare point that rounding put on or past the rim back to norm MAX_DISK_NORM."""
    norms = np.linalg.norm(xy, axis=1, keepdims=True)
    return xy * np.minimum(1.0, MAX_DISK_NORM / np.maximum(norms, 1e-300))


def _principal_axes(x: np.ndarray, k: int = 2) -> np.ndarray:
    """The top-k principal axes about the origin (no centring) of the rows of x, as a (D, k) matrix.

    Computed as the top eigenvectors of the D x D second-moment matrix x^T x in torch: the same
    axes as an SVD of x, at a fraction of the cost for N >> D, and without numpy's separate BLAS
    thread pool (mixing it with torch's made a 2,000 x 192 SVD take seconds on a busy 2-core box).
    Each axis is flipped so that its largest-magnitude coordinate is positive (scikit-learn's
    `svd_flip` convention): the same data always gives the same picture, not a mirror image. Fewer
    than k dimensions are padded with zero axes.
    """
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    _, vecs = torch.linalg.eigh(t.T @ t)  # ascending eigenvalues
    axes = vecs.flip(1)[:, :k].numpy()  # (D, <=k)
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    axes = axes * np.where(signs == 0, 1.0, signs)
    if axes.shape[1] < k:
        axes = np.pad(axes, ((0, 0), (0, k - axes.shape[1])))
    return axes


def _project(x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """x @ axes in torch (see `_principal_axes` for why not numpy)."""
    return (torch.from_numpy(np.ascontiguousarray(x)) @ torch.from_numpy(axes)).numpy()


def disk_from_hyperboloid(uv: np.ndarray) -> np.ndarray:
    """Hyperboloid coordinates (u, v) (the space part; z = sqrt(1 + u^2 + v^2)) -> unit Poincaré disk.

    The standard isometry x = (u, v) / (1 + z) between the hyperboloid and the Poincaré disk of
    curvature -1; `umap` returns its `output_metric="hyperboloid"` embedding in these coordinates.
    """
    uv = np.asarray(uv, dtype=np.float64)
    z = np.sqrt(1.0 + np.square(uv).sum(axis=1, keepdims=True))
    return _keep_inside_disk(uv / (1.0 + z))


def hyperbolic_pca(points: ArrayLike, c: float = 1.0, center_at: Literal["origin", "frechet"] = "origin"
                   ) -> np.ndarray:
    """A deterministic 2-D view in the unit disk: tangent PCA of ball points, mapped back to a disk.

    Steps: (optionally) move the Fréchet mean to the origin with the Möbius translation
    x -> (-mu) (+) x, an isometry of the ball; take tangent vectors at the origin (`logmap0`); project
    them on their two principal axes about the origin (no mean subtraction, so the disk's centre
    stays the base point: this is the linearised principal geodesic analysis of Fletcher et al.,
    2004); map back with `expmap0` in a 2-D ball of the same curvature c; and multiply by sqrt(c),
    which maps the ball of radius 1/sqrt(c) onto the unit disk (for c != 1 distances scale by
    sqrt(c), the picture does not change shape).

    Why: exact, fast and seed-free, and unlike UMAP it keeps radii
    meaningful: a point's distance from the centre is (a projection of) its distance from the base.
    Cost: one D x D eigendecomposition.
    `center_at="origin"` suits centred features (`to_poincare(center=True)`); use "frechet" otherwise.
    """
    if center_at not in ("origin", "frechet"):
        raise ValueError(f"center_at must be 'origin' or 'frechet', got {center_at!r}")
    b = ball(c)
    z = _as_float64(points, "points")
    if center_at == "frechet":
        mu = torch.from_numpy(frechet_mean(z, c=c))
        z = b.mobius_add(-mu.expand_as(z), z)
    tangent = b.logmap0(z).numpy()  # (N, D)
    flat = _project(tangent, _principal_axes(tangent))  # (N, 2)
    xy = ball(c).expmap0(torch.from_numpy(flat)).numpy() * np.sqrt(c)
    return _keep_inside_disk(xy)


def euclidean_pca(features: ArrayLike) -> tuple[np.ndarray, float]:
    """The flat baseline view: PCA of the centred features to 2-D, scaled so the farthest point has
    norm 1 (the same axes as the disk views, for the Euclidean/hyperbolic toggle).

    Returns (points (N, 2), scale): original PCA coordinates are points / scale.
    """
    x = _as_float64(features).numpy()
    x = x - x.mean(axis=0, keepdims=True)
    xy = _project(x, _principal_axes(x))
    far = float(np.linalg.norm(xy, axis=1).max())
    scale = 1.0 / far if far > 0 else 1.0
    return xy * scale, scale


def _enable_umap_disk_cache() -> None:
    """Let numba cache UMAP's two graph kernels on disk, so a new process does not recompile them.

    umap-learn compiles `smooth_knn_dist` and `compute_membership_strengths` (parallel numba
    functions, ~10 s together on 2 cores) in every process, because they are not declared with
    `cache=True`. `Dispatcher.enable_caching()` is what `cache=True` does; calling it before their
    first compilation stores them in numba's cache (`NUMBA_CACHE_DIR`, else umap's __pycache__, else
    the user cache). Best effort: if no cache location is writable, UMAP simply compiles as before.
    """
    from umap import umap_ as umap_module

    for name in ("smooth_knn_dist", "compute_membership_strengths"):
        dispatcher = getattr(umap_module, name, None)
        if dispatcher is None or getattr(dispatcher, "_cache", None) is None:
            continue
        if type(dispatcher._cache).__name__ == "NullCache":
            try:
                dispatcher.enable_caching()
            except Exception:  # no writable cache locator: keep compiling in memory
                pass


def knn_from_distances(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k nearest neighbours (itself first, at distance 0) from a distance matrix:
    (indices (N, k) int64, distances (N, k) float32), sorted by distance.

    Why here and not in UMAP: UMAP's own exact search for precomputed matrices is a parallel numba
    function that takes ~10 s to compile in every new process; argpartition is instant.
    """
    d = np.asarray(distances, dtype=np.float64)
    part = np.argpartition(d, k - 1, axis=1)[:, :k]  # (N, k), unordered
    part_d = np.take_along_axis(d, part, axis=1)
    order = np.lexsort((part, part_d), axis=1)  # by distance, ties by index: deterministic
    idx = np.take_along_axis(part, order, axis=1)
    return idx.astype(np.int64), np.take_along_axis(part_d, order, axis=1).astype(np.float32)


def umap_disk(distances: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
              n_epochs: int | None = 200) -> np.ndarray:
    """UMAP of a precomputed (hyperbolic) distance matrix into the unit Poincaré disk.

    UMAP optimises the layout with `output_metric="hyperboloid"` (umap-learn has no gradient for
    "poincare") and the result is mapped to the disk with `disk_from_hyperboloid`. `random_state` is
    fixed, which makes the layout reproducible on the same machine and library versions (and makes
    UMAP single-threaded). The neighbour graph comes from `knn_from_distances`.

    Cost: the first call in a process compiles numba code (see benchmarks/analysis_speed.py; the
    graph kernels are disk-cached by `_enable_umap_disk_cache`, the layout optimiser cannot be:
    umap-learn builds it afresh in every call, ~1 s).

    Args:
        distances: symmetric (N, N) distance matrix with a zero diagonal, e.g. `poincare_distances`.
        seed: UMAP's random_state.
        n_neighbors: neighbourhood size (capped at N - 1).
        min_dist: UMAP's min_dist.
        n_epochs: optimisation epochs. 200 (UMAP's own choice above 10,000 points) rather than its
            500 for small sets: on 2,000 clustered points the layout's 2-D silhouette was 0.89 at 200
            epochs and 0.90 at 500, for less than half the time. None lets UMAP choose.
    """
    import umap  # imported here: it pulls in numba and pynndescent, which take seconds to load

    d = np.asarray(distances, dtype=np.float64)
    n = d.shape[0]
    if d.ndim != 2 or d.shape != (n, n):
        raise ValueError(f"distances must be a square (N, N) matrix, got shape {d.shape}")
    if n < 3:
        raise ValueError(f"UMAP needs at least 3 points, got {n}")
    k = min(n_neighbors, n - 1)
    _enable_umap_disk_cache()
    knn_idx, knn_dist = knn_from_distances(d, k)
    reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, metric="precomputed", output_metric="hyperboloid",
                        n_epochs=n_epochs, random_state=seed, n_jobs=1,
                        precomputed_knn=(knn_idx, knn_dist, None))
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state", "no search index: transform unavailable", and
        # graph-connectivity notes: expected here, and not the caller's to act on.
        warnings.simplefilter("ignore")
        uv = reducer.fit_transform(d)
    return disk_from_hyperboloid(uv)
