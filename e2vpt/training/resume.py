"""Resuming a run: which checkpoint can continue it, and the prompts' initial values it started from.

A checkpoint that cannot be read, or that does not fit this run (another model, a phase or epoch this
configuration does not have), is skipped for the previous one; when none fits, the run starts again
from its first epoch (same seed, same result) and says so. The checkpoint files themselves are
`checkpoints.py`'s.
"""

from __future__ import annotations

from ..errors import RunDirError
from ..runs import RunDir, read_tensors
from .checkpoints import Checkpoint, read_checkpoints


def open_to_resume(run: RunDir) -> None:
    """Take a run's lock to continue it: it must exist and be unfinished; what a killed write left
    behind (temporary files) is removed."""
    if not run.exists():
        raise RunDirError(f"{run.path} holds no run to resume; start one with --run-dir")
    if run.summary_file.is_file():
        raise RunDirError(f"{run.path} already finished; nothing to resume")
    run.lock()
    run.remove_temp_files()


def same_tensors(state: dict, expected: dict) -> bool:
    """Whether `state` holds exactly the tensors `expected` has, with the same shapes."""
    return set(state) == set(expected) and all(state[k].shape == expected[k].shape for k in expected)


def fits(checkpoint: Checkpoint, model, phases) -> str | None:
    """Why `checkpoint` cannot continue a run of `phases` with `model`, or None when it can."""
    if checkpoint.phase > len(phases) or len(checkpoint.rounds) != checkpoint.phase:
        return f"it stands at phase {checkpoint.phase} with {len(checkpoint.rounds)} rounds recorded"
    if checkpoint.phase < len(phases) and checkpoint.epochs_done > phases[checkpoint.phase].epochs:
        return f"it has {checkpoint.epochs_done} epochs done of a {phases[checkpoint.phase].epochs}-epoch phase"
    expected = model.tuned_state()
    for state in (checkpoint.model_state, checkpoint.best.get("state") or expected):
        if not same_tensors(state, expected):
            return "its tensors do not fit this run's model"
    if checkpoint.mid_phase:
        groups = checkpoint.optimizer_meta["param_groups"]
        if len(groups) != 1 or len(groups[0].get("params", [])) != len(list(model.trainable_named_parameters())):
            return "its optimiser state does not fit this run's model"
    return None


def usable_checkpoint(run: RunDir, model, phases) -> tuple[Checkpoint | None, str]:
    """The newest checkpoint that reads, verifies and fits, and a note of what was skipped on the way."""
    problems = []
    for name, checkpoint, problem in read_checkpoints(run):
        if checkpoint is not None:
            problem = fits(checkpoint, model, phases)
        if problem is None:
            return checkpoint, "; ".join(problems)
        if problem != "it does not exist":
            problems.append(f"{name} skipped: {problem}")
    return None, "; ".join(problems + ["no usable checkpoint, starting again from the first epoch"])


def saved_initial_state(run: RunDir, expected: dict, device) -> dict | None:
    """The prompts' initial values saved when the run started (what rewinding returns to), or None
    when that file is missing or damaged: the model built from the same seed holds the same values."""
    try:
        state = read_tensors(run.init_file) if run.init_file.is_file() else None
    except RunDirError:
        return None
    if state is None or not same_tensors(state, expected):
        return None
    return {k: v.to(device) for k, v in state.items()}
