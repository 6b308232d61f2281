"""The prompted, pruned model as ONNX, with a dynamic batch axis, checked against onnxruntime before it is kept.

Why `fix_prompts` first: which tokens survive pruning is read from the masks' values, a shape that
depends on data, which `torch.export` cannot trace; fixed prompts make the graph static, and the pruned
tokens are simply not in it (the sequence is as short as the pruning made it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import ImageRule
from ..errors import UserError
from ..models.base import PromptTuned

ONNX_FILE = "model.onnx"
TOLERANCE = 1e-4  # the largest |logit difference| between PyTorch and onnxruntime accepted
MAX_BATCH = 4096


def export_onnx(model: torch.nn.Module, rule: ImageRule, path: str | Path, threads: int | None = None) -> int:
    """Write `model` (a prompted model, or any image classifier such as a bare backbone) as ONNX at
    `path`, whole or not at all, and return its size in bytes.

    The file is kept only when onnxruntime, run on a batch of 3, gives PyTorch's logits within
    `TOLERANCE`; otherwise `UserError` says by how much they differ.
    """
    from ..models.swin import PromptedSwin

    if isinstance(model, PromptedSwin):  # measured: onnxscript 0.7.2 cannot translate its 5-D attention
        raise UserError("ONNX export supports ViT backbones; on Swin, torch.onnx cannot translate the windowed "
                        "attention with its per-window mask (5-D scaled_dot_product_attention); export the adapter")
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    if isinstance(model, PromptTuned):
        model.fix_prompts()
    example = torch.randn(2, 3, rule.size, rule.size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            try:
                torch.onnx.export(model, (example,), tmp, dynamo=True, input_names=["images"],
                                  output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
            except Exception as exc:  # the exporter raises its own many kinds, with pages of context
                raise UserError(f"torch.onnx could not export this model: {_summary(exc)}") from None
        check = torch.randn(3, 3, rule.size, rule.size, generator=torch.Generator().manual_seed(1))
        session = onnx_session(tmp, threads)
        theirs = session.run(None, {"images": check.numpy()})[0]
        with torch.no_grad():
            ours = model(check).numpy()
        gap = float(np.abs(theirs - ours).max())
        if not gap <= TOLERANCE:
            raise UserError(f"the ONNX model's logits differ from PyTorch's by {gap:.2e} (more than {TOLERANCE}); "
                            "it was not kept")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path.stat().st_size


def _summary(exc: Exception) -> str:
    """The line of the exporter's long message that names the cause (its "Exception summary")."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    cause = next((line for line in lines if line.startswith("<class")), None)
    return (cause or next((line for line in lines if line), type(exc).__name__))[:300]


def onnx_session(path: str | Path, threads: int | None = None, arena: bool = True):
    """An onnxruntime CPU session of `path`, with `threads` intra-op threads (default: onnxruntime's).

    `arena=False` returns each run's working memory when it ends, where many sessions live at once (the
    inference benchmark: eleven ViT-B/16 sessions kept their arenas and passed 24 GB)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
