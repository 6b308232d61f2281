"""Separability and hyperbolicity metrics: numbers behind the Poincaré picture.

Why a module of its own: the paper argues from a picture that E2VPT separates classes better than
VPT; here the claim is measured. Each metric comes back as a `Metric` that carries its direction
("is higher better?") and a one-sentence meaning, so the app can show the table without knowing any
of them and `compare_embeddings` can say which embedding wins on each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import davies_bouldin_score, silhouette_samples, silhouette_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

# Khrulkov et al. (CVPR 2020): the relative delta of the Poincaré disk measured with their
# estimator; the curvature at which a data set's delta_rel matches it is c = (0.144 / delta_rel)^2.
POINCARE_DISK_DELTA_REL = 0.144


@dataclass(frozen=True)
class Metric:
    """One number with what it means: value is None where the metric is undefined (e.g. one class)."""

    name: str
    value: float | None
    higher_is_better: bool | None  # None: descriptive, neither direction is "better"
    meaning: str

    def to_dict(self) -> dict:
        return asdict(self)


def _float_or_none(x: float) -> float | None:
    """JSON has no NaN or inf: undefined values travel as None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _encode(labels: np.ndarray) -> np.ndarray:
    """Labels of any type as integer codes 0..K-1."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)


def _has_clusters(codes: np.ndarray) -> bool:
    """Silhouette and Davies-Bouldin need 2 <= K <= N - 1 classes."""
    k = len(np.unique(codes))
    return 2 <= k <= len(codes) - 1


def silhouette_precomputed(distances: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette under a precomputed distance matrix; None if fewer than 2 classes."""
    codes = _encode(labels)
    if not _has_clusters(codes):
        return None
    return _float_or_none(silhouette_score(distances, codes, metric="precomputed"))


def silhouette_euclidean(features: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette with Euclidean distances on the features; None if fewer than 2 classes."""
    codes = _encode(labels)
    if not _has_clusters(codes):
        return None
    return _float_or_none(silhouette_score(np.asarray(features, dtype=np.float64), codes))


def half_split(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A deterministic train mask: a stratified half of every class (plain random half if some class
    has a single member, where stratifying is impossible)."""
    codes = _encode(labels)
    idx = np.arange(len(codes))
    stratify = codes if np.bincount(codes).min() >= 2 else None
    train, _ = train_test_split(idx, test_size=0.5, stratify=stratify, random_state=seed)
    mask = np.zeros(len(codes), dtype=bool)
    mask[train] = True
    return mask


def silhouette_per_point(distances: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Each point's silhouette under a precomputed distance matrix (their mean is the silhouette
    score); None if fewer than 2 classes."""
    codes = _encode(labels)
    if not _has_clusters(codes):
        return None
    return silhouette_samples(np.asarray(distances, dtype=np.float64), codes, metric="precomputed")


def knn_correct(distances: np.ndarray, labels: np.ndarray, k: int = 5, train_mask: np.ndarray | None = None,
                seed: int = 0) -> np.ndarray | None:
    """Per point: 1.0 where a k-nearest-neighbour classifier under a precomputed distance matrix gets
    a held-out point right, 0.0 where it does not, NaN for the points it was fitted on.

    Fitted on the train x train block and scored on test x train; `train_mask` defaults to
    `half_split(labels, seed)`. k is capped at the number of training points. None if there are
    fewer than 2 classes (accuracy would be trivially 1) or either side of the split is empty.
    """
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return None
    mask = half_split(y, seed) if train_mask is None else np.asarray(train_mask, dtype=bool)
    if mask.shape != y.shape:
        raise ValueError(f"train_mask must have shape {y.shape}, got {mask.shape}")
    if mask.all() or not mask.any():
        return None
    d = np.asarray(distances, dtype=np.float64)
    clf = KNeighborsClassifier(n_neighbors=min(k, int(mask.sum())), metric="precomputed")
    clf.fit(d[np.ix_(mask, mask)], y[mask])
    correct = np.full(len(y), np.nan)
    correct[~mask] = clf.predict(d[np.ix_(~mask, mask)]) == y[~mask]
    return correct


def knn_accuracy(distances: np.ndarray, labels: np.ndarray, k: int = 5, train_mask: np.ndarray | None = None,
                 seed: int = 0) -> float | None:
    """Accuracy of a k-nearest-neighbour classifier under a precomputed distance matrix, on the
    held-out half (see `knn_correct`); None where that is undefined."""
    correct = knn_correct(distances, labels, k, train_mask, seed)
    return None if correct is None else float(np.nanmean(correct))


def davies_bouldin(vectors: np.ndarray, labels: np.ndarray) -> float | None:
    """Davies-Bouldin index of vectors (tangent vectors, for ball points).

    None if there are fewer than 2 classes or all class centres coincide: scikit-learn returns 0
    (its best score) there, which would call indistinguishable classes perfectly separated.
    """
    codes = _encode(labels)
    if not _has_clusters(codes):
        return None
    v = np.asarray(vectors, dtype=np.float64)
    centres = np.stack([v[codes == i].mean(axis=0) for i in range(codes.max() + 1)])
    if np.allclose(centres, centres[0]):
        return None
    return _float_or_none(davies_bouldin_score(v, codes))


def _delta_from_base(d: torch.Tensor, chunk: int = 32) -> float:
    """Gromov delta of a finite metric seen from its first point, exactly over all triples.

    With Gromov products A_ij = (x_i | x_j)_w = (d_iw + d_jw - d_ij) / 2 about base point w,
    delta_w = max_ij (max_k min(A_ik, A_kj) - A_ij): the four-point condition over every quadruple
    (w, x_i, x_j, x_k). The (max, min) matrix product is done in row chunks to bound memory, in
    float32: several times faster than float64 on CPU (torch's float64 min/max is slow), and its
    relative error (1e-7) is far below any delta worth reporting (integer tree distances stay exact).
    """
    d = d.to(torch.float32)
    row = d[0]
    a = 0.5 * (row[:, None] + row[None, :] - d)  # (m, m)
    best = 0.0
    for start in range(0, a.shape[0], chunk):
        block = torch.minimum(a[start:start + chunk, :, None], a[None, :, :]).amax(dim=1)  # (chunk, m)
        best = max(best, float((block - a[start:start + chunk]).max()))
    return best


def gromov_delta(distances: np.ndarray, subset_size: int = 300, n_subsets: int = 5, seed: int = 0
                 ) -> tuple[float, float, float]:
    """Gromov delta-hyperbolicity of a finite metric space: (delta, delta_rel, diameter).

    Estimator of Khrulkov et al. ("Hyperbolic Image Embeddings", CVPR 2020): draw `n_subsets` random
    subsets of `subset_size` points (seeded, so deterministic), and on each compute delta exactly
    from a base point (the four-point condition on every quadruple that contains it, see
    `_delta_from_base`) and delta_rel = 2 delta / diameter of the subset; return the averages.
    delta_rel is 0 for a tree metric; Gaussian blobs measured 0.40 (2-D) and 0.24 (192-D), and
    Khrulkov et al. report 0.2-0.3 for image features. It grows a little with `subset_size` (0.231,
    0.241, 0.249, 0.266 for 300, 500, 800, 1,500 points of a 192-D blob: more points can only reveal
    larger deltas), so compare values measured with the same settings. Cost: n_subsets *
    subset_size^3 min/max operations (about 0.1 s per 300-point subset on one core).
    """
    d = np.asarray(distances, dtype=np.float64)
    n = d.shape[0]
    if d.ndim != 2 or d.shape != (n, n):
        raise ValueError(f"distances must be a square (N, N) matrix, got shape {d.shape}")
    if n < 4:
        return 0.0, 0.0, float(d.max()) if d.size else 0.0
    rng = np.random.default_rng(seed)
    m = min(subset_size, n)
    tries = 1 if m == n else n_subsets
    deltas, rels, diams = [], [], []
    for _ in range(tries):
        idx = rng.choice(n, size=m, replace=False)
        sub = torch.from_numpy(np.ascontiguousarray(d[np.ix_(idx, idx)]))
        delta = _delta_from_base(sub)
        diam = float(sub.max())
        deltas.append(delta)
        diams.append(diam)
        rels.append(2.0 * delta / diam if diam > 0 else 0.0)
    return float(np.mean(deltas)), float(np.mean(rels)), float(np.mean(diams))


def curvature_from_delta(delta_rel: float) -> float | None:
    """Khrulkov et al.'s rule of thumb, c = (0.144 / delta_rel)^2: the ball curvature at which the
    data's relative delta matches the Poincaré disk's. None for delta_rel = 0 (a tree: any c fits)."""
    if not delta_rel > 0:
        return None
    return (POINCARE_DISK_DELTA_REL / delta_rel) ** 2


PER_POINT = ("silhouette_hyperbolic", "silhouette_euclidean", "knn_accuracy_hyperbolic", "knn_accuracy_euclidean")


def per_point_scores(distances: np.ndarray, euclidean_distances: np.ndarray, labels: np.ndarray, k: int = 5,
                     train_mask: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray | None]:
    """The metrics that are means over points, point by point: each point's silhouette (hyperbolic
    and Euclidean) and whether k-NN gets it right (NaN on the half the classifier was fitted on).

    Why keep them: a difference between two embeddings of the same images gets its confidence
    interval by resampling images (`paired_interval`), which needs each image's own value.
    """
    mask = half_split(labels, seed) if train_mask is None else train_mask
    return {"silhouette_hyperbolic": silhouette_per_point(distances, labels),
            "silhouette_euclidean": silhouette_per_point(euclidean_distances, labels),
            "knn_accuracy_hyperbolic": knn_correct(distances, labels, k, mask, seed),
            "knn_accuracy_euclidean": knn_correct(euclidean_distances, labels, k, mask, seed)}


def _mean_or_none(values: np.ndarray | None) -> float | None:
    return None if values is None else _float_or_none(np.nanmean(values))


def embedding_metrics(features: np.ndarray, distances: np.ndarray,
                      euclidean_distances: np.ndarray, tangent: np.ndarray, labels: np.ndarray, k: int = 5,
                      train_mask: np.ndarray | None = None, delta_subset_size: int = 300,
                      delta_subsets: int = 5, seed: int = 0,
                      per_point: dict[str, np.ndarray | None] | None = None) -> list[Metric]:
    """All metrics of one embedding, hyperbolic next to their Euclidean contrast, in display order.

    Args:
        features: (N, D) Euclidean features as analysed (after centring, before clipping).
        distances: (N, N) hyperbolic distances between the features' points in the ball.
        euclidean_distances: (N, N) Euclidean distances between `features`.
        tangent: (N, D) `logmap0` of the ball points, where Davies-Bouldin is computed.
        labels: (N,) class labels.
        k, train_mask, seed: the k-NN protocol (see `knn_accuracy`); seed also drives the delta subsets.
        delta_subset_size, delta_subsets: the delta estimator's settings (see `gromov_delta`).
        per_point: `per_point_scores` of the same inputs, if the caller already has them.
    """
    n = len(labels)
    for name, arr in (("features", features), ("tangent", tangent)):
        if np.shape(arr)[0] != n:
            raise ValueError(f"{name} has {np.shape(arr)[0]} rows but there are {n} labels")
    for name, arr in (("distances", distances), ("euclidean_distances", euclidean_distances)):
        if np.shape(arr) != (n, n):
            raise ValueError(f"{name} must be ({n}, {n}), got {np.shape(arr)}")
    if per_point is None:
        per_point = per_point_scores(distances, euclidean_distances, labels, k, train_mask, seed)
    _, rel_h, _ = gromov_delta(distances, delta_subset_size, delta_subsets, seed)
    _, rel_e, _ = gromov_delta(euclidean_distances, delta_subset_size, delta_subsets, seed)
    return [
        Metric("silhouette_hyperbolic", _mean_or_none(per_point["silhouette_hyperbolic"]), True,
               "How much closer each point is to its own class than to the nearest other class, in "
               "hyperbolic distance (-1 to 1; near 1: tight, well-separated classes; near 0: overlap)."),
        Metric("silhouette_euclidean", _mean_or_none(per_point["silhouette_euclidean"]), True,
               "The same silhouette in Euclidean distance on the features, for contrast with the ball."),
        Metric("knn_accuracy_hyperbolic", _mean_or_none(per_point["knn_accuracy_hyperbolic"]), True,
               f"Share of held-out points (stratified half split) whose {k} nearest neighbours in "
               "hyperbolic distance vote for their true class."),
        Metric("knn_accuracy_euclidean", _mean_or_none(per_point["knn_accuracy_euclidean"]), True,
               f"The same {k}-NN accuracy with Euclidean distances on the features, for contrast."),
        Metric("davies_bouldin_tangent", davies_bouldin(tangent, labels), False,
               "Average ratio of within-class spread to the distance between class centres, on tangent "
               "vectors at the origin of the ball (logmap0); lower means more separable."),
        Metric("delta_rel_hyperbolic", _float_or_none(rel_h), None,
               "Relative Gromov delta (2 delta / diameter) of the hyperbolic distances: 0 for a tree, "
               "larger for flatter, less hierarchical point sets; describes shape, not separation."),
        Metric("delta_rel_euclidean", _float_or_none(rel_e), None,
               "Relative Gromov delta of the Euclidean feature distances: how tree-like the features "
               "already are before the ball (Khrulkov et al., 2020)."),
        Metric("curvature_estimate", curvature_from_delta(rel_e), None,
               "Ball curvature c = (0.144 / delta_rel_euclidean)^2 suggested by Khrulkov et al.'s rule "
               "of thumb; compare it with the c used (params.c)."),
    ]


# --------------------------------------------------------------------------------------------------
# is a difference between two embeddings of the same images real? Paired bootstrap over the images.
RESAMPLES = 1000
LEVEL = 0.95


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_interval(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                    level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mean(b) - mean(a) for per-image values of two embeddings of
    the same images: images are resampled with replacement, the same draw for both sides (paired),
    so what the two have in common (an easy or a hard image) cancels. NaN entries (e.g. the k-NN
    fitting half) are left out. Each image's own value is held fixed: the interval says how much the
    difference depends on which images were drawn. None with fewer than 2 usable images.
    """
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return None
    draws = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    return _percentiles(diff[draws].mean(axis=1), level)


def _davies_bouldin_weighted(vectors: torch.Tensor, codes: np.ndarray, weights: torch.Tensor) -> torch.Tensor:
    """Davies-Bouldin index for each row of resampling weights (counts per point), at once: the
    weighted form of scikit-learn's definition (mean over classes of the worst (s_i + s_j) / d_ij,
    s_i the mean distance of class i's points to their centroid). NaN where a class was not drawn."""
    spreads, centres = [], []
    for k in range(int(codes.max()) + 1):
        members = torch.from_numpy(np.flatnonzero(codes == k))
        v, w = vectors[members], weights[:, members]  # (n_k, D), (R, n_k)
        total = w.sum(dim=1, keepdim=True)  # (R, 1)
        centre = (w @ v) / total  # (R, D)
        spreads.append((w * torch.cdist(centre, v)).sum(dim=1) / total[:, 0])
        centres.append(centre)
    spread = torch.stack(spreads, dim=1)  # (R, K)
    apart = torch.cdist(torch.stack(centres, dim=1), torch.stack(centres, dim=1))  # (R, K, K)
    ratio = (spread[:, :, None] + spread[:, None, :]) / apart
    ratio.diagonal(dim1=1, dim2=2).fill_(-np.inf)
    return ratio.amax(dim=2).mean(dim=1)


def davies_bouldin_interval(a: np.ndarray, b: np.ndarray, labels: np.ndarray, resamples: int = RESAMPLES,
                            seed: int = 0, level: float = LEVEL) -> tuple[float, float] | None:
    """Paired percentile bootstrap interval of DB(b) - DB(a) for two embeddings (tangent vectors)
    of the same images: Davies-Bouldin is not a mean over images, so it is recomputed on every
    resample (vectorised over resamples as weights, in float64). None with fewer than 2 classes."""
    codes = _encode(labels)
    if not _has_clusters(codes):
        return None
    n = len(codes)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    weights = torch.from_numpy(counts.astype(np.float64))
    va, vb = (torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in (a, b))
    diff = _davies_bouldin_weighted(vb, codes, weights) - _davies_bouldin_weighted(va, codes, weights)
    return _percentiles(diff.numpy(), level)


def verdict(interval: tuple[float, float] | None, higher_is_better: bool | None, names: tuple[str, str]) -> str:
    """In plain words, which side the interval of (second - first) favours: a name, "no clear
    difference" when it spans 0, or "no interval" when there is none."""
    if higher_is_better is None:
        return "describes shape, not better or worse"
    if interval is None:
        return "no interval"
    low, high = interval
    if low <= 0.0 <= high:
        return "no clear difference"
    second_higher = low > 0.0
    return names[1] if second_higher == higher_is_better else names[0]
