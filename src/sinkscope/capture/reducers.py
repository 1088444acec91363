"""Mergeable statistics: sums, counts and extrema, never means of means.

A :class:`Tally` is a bag of named tensors whose merge is addition (or max/min for extrema), so
batches merge exactly, and shards of a ``torchrun`` job reduce to the numbers one process gives.
Sums are float64 and counts int64.
"""

from __future__ import annotations

import torch


class Tally:
    MAX_PREFIX = "max_"  # names starting with this merge by maximum
    MIN_PREFIX = "min_"  # and these by minimum

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def zeros(self, name: str, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        if name.startswith(self.MAX_PREFIX):
            value = torch.full(shape, -torch.inf, dtype=dtype)
        elif name.startswith(self.MIN_PREFIX):
            value = torch.full(shape, torch.inf, dtype=dtype)
        else:
            value = torch.zeros(shape, dtype=dtype)
        self.tensors[name] = value
        return value

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def add(self, name: str, index: tuple, value: torch.Tensor) -> None:
        target = self.tensors[name]
        value = value.to(device=target.device, dtype=target.dtype)
        if name.startswith(self.MAX_PREFIX):
            target[index] = torch.maximum(target[index], value)
        elif name.startswith(self.MIN_PREFIX):
            target[index] = torch.minimum(target[index], value)
        else:
            target[index] += value

    def all_reduce(self) -> None:
        """Reduce across torch.distributed processes in place (no-op when not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for name in sorted(self.tensors):
            value = self.tensors[name]
            op = dist.ReduceOp.SUM
            if name.startswith(self.MAX_PREFIX):
                op = dist.ReduceOp.MAX
            elif name.startswith(self.MIN_PREFIX):
                op = dist.ReduceOp.MIN
            dist.all_reduce(value, op=op)


def scatter_by_position(values: torch.Tensor, relative: torch.Tensor, valid: torch.Tensor, length: int) -> torch.Tensor:
    """Sum ``values`` (..., B, T) over the batch into relative-position bins (..., length).

    relative: (B, T) long position of each token counted from its sequence's first real token.
    valid:    (B, T) bool, tokens to include.
    """
    lead = values.shape[:-2]
    out = torch.zeros(*lead, length, dtype=torch.float64, device=values.device)
    if bool(valid.all()) and bool((relative == relative[:1]).all()):  # no padding: sum the batch first
        return out.index_add_(len(lead), relative[0], values.sum(-2, dtype=torch.float64))
    flat = values.reshape(*lead, -1)[..., valid.reshape(-1)]
    index = relative.reshape(-1)[valid.reshape(-1)]
    return out.index_add_(len(lead), index, flat.double())
