"""Plotly figures of runs: the app's charts, equally usable from a notebook. One module per page topic
(`curves`, `importance`, `attention`, `ablation`, `pruning`, `embeddings`, `compare`, `sweeps`) and
`common` for what they share; every chart is also reachable as `charts.<name>` (each module's `__all__`).

Each builder takes plain data (metrics records, a DataFrame, one importance map, an embedding
report) and returns a `plotly.graph_objects.Figure` with hover details; the matching `*_frame`
functions give the table behind a chart, which the app offers as CSV. No Streamlit and no training
or analysis math here: the numbers come from `e2vpt.runs` and `e2vpt.analysis`.
"""

from .ablation import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .compare import *  # noqa: F401,F403
from .curves import *  # noqa: F401,F403
from .embeddings import *  # noqa: F401,F403
from .importance import *  # noqa: F401,F403
from .pruning import *  # noqa: F401,F403
from .sweeps import *  # noqa: F401,F403
