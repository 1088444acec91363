"""Fused attention over only the key columns each block of queries can see.

A mask editor's pattern (stream's policies: a recent window plus a few kept keys) hides most keys from most
queries, but the fused kernel under a dense mask still computes every query-key pair. Cut the queries into
blocks and hand the kernel, per block, only the key columns some query of the block sees: the softmax is the
same (a hidden key weighs exp(-inf) = 0 either way), for a fraction of the work (a window of W keys over T
queries: about (BLOCK + W) / T of it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BLOCK = 128  # queries per block: small enough that a block's band of keys stays near the window, large enough
# that the kernel's per-call cost stays small (30 layers x T / 128 calls per forward)
MIN_SAVING = 0.5  # use blocks only when they skip at least half of the query-key pairs (a causal mask skips half)


def column_blocks(visible: torch.Tensor, block: int = BLOCK) -> list[tuple[int, int, torch.Tensor]] | None:
    """[(t0, t1, cols)]: query blocks and the key columns (P,) any of their queries sees in any row or head.

    visible (B, 1|H, T, S) bool. None when blocks would not skip ``MIN_SAVING`` of the pairs, or a block sees
    no key at all (the dense kernel then handles the pattern as it is).
    """
    T, S = visible.shape[-2:]
    if T <= block:
        return None
    seen = visible.any(1).any(0)  # (T, S)
    blocks, pairs = [], 0
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        cols = seen[t0:t1].any(0).nonzero()[:, 0]
        if not len(cols):
            return None
        blocks.append((t0, t1, cols))
        pairs += (t1 - t0) * len(cols)
    return blocks if pairs <= (1 - MIN_SAVING) * T * S else None


def blockwise(kernel: Callable, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor,
              blocks: list[tuple[int, int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H, T, Dv) and lse (B, H, T): ``kernel(q, k, v, visible)`` on each block's queries and columns."""
    outs, lses = [], []
    for t0, t1, cols in blocks:
        out, lse = kernel(query[:, :, t0:t1], key[:, :, cols], value[:, :, cols], visible[:, :, t0:t1][..., cols])
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)
