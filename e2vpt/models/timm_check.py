"""A startup check of the timm internals that `vit.py` and `swin.py` re-state.

Why: nothing in timm is forked or patched. `PromptedViT` calls timm's own sub-modules and re-states
`Attention.forward` and `Block.forward`; `PromptedSwin` re-states `WindowAttention.forward` and the
attention branch of `SwinTransformerBlock.forward`. A timm release that renames one of those
sub-modules would fail deep inside a training step with a bare AttributeError, and one that changes
what a forward computes would train something else without a word. So, once per process and backbone
family, `check_timm` runs the family's check (kept beside the forward it checks, in
`vit.py` and `swin.py`, which register it here), which builds tiny instances of timm's own classes and checks:

1. every attribute and method the re-statements read exists (optional ones, the gated attention's
   `gate` and Swin's `dynamic_mask`, are read with a default and not required);
2. every call they make still binds (e.g. `forward_head(x, pre_logits=True)`, `window_reverse(windows,
   window_size, H, W)`) and timm's forwards take nothing beyond the tokens that the re-statement
   would drop: newer ViT blocks accept `attn_mask`/`is_causal`, which must stay optional, since the
   re-statement serves only the unmasked, non-causal call;
3. each re-stated forward, run without prompts, still equals timm's own, block by block and for the
   whole feature extractor.

Any failure is one `BackboneError` naming the installed timm, what is missing and the tested version.
The tiny modules are built under a forked RNG, so the check leaves the global random state (and hence
every later initialisation) exactly as it was.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import timm
import torch

from ..errors import BackboneError

TESTED_TIMM = "1.0.31"  # the version requirements.txt pins and CI tests (a test keeps the two equal)
ANY = object()  # in a call signature below: any argument

# family -> (its name in messages, the file that re-states it, the check): filled by `register`
CHECKS: dict[str, tuple[str, str, Callable[[], None]]] = {}


def register(family: str, name: str, source: str, check: Callable[[], None]) -> None:
    """Declare the check of one backbone family (called where that family's forward is re-stated)."""
    CHECKS[family] = (name, source, check)


def incompatible(family: str, what: str) -> BackboneError:
    name, source, _ = CHECKS[family]
    return BackboneError(f"the installed timm {timm.__version__} does not fit what {source} re-states of timm's "
                         f"{name}: {what}; e2vpt is tested with timm {TESTED_TIMM}: "
                         f"pip install timm=={TESTED_TIMM}")


def missing_attributes(objects: dict[str, object], needs: dict[str, tuple[str, ...]]) -> list[str]:
    missing = []
    for owner, paths in needs.items():
        for path in paths:
            value = objects[owner]
            for part in path.split("."):
                if not hasattr(value, part):
                    missing.append(f"{owner}.{path}")
                    break
                value = getattr(value, part)
    return missing


def unbindable_calls(classes: dict[str, object], calls) -> list[str]:
    wrong = []
    for owner, name, args, kwargs in calls:
        function = getattr(classes[owner], name, None)
        if function is None:
            wrong.append(f"{owner}.{name} (missing)")
            continue
        try:
            inspect.signature(function).bind(*args, **kwargs)
        except (TypeError, ValueError):
            wrong.append(f"{owner}.{name}{inspect.signature(function)}")
    return wrong


def _differs(ours: torch.Tensor, theirs: torch.Tensor) -> float | None:
    """Largest absolute difference when the two are not equal up to float rounding, else None."""
    if ours.shape != theirs.shape:
        return float("inf")
    return None if torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5) else float((ours - theirs).abs().max())


def require_same(family: str, ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Raise the incompatibility error `what` when a re-stated computation no longer equals timm's own."""
    gap = _differs(ours, theirs)
    if gap is not None:
        raise incompatible(family, f"{what} (largest difference {gap:.3g})")


@functools.cache
def check_timm(family: str) -> None:
    """Verify, once per process, that the installed timm still has what the `family` ("vit" or "swin")
    re-statement uses and computes what it re-states; raise a `BackboneError` saying what is not."""
    if family not in CHECKS:
        raise ValueError(f"family must be one of {tuple(CHECKS)}, got {family!r}")
    check = CHECKS[family][2]
    # the tiny models draw their initial weights: fork the RNG so no later draw changes
    with torch.random.fork_rng(devices=[]), torch.device("cpu"), torch.no_grad():
        try:
            check()
        except BackboneError:
            raise
        except Exception as exc:  # e.g. a constructor argument timm no longer takes
            raise incompatible(family, f"building or running a tiny model failed "
                                        f"({type(exc).__name__}: {exc})") from exc
