"""The pruning search's shared phase 0: one run trains and scores the unpruned model, then one run per
pruning level takes that phase 0 (`phase0_from`) instead of training its own.

A run may stand in for another's phase 0 only when they differ in pruning settings alone; the scores
it kept (`score_after`) are used when they fit, else the taking run scores the same state itself.
"""

from __future__ import annotations

from pathlib import Path

from ..config import NO_EFFECT_ON_RESULTS, PRUNING_ONLY, TrainConfig
from ..errors import RunDirError
from ..models.pruning import Importance
from ..runs import RunDir, read_tensors
from .resume import same_tensors


def phase0_mismatch(source: dict, config: TrainConfig) -> str | None:
    """Why a run with `source` settings cannot stand in for `config`'s phase 0 (None when it can). The
    source's settings are read as today's (a setting saved under an older name is the same setting)."""
    source, wanted = TrainConfig.from_dict(source).to_dict(), config.to_dict()
    differ = sorted(k for k in set(source) | set(wanted)
                    if k not in PRUNING_ONLY + NO_EFFECT_ON_RESULTS + ("extra",) and source.get(k) != wanted.get(k))
    return f"it differs in {', '.join(differ)}" if differ else None


def read_phase0(phase0_from: str | Path, config: TrainConfig, expected: dict) -> tuple[dict, dict, dict, list]:
    """What `phase0_from` stood at after its phase 0: its round-0 record, state and initial values,
    and its phase-0 metric lines; a `RunDirError` saying why when it cannot stand in for this run's."""
    source = RunDir(phase0_from)
    where = f"the phase 0 to start from, {source.path},"
    try:
        if source.summary() is None:
            raise RunDirError(f"{where} has not finished")
        problem = phase0_mismatch(source.config(), config)
        if problem:
            raise RunDirError(f"{where} cannot stand in for this run's phase 0: {problem}")
        record = next(r for r in (source.pruning() or {}).get("rounds", []) if r["round"] == 0)
        state, initial = read_tensors(source.round_file(0)), read_tensors(source.init_file)
    except (StopIteration, OSError) as exc:
        raise RunDirError(f"{where} has no readable round 0 ({exc})") from None
    for name, tensors in (("its round 0", state), ("its initial values", initial)):
        if not same_tensors(tensors, expected):
            raise RunDirError(f"{where} does not fit this run's model ({name} differ)")
    return record, state, initial, [r for r in source.metrics() if r.get("round", 0) == 0]


def shared_importance(phase0_from: str | Path | None, model) -> Importance | None:
    """The scores the phase-0 run kept (`score_after`), when this run took its phase 0 and they fit;
    None otherwise (the run then scores itself: same state, same data, same scores)."""
    if not phase0_from:
        return None
    path = RunDir(phase0_from).search_importance_file
    try:
        saved = read_tensors(path) if path.is_file() else None
    except RunDirError:
        return None
    t = model.tuned
    if saved is None or saved.get("token") is None or saved["token"].shape != t.token_mask.shape \
            or saved.get("segment") is None or saved["segment"].shape != t.segment_mask.shape:
        return None
    return Importance(token=saved["token"], segment=saved["segment"], images=int(saved["images"].item()))
