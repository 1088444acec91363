"""Small statistics shared by the chain metrics: std from sums, rank correlation, curve fits.

Pure functions. Everything that comes from streamed tallies takes the tallies' sums (float64) so
that the result is exactly the same however the data was split into batches or processes.
"""

from __future__ import annotations

import math

import torch


def std_from_sums(total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Population std sqrt(E[x^2] - E[x]^2) from float64 sums; NaN where count is 0.

    total, total_sq: (...) sums of x and x^2; count: broadcastable to them. Returns float64.
    """
    count = count.double()
    n = count.where(count > 0, torch.nan)
    mean = total.double() / n
    var = total_sq.double() / n - mean * mean
    return var.clamp_min(0).sqrt()


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value between two 1-D series (NaN pairs dropped).

    Returns (nan, nan) with fewer than 3 finite pairs.
    """
    from scipy.stats import kendalltau

    x, y = x.double().cpu(), y.double().cpu()
    keep = torch.isfinite(x) & torch.isfinite(y)
    if int(keep.sum()) < 3:
        return math.nan, math.nan
    result = kendalltau(x[keep].numpy(), y[keep].numpy())
    return float(result.statistic), float(result.pvalue)


def fit_inverse_sqrt(std_by_position: torch.Tensor) -> dict:
    """Least-squares fit of y_t = s / sqrt(t + 1) to a per-position std, t = 0, 1, ...

    std_by_position: (T,), NaN where no token was seen (dropped). Closed form:
    s = sum(y g) / sum(g^2) with g_t = 1/sqrt(t+1). Goodness of fit: R^2 = 1 - SS_res / SS_tot and
    the RMSE relative to the mean of y. Returns {"s", "r2", "relative_rmse", "positions"}.
    """
    y = std_by_position.double().cpu()
    t = torch.arange(len(y), dtype=torch.float64)
    keep = torch.isfinite(y)
    y, t = y[keep], t[keep]
    if len(y) < 2:
        return {"s": math.nan, "r2": math.nan, "relative_rmse": math.nan, "positions": int(len(y))}
    g = 1.0 / torch.sqrt(t + 1)
    s = float((y * g).sum() / (g * g).sum())
    residual = y - s * g
    ss_res = float((residual ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    mean = float(y.mean())
    rmse = math.sqrt(ss_res / len(y))
    return {"s": s, "r2": r2, "relative_rmse": rmse / mean if mean else math.nan, "positions": int(len(y))}


def first_rest_ratio(by_position: torch.Tensor) -> torch.Tensor:
    """Value at position 0 over the mean of the later positions seen (NaN ones ignored).

    by_position: (..., T) -> (...)
    """
    rest = by_position[..., 1:].double()
    return by_position[..., 0].double() / rest.nanmean(-1)


def excess_kurtosis(values: torch.Tensor) -> torch.Tensor:
    """Fisher (excess) kurtosis over the last dim, biased moments: 0 for a normal, large for spiky.

    values: (..., N) -> (...); matches ``scipy.stats.kurtosis(x, fisher=True, bias=True)``.
    """
    x = values.double()
    centred = x - x.mean(-1, keepdim=True)
    m2 = (centred ** 2).mean(-1)
    m4 = (centred ** 4).mean(-1)
    return m4 / (m2 * m2).clamp_min(1e-300) - 3.0


def histogram_quantile(counts: torch.Tensor, edges: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` read off histograms by linear interpolation inside the bin that crosses it.

    counts: (..., K) mergeable bin counts; edges: (K + 1,) increasing bin edges (the first and
    last bins catch everything below/above). Exact to within one bin width. NaN for empty rows.
    """
    counts = counts.double()
    total = counts.sum(-1, keepdim=True)
    cum = counts.cumsum(-1)
    target = q * total
    k = torch.searchsorted(cum.contiguous(), target.contiguous()).clamp(max=counts.shape[-1] - 1)  # (..., 1)
    before = torch.where(k > 0, cum.gather(-1, (k - 1).clamp(min=0)), torch.zeros_like(target))
    inside = counts.gather(-1, k).clamp_min(1e-300)
    frac = ((target - before) / inside).clamp(0, 1)
    edges = edges.double().to(counts.device)
    lo, hi = edges[k], edges[k + 1]
    value = (lo + frac * (hi - lo)).squeeze(-1)
    return value.where(total.squeeze(-1) > 0, torch.nan)
