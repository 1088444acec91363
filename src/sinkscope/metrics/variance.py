"""Link one (method.md section 2): variance discrepancy of the aggregated attention output.

Pure tensor functions. The input of the attention output projection is the concatenation of the
per-head outputs after value aggregation, (B, T, H * Dh). The first token's output is its own
value (weight 1), later outputs average t + 1 values, so their spread falls like 1/sqrt(t + 1).
"""

from __future__ import annotations

import math

import torch

from .stats import first_rest_ratio, fit_inverse_sqrt, kendall_tau, std_from_sums


def std_across_dims(x: torch.Tensor) -> torch.Tensor:
    """Population std over hidden dims of every token, in float32. x: (B, T, D) -> (B, T).

    Two passes, the mean and then the norm of the deviations: as exact as ``torch.std`` (no
    cancellation) and several times faster on CPU, where this runs on every layer's tokens.
    """
    x = x.float()
    return torch.linalg.vector_norm(x - x.mean(-1, keepdim=True), dim=-1) / math.sqrt(x.shape[-1])


def std_across_dims_and_heads(x: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both :func:`std_across_dims` results from one pass: over all dims (B, T) and per head (B, T, H).

    x: (B, T, H * Dh). The heads have equal sizes, so the variance over all dims is the mean of the
    heads' variances plus the variance of their means (no cancellation: both terms are >= 0).
    """
    x = x.float().reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)
    mean = x.mean(-1, keepdim=True)  # (B, T, H, 1)
    heads = torch.linalg.vector_norm(x - mean, dim=-1) / math.sqrt(x.shape[-1])  # (B, T, H)
    total = heads.square().mean(-1) + mean[..., 0].var(-1, correction=0)
    return total.sqrt(), heads


def std_across_samples(total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor,
                       n_heads: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per position, the std over samples of every dim, then the mean over dims.

    total, total_sq: (..., T, D) sums over samples of x and x^2 (float64); count: (..., T).
    Returns (..., T); with ``n_heads``, also the mean over each head's dims (..., H, T), from the same
    per-dim std. NaN where unseen.
    """
    std = std_from_sums(total, total_sq, count[..., None])  # (..., T, D)
    if n_heads is None:
        return std.mean(-1)
    heads = std.reshape(*std.shape[:-1], n_heads, std.shape[-1] // n_heads).mean(-1)  # (..., T, H)
    return heads.mean(-1), heads.transpose(-1, -2)


def effective_tokens(probs: torch.Tensor) -> torch.Tensor:
    """Effective number of aggregated tokens, 1 / sum_j a_tj^2, of attention rows (..., S) -> (...)."""
    return 1.0 / (probs.double() ** 2).sum(-1)


def variance_summary(std_before: torch.Tensor, std_after: torch.Tensor | None = None) -> dict:
    """Per-layer summary of a per-position std curve.

    std_before: (T,) std at the o_proj input by position (NaN where unseen); std_after: (T,) the
    same at its output. Returns the s / sqrt(t + 1) fit with its R^2, the first-token / rest
    ratio and, with ``std_after``, Kendall's tau (and p-value) between the two curves.
    """
    out = {"fit": fit_inverse_sqrt(std_before), "first_rest_ratio": float(first_rest_ratio(std_before))}
    if std_after is not None:
        tau, p = kendall_tau(std_before, std_after)
        out["kendall_tau_o_proj"] = tau
        out["kendall_p_o_proj"] = p
        out["first_rest_ratio_after"] = float(first_rest_ratio(std_after))
    return out
