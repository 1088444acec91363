"""Mergeable statistics: sums, counts and extrema, never means of means.

A :class:`Tally` is a bag of named tensors whose merge is addition (or max/min for extrema), so
batches merge exactly, and shards of a ``torchrun`` job reduce to the numbers one process gives.
Sums are float64 and counts int64.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..metrics.disparity import effective_rank_gram


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

    def per_head_mean(self, sum_name: str, count_name: str) -> torch.Tensor:
        """Sum (L, H, ...) over count (L, ...), one count for every head of a layer; NaN where nothing was counted."""
        count = self.tensors[count_name][:, None]
        return self.tensors[sum_name] / count.where(count > 0, torch.nan)

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


def add_rows_by_position(total: torch.Tensor, x: torch.Tensor, first: torch.Tensor, valid: torch.Tensor,
                         total_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Add the real token rows of ``x`` (B, T, W) into ``total`` (P, W) by position from each sequence's
    first real token, in place; with ``total_sq``, their squares too. Tokens at positions >= P are dropped.

    first: (B,) index of each sequence's first real token; valid: (B, T) bool, contiguous per sequence
    (the runner pads on one side). Returns (P,) float64: the rows each position received.
    Row by row into the float64 totals: a float64 copy of a whole batch costs more in page faults
    than the sums themselves.
    """
    P = total.shape[0]
    lengths = valid.sum(1).clamp(max=P)
    if total.device != x.device:  # tallies live on the CPU: sum on the activation's device, move once
        local_sq = None if total_sq is None else torch.zeros_like(total_sq, device=x.device)
        local = torch.zeros_like(total, device=x.device)
        count = add_rows_by_position(local, x, first, valid, local_sq)
        total += local.to(total.device)
        if total_sq is not None:
            total_sq += local_sq.to(total_sq.device)
        return count
    for b, (start, n) in enumerate(zip(first.tolist(), lengths.tolist())):
        row = x[b, start:start + n]
        total[:n] += row
        if total_sq is not None:
            wide = row.double()
            total_sq[:n].addcmul_(wide, wide)
    return (torch.arange(P, device=lengths.device)[None] < lengths[:, None]).sum(0).double().cpu()


@contextmanager
def few_threads(n: int = 1):
    """Run small LAPACK calls (eigvalsh of T x T, eigh of Dh x Dh) on ``n`` threads, then restore.

    On a busy CPU, multi-threaded LAPACK on small matrices spins and can be 100x slower than one
    thread (measured: a 64 x 768 svdvals took 1.6 s on 2 threads under load, 5 ms on 1).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(min(n, previous))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def effective_rank_sum(x: torch.Tensor, valid: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    """Sum over sequences of the effective rank of each one's (first ``max_tokens``) real tokens: (B, T, D) -> ().

    Unpadded batches take one batched eigvalsh; ragged ones one per sequence.
    """
    with few_threads():
        if bool(valid.all()):
            return effective_rank_gram(x[:, :max_tokens]).sum()
        return torch.stack([effective_rank_gram(x[b, valid[b]][:max_tokens]) for b in range(len(valid))]).sum()
