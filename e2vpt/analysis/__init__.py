"""Analysis of trained runs: what the prompts learned and how the classes sit in feature space.

The geometry layer is pure functions on arrays (no run directories, no Streamlit):
`hyperbolic` (Poincaré ball: mapping, distances, centroids), `projection` (2-D disk and Euclidean
views), `separability` (metrics with their meanings) and `geometry` (`analyze_embeddings`,
`compare_embeddings`: the JSON-ready report the app and the run-directory cache store).
"""

from .geometry import analyze_embeddings, compare_embeddings

__all__ = ["analyze_embeddings", "compare_embeddings"]
