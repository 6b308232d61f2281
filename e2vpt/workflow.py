"""`train` and `train_or_reuse`: one run from start to finish, as the library, the command line, the app
and sweeps call it.

Why this is not in `training/`: a finished run also precomputes what the app shows at once (the test
embeddings for the Embeddings page, the pruning audit for the Prompts page) while its model is still in
memory. Those are analyses, and training must not import analysis (the layers in docs/ARCHITECTURE.md,
checked by import-linter), so this module, above both, hands them to the loop as `AfterTraining` steps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .errors import RunDirError
from .runs import RunDir
from .training.after_training import AfterTraining
from .training.trainer import Trainer
from .training.trainer import train as train_loop


# Each step imports its analysis when it runs (the CLI and a plain `import e2vpt` stay light) and returns
# the seconds of its own work, so the summary's `embeddings_s` and `audit_s` do not count the import.
def _write_embeddings(trainer: Trainer) -> float:
    from .analysis.embeddings import write_at_end_of_training

    return write_at_end_of_training(trainer.run.path, trainer.model, trainer.splits, trainer.device)


def _write_audits(trainer: Trainer) -> float:
    from .analysis.ablation import prompt_ablation

    started = time.monotonic()
    for record in trainer.rounds[1:]:
        if record.get("token_importance") is not None:
            prompt_ablation(trainer.run.path, record["round"], device=str(trainer.device))
    return time.monotonic() - started


EMBEDDINGS = AfterTraining(
    key="embeddings", message="embedding the test images for the Embeddings page",
    wanted=lambda trainer: True, run=_write_embeddings,
    failed="the embeddings were not precomputed ({error}); the Embeddings page will compute them when opened")
AUDIT = AfterTraining(
    key="audit", message="measuring each pruning decision against removing the tokens for real",
    wanted=lambda trainer: trainer.config.audit_pruning and len(trainer.rounds) > 1, run=_write_audits,
    failed="the pruning audit was not precomputed ({error}); the Prompts page measures it on request")


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
          on_epoch: Callable[[dict], None] | None = None, phase0_from: str | Path | None = None,
          score_after: bool = False, embeddings: bool = True) -> dict:
    """Train `config` into `run_dir` and return its summary: the library's one-call entry point.

    `embeddings`: write the test features and default embedding report when training ends, so the
    Embeddings page opens at once (seconds on the demo). A sweep's trials skip it: a trial is one of
    many, most never opened, and the page computes them on first open instead. The pruning audit is
    written when the config asks for it (`audit_pruning`). `phase0_from` and `score_after`: the
    pruning search (see `training.trainer.Trainer`)."""
    after = (EMBEDDINGS, AUDIT) if embeddings else (AUDIT,)
    return train_loop(config, run_dir, resume=resume, quiet=quiet, on_epoch=on_epoch, phase0_from=phase0_from,
                      score_after=score_after, after_training=after)


def train_or_reuse(config: TrainConfig, run_dir: str | Path, quiet: bool = True) -> dict:
    """Train `config` into `run_dir`, or return its summary if it already finished with this config.

    For notebooks and scripts: re-running a cell costs nothing, and a folder holding a different
    finished run is refused rather than silently reused.
    """
    run = RunDir(run_dir)
    if run.summary_file.is_file():
        saved, wanted = dict(run.config()), config.to_dict()
        saved.pop("extra", None)
        wanted.pop("extra", None)
        if saved == wanted:
            return run.summary()
        raise RunDirError(f"{run.path} holds a finished run with another configuration; pick another folder")
    if run.exists() and run.status().get("state") in ("interrupted", "cancelled", "failed") and run.has_checkpoint():
        return train(config, run_dir, resume=True, quiet=quiet)
    return train(config, run_dir, quiet=quiet)
