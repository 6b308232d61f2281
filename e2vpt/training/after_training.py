"""What a finished run computes while its trained model is still in memory, before it is marked done.

The loop runs these steps without knowing what they compute: `e2vpt.workflow` hands it the views the
app opens at once (test embeddings, the pruning audit), which are analyses, and training does not
import analysis (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from tqdm.auto import tqdm


@dataclass(frozen=True)
class AfterTraining:
    """One thing computed while the trained model is still in memory, at the end of a run.

    `key`: the summary records its seconds as `<key>_s` (None when it failed); `message`: the run's status
    while it runs; `wanted(trainer)`: whether this run needs it; `run(trainer)`: the work (it reads the
    trainer's `run`, `model`, `splits`, `device` and `rounds`), returning the seconds it measured itself
    or None to be timed whole; `failed`: what the user is told when it fails, and what happens instead."""

    key: str
    message: str
    wanted: Callable[[Any], bool]  # given the `Trainer`
    run: Callable[[Any], float | None]
    failed: str

    def timed(self, trainer) -> float | None:
        """Run the step on `trainer`: seconds it took, or None if it failed. Why a failure is only
        reported: the weights are saved by then, and losing a finished run to an analysis problem
        would be worse than the page computing (and showing the problem) on demand."""
        started = time.monotonic()
        try:
            seconds = self.run(trainer)
        except Exception as exc:  # any failure of a view: the run itself is done by now
            tqdm.write(f"e2vpt: {self.failed.format(error=f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
            return None
        return round(time.monotonic() - started if seconds is None else seconds, 3)
