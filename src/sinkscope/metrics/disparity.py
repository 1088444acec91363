"""Dimension disparity: how much one hidden dimension dominates a token. Pure tensor functions."""

from __future__ import annotations

import torch

from .magnitudes import lower_median


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


def massive_mask(hidden: torch.Tensor, abs_threshold: float, rel_threshold: float,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """Massive activations (Sun et al. 2024): |x| > abs_threshold and > rel_threshold x the median |x| of the
    sequence's whole layer output, all its real tokens and dims, as their layer-wise analysis computes it
    (``torch.median(feat_abs)`` over one sequence's block output, locuslab/massive-activations ``main_llm.py``).

    hidden: (..., T, D) one sequence per leading index; valid: (..., T) bool real tokens (default all).
    Returns bool (..., T, D).
    """
    return dense_mask(*massive_rows(hidden, abs_threshold, rel_threshold, valid), hidden.shape[-1])


def massive_rows(hidden: torch.Tensor, abs_threshold: float, rel_threshold: float,
                 valid: torch.Tensor | None = None,
                 median: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`massive_mask` on the tokens that can hold one: (rows (..., T) bool, their mask (N, D) bool).

    Only tokens past the absolute bar can, so the median is taken only for sequences that have one,
    and no (..., T, D) mask is built for the few tokens that matter. ``median`` (S,): the sequences'
    medians when already taken (:func:`~sinkscope.metrics.magnitudes.sequence_medians`).
    """
    mags = hidden.float().abs()
    valid = torch.ones(mags.shape[:-1], dtype=torch.bool, device=mags.device) if valid is None else valid
    rows = (mags.amax(-1) > abs_threshold) & valid  # (..., T)
    flat_rows, flat_mags, flat_valid = rows.reshape(-1, rows.shape[-1]), mags.reshape(-1, *mags.shape[-2:]), \
        valid.reshape(-1, valid.shape[-1])
    if median is not None:
        median = median.float()  # the bar is set in float32 whatever the hidden dtype, as on the path below
    else:
        median = torch.full((len(flat_rows),), torch.inf, device=mags.device)  # (S,) no row past the bar: none needed
        for s in flat_rows.any(-1).nonzero()[:, 0].tolist():
            median[s] = lower_median(flat_mags[s][flat_valid[s]])
    level = (rel_threshold * median).reshape(rows.shape[:-1])[..., None].expand_as(rows)[rows]  # (N,)
    candidates = mags[rows]  # (N, D)
    return rows, (candidates > abs_threshold) & (candidates > level[:, None])


def dominant_mask(hidden: torch.Tensor, dom: torch.Tensor, reference: torch.Tensor, contrast: float) -> torch.Tensor:
    """Scale-free massive activations: dims that alone lift a token's DomRatio ``contrast`` times above
    the median DomRatio of its sequence's reference tokens, whatever their absolute size.

    hidden: (B, T, D); dom: (B, T) its :func:`dominance_ratio`; reference: (B, T) bool, the tokens
    whose median DomRatio is the reference (the other tokens). Returns bool (B, T, D):
    |h_d| / mean_j |h_j| >= contrast x median_{t in reference} DomRatio(h_t); all False for a sequence
    with no reference token.
    """
    return dense_mask(*dominant_rows(hidden, dom, reference, contrast), hidden.shape[-1])


def dominant_rows(hidden: torch.Tensor, dom: torch.Tensor, reference: torch.Tensor,
                  contrast: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dominant_mask` on the tokens that can pass: (rows (B, T) bool, their mask (N, D) bool).

    max_d |h_d| / mean_j |h_j| is the token's DomRatio, so only tokens whose DomRatio reaches the
    level can hold a dominant dim.
    """
    median = dom.float().masked_fill(~reference, torch.nan).nanmedian(-1).values  # (B,)
    level = torch.nan_to_num(contrast * median, nan=torch.inf)[:, None].expand_as(dom)  # (B, T)
    rows = dom >= level
    mags = hidden[rows].float().abs()  # (N, D)
    mean = mags.mean(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return rows, mags / mean >= level[rows][:, None]


def dense_mask(rows: torch.Tensor, row_mask: torch.Tensor, width: int) -> torch.Tensor:
    """(..., width) bool from a row selector (...) and the mask of the selected rows (N, width)."""
    mask = torch.zeros(*rows.shape, width, dtype=torch.bool, device=rows.device)
    mask[rows] = row_mask
    return mask


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
