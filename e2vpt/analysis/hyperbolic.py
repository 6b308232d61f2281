"""The Poincaré ball: features in, points, distances and class centroids out.

Why a module of its own: the paper's claim that E2VPT separates classes better than VPT is made in a
Poincaré disk, and the official code has no script for that figure (docs/E2VPT-SPEC.md section 9),
so the protocol is ours and must be explicit. This module is that protocol's geometry, as pure functions
on arrays:

1. centre the features (optional, on by default), 2. clip their norms to `clip_r`
   (Guo et al., CVPR 2022; Ermolov et al., CVPR 2022), 3. map them into the ball of curvature -c with
   the exponential map at the origin (geoopt `PoincareBall(c).expmap0`), in float64.

Everything runs in float64: in float32 geoopt caps norms at about 0.996/sqrt(c), which collapses the
distances of points near the boundary (docs/HYPERBOLIC.md).
"""

from __future__ import annotations

from typing import Literal

import geoopt
import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(features: ArrayLike, what: str = "features") -> torch.Tensor:
    """A finite (N, D) float64 tensor, or a ValueError naming what is wrong."""
    if torch.is_tensor(features):
        x = features.detach().cpu().to(torch.float64)
    else:
        x = torch.from_numpy(np.array(features, dtype=np.float64))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf values; was the model diverging?")
    return x


def ball(c: float = 1.0) -> geoopt.PoincareBall:
    """The Poincaré ball of curvature -c (radius 1/sqrt(c)); c must be positive."""
    if not c > 0:
        raise ValueError(f"curvature c must be > 0, got {c}")
    return geoopt.PoincareBall(c=float(c))


def clip_features(features: ArrayLike, clip_r: float | None = 2.3) -> torch.Tensor:
    """Scale every feature vector with a norm above `clip_r` down to norm `clip_r`: x * min(1, r/|x|).

    Why: `expmap0` sends a vector of norm t to hyperbolic radius 2t (c = 1); high-dimensional features
    have norms of tens, which all land at the numerical boundary and every distance saturates. Clipping
    keeps the largest point at Euclidean norm tanh(sqrt(c) r)/sqrt(c) (0.980 for r = 2.3, c = 1). The
    direction is untouched, so only radial information beyond r is lost. `None` disables clipping.
    """
    x = _as_float64(features)
    if clip_r is None:
        return x
    if not clip_r > 0:
        raise ValueError(f"clip_r must be > 0 or None, got {clip_r}")
    norms = x.norm(dim=1, keepdim=True)
    return x * torch.clamp(clip_r / norms.clamp_min(1e-300), max=1.0)


def to_poincare(features: ArrayLike, c: float = 1.0, clip_r: float | None = 2.3, center: bool = True,
                rescale: float | None = None) -> np.ndarray:
    """Map Euclidean features to points of the Poincaré ball of curvature -c, as a float64 (N, D) array.

    Args:
        features: (N, D) features, e.g. final [CLS] embeddings of test images.
        c: curvature magnitude; the ball has radius 1/sqrt(c).
        clip_r: feature-norm clipping radius applied before the exponential map (None: no clipping).
        center: subtract the feature mean first. On by default because `expmap0` is anchored at the
            origin: ViT features share a large common mean vector, and without centring every point
            sits in the same region of the ball, far from the origin, where the radial direction
            means nothing. Centring is a Euclidean translation, so Euclidean metrics are unchanged,
            and it makes the origin the centre of the data, where the ball is least distorted.
        rescale: if set, scale the (centred) features so that their median norm equals this value
            before clipping. Off by default (the clipped-classifier recipe); set it (e.g. 1.0) to
            compare feature sets of different scales on equal terms, or to keep radial spread when
            all norms exceed `clip_r` and would be clipped to the same radius.

    Returns:
        Points with norm strictly below 1/sqrt(c), even for huge-norm features (geoopt also projects
        to at most (1 - 1e-5)/sqrt(c) in float64).
    """
    x = _as_float64(features)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    if rescale is not None:
        if not rescale > 0:
            raise ValueError(f"rescale must be > 0 or None, got {rescale}")
        median = x.norm(dim=1).median()
        if median > 0:
            x = x * (rescale / median)
    x = clip_features(x, clip_r)
    return ball(c).expmap0(x).numpy()


def logmap0(points: ArrayLike, c: float = 1.0) -> np.ndarray:
    """Tangent vectors at the origin of the ball (the inverse of `expmap0`): where Euclidean tools apply."""
    return ball(c).logmap0(_as_float64(points, "points")).numpy()


def squared_euclidean_distances(x: torch.Tensor, y: torch.Tensor, exact_below: float = 1e-6) -> torch.Tensor:
    """|x_i - y_j|^2 for all pairs of rows, fast and exact where it matters: an (N, M) tensor.

    The bulk comes from |x|^2 + |y|^2 - 2 x.y (one matrix product, what `torch.cdist` does for large
    inputs); that form cancels catastrophically for nearly identical rows, so every pair below
    `exact_below` times |x|^2 + |y|^2 is recomputed from the differences. Identical features are
    therefore exactly 0 apart, at the cost of the matrix product rather than of an N x M x D
    difference tensor (5x slower on 2,000 x 192).
    """
    nx, ny = x.square().sum(dim=1), y.square().sum(dim=1)  # (N,), (M,)
    scale = nx[:, None] + ny[None, :]
    sq = (scale - 2.0 * (x @ y.T)).clamp_min(0.0)
    i, j = torch.nonzero(sq <= exact_below * scale, as_tuple=True)
    if len(i):
        sq[i, j] = (x[i] - y[j]).square().sum(dim=1)
    return sq


def poincare_distances(points: ArrayLike, c: float = 1.0, other: ArrayLike | None = None) -> np.ndarray:
    """Hyperbolic distances between all pairs of points, in closed form: an (N, M) float64 array.

    d(x, y) = (1/sqrt(c)) arcosh(1 + 2c|x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))), computed as
    (2/sqrt(c)) asinh(sqrt(t)) with t = c|x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2)), which is the same
    value without arcosh's loss of precision near 1. Why not `ball.dist(p[:, None], p[None])`: it
    broadcasts an N x N x D tensor (15.8 s for 2,000 x 192); this is matrix algebra (< 1 s), and
    identical points are exactly 0 apart (see `squared_euclidean_distances`).
    It is also the more accurate value: it matched 50-digit arithmetic to 1e-14 (relative), where
    geoopt's artanh-based `ball.dist` was off by up to 1.5e-5 for c != 1 at sqrt(c)|x| = 0.98, and
    by 5e-4 at sqrt(c)|x| = 0.9986.
    With `other=None` the matrix is symmetrised and its diagonal zeroed, as scikit-learn's
    `metric="precomputed"` requires.
    """
    if not c > 0:
        raise ValueError(f"curvature c must be > 0, got {c}")
    x = _as_float64(points, "points")
    y = x if other is None else _as_float64(other, "other points")
    sq = squared_euclidean_distances(x, y)  # (N, M)
    # 1 - c|x|^2 is positive inside the ball; the floor only guards points projected onto the rim.
    fx = (1.0 - c * x.square().sum(dim=1)).clamp_min(1e-15)
    fy = (1.0 - c * y.square().sum(dim=1)).clamp_min(1e-15)
    t = c * sq / (fx[:, None] * fy[None, :])
    d = 2.0 / np.sqrt(c) * torch.asinh(t.sqrt())
    if other is None:
        d = 0.5 * (d + d.T)
        d.fill_diagonal_(0.0)
    return d.numpy()


def _midpoints(z: torch.Tensor, codes: torch.Tensor, k: int, b: geoopt.PoincareBall, c: float) -> torch.Tensor:
    """geoopt's `weighted_midpoint` (equal weights) of every class at once: (K, D).

    m_k = (1/2) (x) sum_i lambda_i x_i / sum_i (lambda_i - 1) over the class's points, with
    lambda_x = 2 / (1 - c|x|^2) and (x) Möbius scalar multiplication. Batched over classes because
    per-class calls on small tensors were ~50x slower on a busy 2-core machine (torch's thread
    pool waits on every tiny op).
    """
    lam = 2.0 / (1.0 - c * z.square().sum(dim=1)).clamp_min(1e-15)  # (N,)
    num = torch.zeros(k, z.shape[1], dtype=z.dtype).index_add_(0, codes, lam[:, None] * z)
    den = torch.zeros(k, dtype=z.dtype).index_add_(0, codes, lam - 1.0)
    return b.mobius_scalar_mul(torch.tensor(0.5, dtype=z.dtype), num / den[:, None])


def class_centroids(points: ArrayLike, labels: ArrayLike, c: float = 1.0,
                    method: Literal["frechet", "midpoint"] = "frechet",
                    iters: int = 50, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """One centroid per class in the ball: (classes (K,), centroids (K, D)), classes in sorted order.

    `method="midpoint"` is geoopt's closed-form gyro-midpoint (`weighted_midpoint`), close to but
    not equal to the Fréchet mean. `method="frechet"` (default) is the Fréchet (Karcher) mean, the
    point minimising the sum of squared hyperbolic distances to the class, i.e. a centroid of the
    same geometry as the metrics. It starts at the midpoint and follows damped Karcher flow:
    mu <- expmap(mu, mean(logmap(mu, z)) / L), with L = mean(sqrt(c) d coth(sqrt(c) d)) over the
    distances d from mu. Why damped: the undamped step (L = 1, the textbook update) overshoots in
    negative curvature, where the tangential curvature of d^2/2 is sqrt(c) d coth(sqrt(c) d) >= 1;
    on 80 widely spread points it diverged (the cost rose from 1220 to 2900 and oscillated). L
    bounds the Hessian's average eigenvalue, and the damped flow decreased the cost monotonically
    to machine precision in 5-30 steps. It stops after `iters` steps or once every class's step is
    shorter than `tol` (Riemannian length). All classes are updated together, as batched tensors.
    """
    z = _as_float64(points, "points")
    y = np.asarray(labels)
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {y.shape}")
    if method not in ("frechet", "midpoint"):
        raise ValueError(f"method must be 'frechet' or 'midpoint', got {method!r}")
    classes, inverse = np.unique(y, return_inverse=True)
    codes = torch.from_numpy(inverse.reshape(-1))
    k, b, sqrt_c = len(classes), ball(c), float(np.sqrt(c))
    mu = _midpoints(z, codes, k, b, c)  # (K, D)
    if method == "frechet":
        counts = torch.bincount(codes, minlength=k).to(z.dtype)  # (K,)
        for _ in range(iters):
            at = mu[codes]  # (N, D): each point's current class mean
            d = (b.dist(at, z) * sqrt_c).clamp_min(1e-12)  # (N,)
            logs = b.logmap(at, z)  # (N, D)
            damping = torch.zeros(k, dtype=z.dtype).index_add_(0, codes, d / torch.tanh(d)) / counts
            step = torch.zeros_like(mu).index_add_(0, codes, logs) / (counts * damping)[:, None]  # (K, D)
            mu = b.expmap(mu, step)
            if float((b.lambda_x(mu) * step.norm(dim=1)).max()) < tol:
                break
    return classes, mu.numpy()


def frechet_mean(points: ArrayLike, c: float = 1.0, iters: int = 50, tol: float = 1e-10) -> np.ndarray:
    """The Fréchet (Karcher) mean of points in the ball: (D,). See `class_centroids` for the method;
    `iters=0` returns geoopt's gyro-midpoint."""
    n = _as_float64(points, "points").shape[0]
    return class_centroids(points, np.zeros(n, dtype=int), c=c, iters=iters, tol=tol)[1][0]
