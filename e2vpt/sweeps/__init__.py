"""Sweeps: many trainings of one study (methods x settings x seeds) run by Ray Tune into one folder.

`spec` says what to train, `store` is the sweep folder on disk, `runner` drives Ray Tune. Importing
this package does not import Ray; only running a sweep does.
"""

from .spec import SweepSpec, Trial
from .store import SweepDir

__all__ = ["SweepSpec", "SweepDir", "Trial", "run_sweep"]


def run_sweep(*args, **kwargs):
    """See `e2vpt.sweeps.runner.run_sweep` (imported here on first use: it loads Ray)."""
    from .runner import run_sweep as run

    return run(*args, **kwargs)
