"""Plotly figures of runs: the app's charts, equally usable from a notebook. One module per page topic
(`curves`, `importance`, `attention`, `ablation`, `pruning`, `embeddings`, `compare`, `sweeps`) and
`common` for what they share; every chart is also reachable as `charts.<name>`.

Each builder takes plain data (metrics records, a DataFrame, one importance map, an embedding
report) and returns a `plotly.graph_objects.Figure` with hover details; the matching `*_frame`
functions give the table behind a chart, which the app offers as CSV. No Streamlit and no training
or analysis math here: the numbers come from `e2vpt.runs` and `e2vpt.analysis`.
"""

from .common import (METHOD_ORDER, OUTLINE, PALETTE, PRUNED_GREY, SURVIVED, color, empty_figure, figure_html, frame_csv,
                     layout)
from .curves import REWIND_WORDS, metrics_frame, prune_frame, training_curves
from .importance import PRUNED_NOW, cut_off, importance_frame, importance_heatmap, segment_frame, segment_heatmap
from .pruning import layer_fraction_figure, lifetime_figure, trajectory_figure
from .attention import FATE_MARKS, attention_over_image, attention_prompt_map
from .embeddings import (CENTROID_KIND, METRIC_NAMES, NO_VALUE, VIEWS, comparison_frame, embedding_caption,
                         embedding_frame, embedding_scatter, metrics_frame_from_report)
from .compare import RUN_COLUMNS, accuracy_vs_params, log_ticks, runs_frame, runs_table, zoomed_range
from .sweeps import frontier_chart, parallel_coordinates, percent_ticks
from .ablation import ablation_frame, ablation_scatter
