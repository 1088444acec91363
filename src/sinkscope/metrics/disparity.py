"""Dimension disparity: how much one hidden dimension dominates a token. Pure tensor functions."""

from __future__ import annotations

import torch


def dominance_ratio(hidden: torch.Tensor) -> torch.Tensor:
    """DomRatio(h) = max_j |h_j| / mean_j |h_j| over the last dimension.

    hidden: (..., D) -> (...). Equals D for a basis vector and 1 for a constant-magnitude vector.
    """
    mags = hidden.float().abs()
    return mags.amax(-1) / mags.mean(-1).clamp_min(torch.finfo(torch.float32).tiny)


def effective_rank(matrix: torch.Tensor) -> torch.Tensor:
    """exp of the entropy of the normalised singular values of a (T, D) matrix (Roy & Vetterli 2007).

    Batched: (..., T, D) -> (...). 1 for a rank-one matrix, min(T, D) for orthonormal rows.
    """
    s = torch.linalg.svdvals(matrix.float())
    p = s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(torch.float32).tiny))).sum(-1)
    return torch.exp(entropy)
