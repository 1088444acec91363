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
    mean_sq = (total.double() / n).square_()
    # in place: on (layers x positions x dims) sums every extra temporary costs more in page faults than arithmetic
    return (total_sq.double() / n).sub_(mean_sq).clamp_min_(0).sqrt_()


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value between two 1-D series (NaN pairs dropped), as
    ``scipy.stats.kendalltau`` gives them: the exact null distribution without ties when n <= 33 (or
    at most one discordant or concordant pair), else the normal approximation with the tie-corrected
    variance (Kendall 1970). Returns (nan, nan) with fewer than 3 finite pairs or a constant series.

    Written on torch, in O(n log^2 n), because importing scipy.stats costs a probe more than half a second.
    """
    x, y = x.double().cpu(), y.double().cpu()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3:
        return math.nan, math.nan
    rx, ry = _dense_ranks(x), _dense_ranks(y)
    order = torch.argsort(rx * (n + 1) + ry)  # by x, then y: pairs tied in x never count as discordant
    discordant = _inversions(ry[order])
    total = n * (n - 1) // 2
    joint = _tied_pairs(rx * (n + 1) + ry)[0]
    x_tied, x_t3, x_t5 = _tied_pairs(rx)
    y_tied, y_t3, y_t5 = _tied_pairs(ry)
    if x_tied == total or y_tied == total:
        return math.nan, math.nan
    score = total - x_tied - y_tied + joint - 2 * discordant  # concordant - discordant
    tau = max(-1.0, min(1.0, score / math.sqrt(total - x_tied) / math.sqrt(total - y_tied)))
    if x_tied == 0 and y_tied == 0 and (n <= 33 or min(discordant, total - discordant) <= 1):
        return tau, _kendall_exact_p(n, total - discordant)
    m = n * (n - 1.0)
    var = (m * (2 * n + 5) - x_t5 - y_t5) / 18 + 2 * x_tied * y_tied / m + x_t3 * y_t3 / (9 * m * (n - 2))
    return tau, math.erfc(abs(score) / math.sqrt(var) / math.sqrt(2))


def _dense_ranks(values: torch.Tensor) -> torch.Tensor:
    """(n,) int64 ranks 0, 1, ... with equal values sharing one rank."""
    return torch.unique(values, return_inverse=True)[1]


def _tied_pairs(ranks: torch.Tensor) -> tuple[int, int, int]:
    """Over groups of equal ranks of size t > 1: sum t(t-1)/2, sum t(t-1)(t-2), sum t(t-1)(2t+5) (exact ints)."""
    sizes = [t for t in torch.unique(ranks, return_counts=True)[1].tolist() if t > 1]
    return (sum(t * (t - 1) // 2 for t in sizes), sum(t * (t - 1) * (t - 2) for t in sizes),
            sum(t * (t - 1) * (2 * t + 5) for t in sizes))


def _inversions(values: torch.Tensor) -> int:
    """Pairs i < j with values[i] > values[j] (non-negative ints), by a bottom-up merge sort: at each width,
    every element of a right half counts the larger ones in its sorted left half, all pairs in one search."""
    import numpy as np

    current = values.numpy().astype(np.int64)
    n = len(current)
    span = int(current.max()) + 1 if n else 1
    index = np.arange(n)
    count, width = 0, 1
    while width < n:
        block = index // (2 * width)  # the merged pair each element belongs to
        right = (index // width) % 2 == 1
        keyed = current + block * span  # each pair's values in a range of its own: one search serves all
        left_sorted = np.sort(np.where(right, np.iinfo(np.int64).max, keyed))
        # this pair's left elements that are larger = (its left elements) - (those <= the value)
        larger = np.searchsorted(left_sorted, (block + 1) * span) - np.searchsorted(left_sorted, keyed, "right")
        count += int(larger[right].sum())
        current = np.sort(keyed) - block * span  # merged: each pair stays in its own place
        width *= 2
    return count


def _kendall_exact_p(n: int, concordant: int) -> float:
    """Two-sided p-value of ``concordant`` pairs among n untied ranks under independence, from the exact
    count of permutations with each number of inversions (Mahonian numbers; Kendall 1970, ch. 4)."""
    total = n * (n - 1) // 2
    c = min(concordant, total - concordant)
    if 4 * c == n * (n - 1):
        return 1.0
    if c <= 1 and n > 33:  # closed forms: 1 or n-1 permutations out of n! in each tail
        tail = 1 if c == 0 else n
        return 2.0 * tail / math.factorial(n) if n < 171 else 0.0
    counts = [1]  # permutations of k items by inversion count, k = 1, 2, ...
    for k in range(2, n + 1):
        grown = [0] * (len(counts) + k - 1)
        for inversions, ways in enumerate(counts):
            for extra in range(k):
                grown[inversions + extra] += ways
        counts = grown
    return min(1.0, 2.0 * sum(counts[: c + 1]) / math.factorial(n))


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
