"""The hyperbolic analysis layer, specified as properties: the ball, its distances, its views, its metrics."""

import json
import math

import geoopt
import numpy as np
import pytest
import torch

from e2vpt.analysis import analyze_embeddings, compare_embeddings
from e2vpt.analysis.geometry import subsample
from e2vpt.analysis.hyperbolic import (class_centroids, clip_features, frechet_mean, poincare_distances,
                                       to_poincare)
from e2vpt.analysis.projection import (disk_from_hyperboloid, euclidean_pca, hyperbolic_pca, knn_from_distances,
                                       umap_disk)
from e2vpt.analysis.separability import (curvature_from_delta, gromov_delta, half_split, knn_accuracy,
                                         silhouette_euclidean, silhouette_precomputed)


def clusters(n_per=40, k=2, dim=16, spread=0.05, sep=5.0, seed=0):
    """k tight, far-apart Gaussian clusters: the easiest case for every separability metric."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * sep
    y = np.repeat(np.arange(k), n_per)
    return centers[y] + rng.normal(size=(len(y), dim)) * spread, y


def binary_tree_leaf_distances(depth=6):
    """Path lengths between the leaves of a complete binary tree: a metric that is exactly 0-hyperbolic."""
    n = 2 ** depth
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    height = np.vectorize(lambda v: int(v).bit_length())(i ^ j)  # levels up to the lowest common ancestor
    return 2.0 * height


# --- the ball ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [0.1, 1.0, 4.0])
@pytest.mark.parametrize("clip_r", [2.3, None])
def test_points_lie_strictly_inside_the_ball_even_for_huge_features(c, clip_r):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 64)) * np.array([1e-3, 1.0, 1e3, 1e8, 1e15])[:, None].repeat(10, 0)
    points = to_poincare(feats, c=c, clip_r=clip_r)
    assert points.dtype == np.float64
    assert np.all(np.linalg.norm(points, axis=1) < 1.0 / math.sqrt(c))


def test_clipping_keeps_points_off_the_boundary():
    feats = np.random.default_rng(0).normal(size=(100, 192)) * 100
    assert np.allclose(clip_features(feats, 2.3).norm(dim=1).numpy(), 2.3)
    norms = np.linalg.norm(to_poincare(feats, c=1.0, clip_r=2.3), axis=1)
    assert norms.max() == pytest.approx(math.tanh(2.3))  # 0.980, as in the recipe


def test_centering_makes_the_map_translation_invariant_and_can_be_switched_off():
    feats, _ = clusters()
    shifted = feats + 50.0
    assert np.allclose(to_poincare(feats), to_poincare(shifted))
    assert not np.allclose(to_poincare(feats, center=False), to_poincare(shifted, center=False))


def test_rescale_sets_the_median_norm_before_clipping():
    feats = np.random.default_rng(0).normal(size=(101, 8)) * 40
    radii = 2 * np.arctanh(np.linalg.norm(to_poincare(feats, rescale=1.0, clip_r=None), axis=1))  # = 2 |v|
    assert np.median(radii) == pytest.approx(2.0)


def test_non_finite_features_are_rejected():
    feats = np.ones((4, 3))
    feats[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        to_poincare(feats)


# --- distances --------------------------------------------------------------------------------------------

# geoopt's curvature-general artanh (artan_k) is accurate to ~1e-5 relative for c != 1; the closed form
# matched 50-digit arithmetic to 1e-14 on the worst of these pairs, so the tolerance is geoopt's.
@pytest.mark.parametrize("c, rtol", [(0.1, 1e-4), (1.0, 1e-9), (2.5, 1e-4)])
def test_closed_form_distances_match_geoopt_on_random_pairs(c, rtol):
    rng = np.random.default_rng(1)
    # clip at sqrt(c) r = 2.3 (norm 0.98 of the radius): geoopt's artanh-based dist drifts nearer the rim
    feats = rng.normal(size=(60, 32)) * rng.uniform(0.01, 3, size=(60, 1))
    points = to_poincare(feats, c=c, clip_r=2.3 / math.sqrt(c))
    d = poincare_distances(points, c=c)
    i, j = rng.integers(0, 60, size=(2, 200))
    i, j = i[i != j], j[i != j]
    ref = geoopt.PoincareBall(c=c).dist(torch.from_numpy(points[i]), torch.from_numpy(points[j])).numpy()
    assert np.allclose(d[i, j], ref, rtol=rtol, atol=1e-9)


def test_distances_stay_exact_next_to_the_rim():
    # two points at Euclidean norm 1 - 1e-6 on orthogonal axes: d = arcosh(1 + 2 * 2r^2 / (1 - r^2)^2) exactly
    r = 1 - 1e-6
    points = np.array([[r, 0.0], [0.0, r]])
    exact = math.acosh(1 + 4 * r * r / (1 - r * r) ** 2)
    assert poincare_distances(points)[0, 1] == pytest.approx(exact, rel=1e-9)


def test_distance_matrix_is_symmetric_with_zero_diagonal_and_identical_points_at_zero():
    feats = np.random.default_rng(2).normal(size=(30, 10))
    feats[7] = feats[3]  # two images with identical features
    d = poincare_distances(to_poincare(feats))
    assert np.array_equal(d, d.T)
    assert np.all(np.diag(d) == 0)
    assert d[3, 7] == 0.0
    assert np.all(d[~np.eye(30, dtype=bool) & (d != d[3, 7])] > 0)


def test_rectangular_distances_agree_with_the_square_matrix():
    points = to_poincare(np.random.default_rng(3).normal(size=(20, 6)))
    assert np.allclose(poincare_distances(points[:5], other=points), poincare_distances(points)[:5], atol=1e-12)


# --- centroids --------------------------------------------------------------------------------------------

def test_frechet_mean_minimises_the_sum_of_squared_distances():
    points = to_poincare(np.random.default_rng(4).normal(size=(80, 5)) + 0.7)
    mu = frechet_mean(points, iters=50)

    def cost(m):
        return np.square(poincare_distances(m[None], other=points)).sum()

    rng = np.random.default_rng(5)
    for _ in range(20):
        nudged = mu + rng.normal(size=mu.shape) * 1e-3
        assert cost(mu) <= cost(nudged) + 1e-9


def test_midpoint_centroids_are_geoopts_weighted_midpoint():
    points, y = clusters(k=3)
    points = to_poincare(points)
    classes, cents = class_centroids(points, y, method="midpoint")
    ref = geoopt.PoincareBall(c=1.0).weighted_midpoint(torch.from_numpy(points[y == 1]), reducedim=[0]).numpy()
    assert list(classes) == [0, 1, 2] and np.allclose(cents[1], ref)


# --- 2-D views --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [0.1, 1.0, 4.0])
@pytest.mark.parametrize("center_at", ["origin", "frechet"])
def test_hyperbolic_pca_view_lies_inside_the_unit_disk_and_is_deterministic(c, center_at):
    feats = np.random.default_rng(6).normal(size=(120, 40)) * 30
    points = to_poincare(feats, c=c)
    xy = hyperbolic_pca(points, c=c, center_at=center_at)
    assert xy.shape == (120, 2) and np.all(np.linalg.norm(xy, axis=1) < 1.0)
    assert np.array_equal(xy, hyperbolic_pca(points, c=c, center_at=center_at))


def test_hyperboloid_to_disk_is_an_isometry_and_stays_inside_even_far_out():
    uv = np.random.default_rng(7).normal(size=(50, 2)) * 5
    uv[0] = [1e12, -1e12]
    z = np.sqrt(1 + np.square(uv).sum(1))
    lorentz = np.outer(z, z) - uv @ uv.T  # -<x, y>_L
    d_hyperboloid = np.arccosh(np.maximum(lorentz, 1.0))
    xy = disk_from_hyperboloid(uv)
    assert np.all(np.linalg.norm(xy, axis=1) < 1.0)
    assert np.allclose(poincare_distances(xy)[1:, 1:], d_hyperboloid[1:, 1:], atol=1e-6)


def test_euclidean_view_fits_the_unit_disk_axes():
    xy, scale = euclidean_pca(np.random.default_rng(8).normal(size=(60, 12)) * 7)
    assert np.linalg.norm(xy, axis=1).max() == pytest.approx(1.0) and scale > 0


def test_knn_from_distances_lists_each_point_first_then_its_nearest():
    d = poincare_distances(to_poincare(np.random.default_rng(9).normal(size=(40, 4))))
    idx, dist = knn_from_distances(d, 5)
    assert np.array_equal(idx[:, 0], np.arange(40))
    assert np.array_equal(idx, np.argsort(d, axis=1, kind="stable")[:, :5])
    assert np.all(np.diff(dist, axis=1) >= 0)


@pytest.mark.slow
@pytest.mark.timeout(120)  # the first UMAP call in a process compiles numba code
def test_umap_view_lies_inside_the_unit_disk_and_is_reproducible():
    feats, y = clusters(n_per=50, k=4, dim=32, spread=0.5)
    d = poincare_distances(to_poincare(feats))
    xy = umap_disk(d, seed=0, n_epochs=50)
    assert xy.shape == (200, 2) and np.all(np.linalg.norm(xy, axis=1) < 1.0)
    assert np.array_equal(xy, umap_disk(d, seed=0, n_epochs=50))
    assert silhouette_precomputed(poincare_distances(xy), y) > 0.5  # the clusters stay clusters


# --- metrics ----------------------------------------------------------------------------------------------

def test_well_separated_clusters_score_near_one_and_random_labels_near_zero():
    feats, y = clusters(n_per=60, k=3)
    d = poincare_distances(to_poincare(feats))
    assert silhouette_precomputed(d, y) > 0.9
    assert silhouette_euclidean(feats, y) > 0.9
    random_labels = np.random.default_rng(10).integers(0, 3, size=len(y))
    assert abs(silhouette_precomputed(d, random_labels)) < 0.1
    assert silhouette_precomputed(d, np.zeros(len(y))) is None  # one class: undefined, not a number


def test_knn_accuracy_is_perfect_on_separated_clusters_and_uses_a_stratified_half_split():
    feats, y = clusters(n_per=30, k=3)
    d = poincare_distances(to_poincare(feats))
    assert knn_accuracy(d, y) == 1.0
    mask = half_split(y, seed=0)
    assert np.array_equal(mask, half_split(y, seed=0))
    assert all(mask[y == k].sum() == 15 for k in range(3))


def test_tree_metric_is_zero_hyperbolic_and_a_euclidean_blob_is_not():
    _, tree_rel, _ = gromov_delta(binary_tree_leaf_distances(6), subset_size=64)
    blob = torch.from_numpy(np.random.default_rng(11).normal(size=(300, 2)))
    _, blob_rel, _ = gromov_delta(torch.cdist(blob, blob).numpy(), subset_size=150, n_subsets=2)
    assert tree_rel == pytest.approx(0.0, abs=1e-6)
    assert blob_rel > 0.2
    assert gromov_delta(torch.cdist(blob, blob).numpy(), 100, 2, seed=3) == \
        gromov_delta(torch.cdist(blob, blob).numpy(), 100, 2, seed=3)


def test_curvature_estimate_follows_khrulkovs_rule():
    assert curvature_from_delta(0.144) == pytest.approx(1.0)
    assert curvature_from_delta(0.288) == pytest.approx(0.25)
    assert curvature_from_delta(0.0) is None


# --- the report -------------------------------------------------------------------------------------------

def test_analyze_embeddings_is_json_serialisable_and_complete():
    feats, y = clusters(n_per=30, k=3, dim=24, spread=0.3)
    report = analyze_embeddings(feats, [f"class {v}" for v in y], umap=False)
    back = json.loads(json.dumps(report, allow_nan=False))
    assert back["points_umap"] is None and back["centroids"]["umap"] is None
    for view in ("points_hpca", "points_euclid"):
        assert np.array(back[view]).shape == (90, 2)
    assert np.all(np.linalg.norm(back["points_hpca"], axis=1) < 1.0)
    assert back["centroids"]["classes"] == ["class 0", "class 1", "class 2"]
    assert np.array(back["centroids"]["distances"]).shape == (3, 3)
    names = [m["name"] for m in back["metrics"]]
    assert {"silhouette_hyperbolic", "silhouette_euclidean", "knn_accuracy_hyperbolic", "davies_bouldin_tangent",
            "delta_rel_hyperbolic", "curvature_estimate"} <= set(names)
    assert all(m["meaning"] and set(m) == {"name", "value", "higher_is_better", "meaning"} for m in back["metrics"])
    assert {len(values) for values in back["per_point"].values()} == {90}
    assert back["params"]["c"] == 1.0 and back["params"]["clip_r"] == 2.3


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_analyze_embeddings_with_umap_puts_every_view_in_the_disk():
    feats, y = clusters(n_per=50, k=4, dim=32, spread=0.5)
    report = json.loads(json.dumps(analyze_embeddings(feats, y, c=0.1, umap=True, umap_epochs=50), allow_nan=False))
    for view in ("points_umap", "points_hpca"):
        assert np.all(np.linalg.norm(report[view], axis=1) < 1.0)
        assert np.all(np.linalg.norm(report["centroids"][view.split("_")[1]], axis=1) < 1.0)
    points, labels = np.array(report["points_umap"]), np.array(report["labels"])
    for k, medoid in zip(report["centroids"]["classes"], report["centroids"]["umap"]):  # on its own cluster
        assert np.min(np.linalg.norm(points[labels == k] - medoid, axis=1)) < 1e-12


def test_large_inputs_are_subsampled_per_class():
    y = np.repeat([0, 1, 2], [500, 300, 200])
    keep = subsample(y, 100, seed=0)
    assert len(keep) == 100 and np.all(np.diff(keep) > 0)
    assert np.bincount(y[keep]).tolist() == [50, 30, 20]


def test_compare_embeddings_says_which_feature_set_separates_better():
    clean, y = clusters(n_per=30, k=3, dim=24, spread=0.5)
    noisy = clean + np.random.default_rng(12).normal(size=clean.shape) * 3.0
    table = compare_embeddings(noisy, clean, y, names=("vpt", "e2vpt"))
    rows = {r["name"]: r for r in table["rows"]}
    for name in ("silhouette_hyperbolic", "silhouette_euclidean", "davies_bouldin_tangent"):
        low, high = rows[name]["interval"]
        assert low <= rows[name]["difference"] <= high and not low <= 0.0 <= high, rows[name]
        assert rows[name]["verdict"] == "e2vpt"
    assert rows["delta_rel_hyperbolic"]["interval"] is None  # descriptive, not a separability score
    assert rows["delta_rel_hyperbolic"]["verdict"] == "describes shape, not better or worse"
    assert "vpt is clearly better on 0, e2vpt on 3" in table["summary"] and table["wins"]["e2vpt"] == 3
    json.dumps(table, allow_nan=False)
    with pytest.raises(ValueError, match="different labels"):
        compare_embeddings(analyze_embeddings(clean, y, umap=False), analyze_embeddings(clean, y[::-1], umap=False))


def test_equally_separable_embeddings_get_no_clear_difference_on_every_metric():
    """The same points, paired with different images of their class: every separability value is the
    same, so every interval must contain 0, whatever the resampling draws."""
    a, y = clusters(n_per=40, k=3, dim=16, spread=1.5)
    rng = np.random.default_rng(3)
    order = np.arange(len(y))
    for k in range(3):
        members = np.flatnonzero(y == k)
        order[members] = rng.permutation(members)
    table = compare_embeddings(a, a[order], y, names=("a", "b"))
    rows = [r for r in table["rows"] if r["higher_is_better"] is not None]
    assert len(rows) == 5
    for row in rows:
        low, high = row["interval"]
        assert low <= 0.0 <= high and row["verdict"] == "no clear difference", row
    assert table["wins"] == {"a": 0, "b": 0, "no clear difference": 5}


def test_the_weighted_davies_bouldin_is_scikit_learns_and_its_interval_is_paired():
    from sklearn.metrics import davies_bouldin_score

    from e2vpt.analysis.separability import _davies_bouldin_weighted, davies_bouldin_interval

    v, y = clusters(n_per=25, k=4, dim=8, spread=2.0)
    ones = torch.ones(1, len(y), dtype=torch.float64)
    mine = _davies_bouldin_weighted(torch.from_numpy(v), y, ones)
    assert mine.item() == pytest.approx(davies_bouldin_score(v, y), rel=1e-10)
    draw = torch.from_numpy(np.random.default_rng(0).multinomial(len(y), np.full(len(y), 1 / len(y)), size=1) * 1.0)
    keep = np.repeat(np.arange(len(y)), draw[0].numpy().astype(int))  # the same resample, as rows
    assert _davies_bouldin_weighted(torch.from_numpy(v), y, draw).item() == pytest.approx(
        davies_bouldin_score(v[keep], y[keep]), rel=1e-10)
    assert davies_bouldin_interval(v, v, y) == (0.0, 0.0)  # paired: the same embedding never differs
    low, high = davies_bouldin_interval(v, v * 2.0, y)  # a scaled copy: the same index, exactly
    assert abs(low) < 1e-9 and abs(high) < 1e-9


def test_per_point_scores_average_to_the_reported_metrics():
    from sklearn.metrics import silhouette_score

    feats, y = clusters(n_per=30, k=3, dim=12, spread=2.0)
    report = json.loads(json.dumps(analyze_embeddings(feats, y, umap=False), allow_nan=False))
    values = {m["name"]: m["value"] for m in report["metrics"]}
    per = report["per_point"]
    assert np.mean(per["silhouette_euclidean"]) == pytest.approx(values["silhouette_euclidean"])
    centred = feats - feats.mean(axis=0)
    assert values["silhouette_euclidean"] == pytest.approx(silhouette_score(centred, y), rel=1e-9)
    held_out = [v for v in per["knn_accuracy_hyperbolic"] if v is not None]
    assert len(held_out) == len(y) // 2 and set(held_out) <= {0.0, 1.0}
    assert np.mean(held_out) == pytest.approx(values["knn_accuracy_hyperbolic"])
