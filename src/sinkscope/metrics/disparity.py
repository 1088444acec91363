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


def massive_mask(hidden: torch.Tensor, abs_threshold: float, rel_threshold: float) -> torch.Tensor:
    """Massive activations (Sun et al. 2024): |x| > abs_threshold and > rel_threshold x the median |x|.

    hidden: (..., D) -> bool (..., D); the median is over each token's own D dims.
    """
    mags = hidden.float().abs()
    mask = mags > abs_threshold
    rows = mask.any(-1)  # only tokens past the absolute bar need their median: a sort per candidate, not per token
    if bool(rows.any()):
        candidates = mags[rows]
        mask[rows] &= candidates > rel_threshold * candidates.median(-1, keepdim=True).values
    return mask


def dominant_mask(hidden: torch.Tensor, dom: torch.Tensor, reference: torch.Tensor, contrast: float) -> torch.Tensor:
    """Scale-free massive activations: dims that alone lift a token's DomRatio ``contrast`` times above
    the median DomRatio of its sequence's reference tokens, whatever their absolute size.

    hidden: (B, T, D); dom: (B, T) its :func:`dominance_ratio`; reference: (B, T) bool, the tokens
    whose median DomRatio is the reference (the other tokens). Returns bool (B, T, D):
    |h_d| / mean_j |h_j| >= contrast x median_{t in reference} DomRatio(h_t); all False for a sequence
    with no reference token.
    """
    mags = hidden.float().abs()
    mean = mags.mean(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (B, T, 1)
    median = dom.float().masked_fill(~reference, torch.nan).nanmedian(-1).values  # (B,)
    level = torch.nan_to_num(contrast * median, nan=torch.inf)[:, None, None]
    return mags / mean >= level


def log_bins(top: float, n_bins: int) -> torch.Tensor:
    """n_bins + 1 log-spaced edges from 1 to ``top``, for histograms of DomRatio (which lies in [1, D])."""
    return torch.logspace(0.0, float(torch.log10(torch.tensor(max(top, 1.0 + 1e-6)))), n_bins + 1, dtype=torch.float64)


def effective_rank_gram(matrix: torch.Tensor) -> torch.Tensor:
    """:func:`effective_rank` from the eigenvalues of the smaller Gram matrix, in float64.

    (..., T, D) -> (...). Same value (singular values are the square roots of the Gram matrix's
    eigenvalues) at a fraction of an SVD's cost: one (T x D) product and a min(T, D)-sized eigvalsh.
    """
    x = matrix.double()
    gram = x @ x.mT if x.shape[-2] <= x.shape[-1] else x.mT @ x
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = s / s.sum(-1, keepdim=True).clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    return torch.exp(entropy)
