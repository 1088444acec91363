"""torchrun support: start the process group from the environment torchrun sets, once."""

from __future__ import annotations

import os

import torch


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """(rank, world size); initialises the default process group when launched with WORLD_SIZE > 1.

    ``backend`` defaults to nccl with CUDA and gloo otherwise; reductions of CPU tensors need gloo.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()
