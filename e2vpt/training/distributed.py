"""Multi-process training with PyTorch's own engine (`torchrun --nproc_per_node=N -m e2vpt train ...`).

Why the data split looks like this: every rank draws the same shuffled order and takes a strided
slice of each *global* batch, and the loss is scaled so that DDP's gradient averaging yields exactly
the single-process mean over the global batch. A run with N processes therefore follows the same
optimisation path as one process with the same global batch (up to float summation order), and
pruning decisions use importance sums all-reduced over every rank's images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistContext":
        """Read torchrun's variables; one process (world 1) when they are absent."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across ranks in place (a no-op in one process)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def global_batches(n: int, batch_size: int, shuffle: bool, seed: int) -> list[list[int]]:
    """The index batches of one epoch, identical on every rank."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


def local_batches(batches: list[list[int]], ctx: DistContext) -> list[list[int]]:
    """This rank's strided slice of each global batch (rank r takes items r, r+N, ...)."""
    return [b[ctx.rank::ctx.world] for b in batches]
