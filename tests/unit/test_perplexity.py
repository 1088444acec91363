"""Perplexity and its interval against an independent computation: torch's cross-entropy on each
sequence's real tokens alone (so no mask is involved), and the documented normal interval computed in
numpy with scipy's quantile: exp(total NLL / total tokens) centred, half-width z * std(per-sequence mean
NLL, ddof 1) / sqrt(n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sinkscope.metrics.perplexity import mean_with_ci, perplexity_with_ci, sequence_nll

LENGTHS = (9, 4, 7, 2, 9)
V = 11


def _padded(side: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = max(LENGTHS)
    ids = torch.randint(0, V, (len(LENGTHS), T), generator=g)
    logits = torch.randn(len(LENGTHS), T, V, generator=g) * 3
    valid = torch.zeros(len(LENGTHS), T, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        start = 0 if side == "right" else T - n
        valid[b, start:start + n] = True
    return valid, ids, logits


def _by_hand(valid, ids, logits) -> list[tuple[float, int]]:
    """(summed NLL, predicted tokens) per sequence: cross-entropy on the sequence's real tokens only."""
    rows = []
    for b in range(ids.shape[0]):
        real = valid[b].nonzero()[:, 0]
        x, y = logits[b, real].double(), ids[b, real]
        rows.append((float(torch.nn.functional.cross_entropy(x[:-1], y[1:], reduction="sum")), len(real) - 1))
    return rows


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_nll_counts_only_real_next_token_pairs(side):
    valid, ids, logits = _padded(side)
    got = sequence_nll(valid, ids, logits)
    want = _by_hand(valid, ids, logits)
    np.testing.assert_allclose(got[:, 0].numpy(), [s for s, _ in want], rtol=1e-5)
    assert got[:, 1].tolist() == [n for _, n in want]


@pytest.mark.parametrize("side", ["right", "left"])
def test_perplexity_and_its_interval_match_numpy(side):
    valid, ids, logits = _padded(side, seed=1)
    rows = np.array(_by_hand(valid, ids, logits))  # (N, 2)
    total = rows[:, 0].sum() / rows[:, 1].sum()
    means = rows[:, 0] / rows[:, 1]
    half = norm.ppf(0.975) * means.std(ddof=1) / math.sqrt(len(means))
    got = perplexity_with_ci(sequence_nll(valid, ids, logits))
    assert got["perplexity"] == pytest.approx(math.exp(total), rel=1e-5)
    assert got["ci"] == pytest.approx([math.exp(total - half), math.exp(total + half)], rel=1e-5)
    lone = perplexity_with_ci(torch.tensor([[6.0, 3.0]], dtype=torch.float64))
    assert lone["perplexity"] == pytest.approx(math.exp(2.0)) and all(math.isnan(v) for v in lone["ci"])


def test_mean_with_ci_matches_numpy():
    x = np.random.default_rng(0).lognormal(size=17)
    mean, (lo, hi) = mean_with_ci(torch.tensor(x))
    half = norm.ppf(0.975) * x.std(ddof=1) / math.sqrt(len(x))
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-12)
    one, (lo, hi) = mean_with_ci(torch.tensor([0.25]))
    assert one == 0.25 and math.isnan(lo) and math.isnan(hi)
