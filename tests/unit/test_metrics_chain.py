"""Chain metrics (variance, neurons, disparity, QK, stats) against brute-force numpy/scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from sinkscope.capture.attention import BatchInfo
from sinkscope.capture.reducers import Tally, add_rows_by_position
from sinkscope.metrics.disparity import dominance_ratio, log_bins, massive_mask
from sinkscope.metrics.neurons import column_profile, selectivity_by_position, spike_ratios, top_rows
from sinkscope.metrics.qk import cosine, key_rows, positive_dot_count, top_principal_direction
from sinkscope.metrics.stats import (excess_kurtosis, first_rest_ratio, fit_inverse_sqrt, histogram_quantile,
                                     kendall_tau, std_from_sums)
from sinkscope.metrics.variance import effective_tokens, std_across_dims, std_across_dims_and_heads, std_across_samples


def test_std_from_sums_merges_batches_exactly():
    x = torch.randn(50, 7, 5, dtype=torch.float64) * 3 + 1
    tally = Tally()
    tally.zeros("s", 7, 5)
    tally.zeros("q", 7, 5)
    for chunk in x.split([3, 20, 27]):  # uneven batches merge to the same sums
        tally.add("s", (), chunk.sum(0))
        tally.add("q", (), (chunk ** 2).sum(0))
    got = std_from_sums(tally["s"], tally["q"], torch.tensor(50.0))
    np.testing.assert_allclose(got.numpy(), x.numpy().std(0), rtol=1e-9)


def test_std_across_samples_per_position_and_head():
    x = torch.randn(40, 6, 8, dtype=torch.float64)  # (N, T, D), D = 2 heads x 4
    total, total_sq, count = x.sum(0), (x ** 2).sum(0), torch.full((6,), 40.0)
    ref = x.numpy().std(0)  # (T, D)
    np.testing.assert_allclose(std_across_samples(total, total_sq, count).numpy(), ref.mean(-1), rtol=1e-9)
    both, heads = std_across_samples(total, total_sq, count, n_heads=2)  # (T,), (H, T)
    np.testing.assert_allclose(heads.numpy(), ref.reshape(6, 2, 4).mean(-1).T, rtol=1e-9)
    np.testing.assert_allclose(both.numpy(), ref.mean(-1), rtol=1e-9)


def test_std_across_dims_matches_numpy():
    x = torch.randn(3, 5, 12)
    np.testing.assert_allclose(std_across_dims(x).numpy(), x.numpy().std(-1), rtol=1e-5)
    both, heads = std_across_dims_and_heads(x + 7.0, 3)  # an offset: the combination must not cancel
    np.testing.assert_allclose(both.numpy(), x.numpy().std(-1), rtol=1e-5)
    np.testing.assert_allclose(heads.numpy(), x.numpy().reshape(3, 5, 3, 4).std(-1), rtol=1e-5)


def _kendall_brute(x, y):  # tau-a = tau-b without ties
    pairs = list(itertools.combinations(range(len(x)), 2))
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    return s / len(pairs)


def test_kendall_tau_matches_pair_count_and_drops_nan():
    x, y = np.random.default_rng(0).normal(size=(2, 15))
    tau, p = kendall_tau(torch.tensor(x), torch.tensor(y))
    assert tau == pytest.approx(_kendall_brute(x, y), abs=1e-12)
    assert 0 <= p <= 1
    x2, y2 = np.append(x, np.nan), np.append(y, 1.0)
    assert kendall_tau(torch.tensor(x2), torch.tensor(y2))[0] == pytest.approx(tau, abs=1e-12)


def _kendall_cases():
    rng = np.random.default_rng(3)
    for n in (3, 4, 7, 20, 33, 34, 60, 257, 2000):
        x, y = rng.normal(size=(2, n))
        yield f"n{n}", x, y  # n <= 33 untied: the exact null distribution
        yield f"n{n}-ties", rng.integers(0, 4, n).astype(float), rng.integers(0, 5, n).astype(float)
        yield f"n{n}-close", x, x + 0.01 * y
    ordered = np.arange(40.0)
    yield "n40-one-discordant", ordered, np.r_[1.0, 0.0, ordered[2:]]  # min(dis, con) <= 1 beyond n = 33
    yield "n40-reversed", ordered, -ordered
    yield "n4-half", np.array([0.0, 1, 2, 3]), np.array([1.0, 0, 3, 2])  # 4c = n(n-1): p = 1
    yield "constant", np.ones(10), rng.normal(size=10)


@pytest.mark.parametrize("name,x,y", list(_kendall_cases()), ids=[c[0] for c in _kendall_cases()])
def test_kendall_tau_and_p_match_scipy_on_every_branch(name, x, y):
    """Our Kendall (no scipy import at probe time) gives scipy's tau-b and p-value: exact and asymptotic,
    with and without ties, and NaN for a constant series."""
    from scipy.stats import kendalltau

    want = kendalltau(x, y)
    tau, p = kendall_tau(torch.tensor(x), torch.tensor(y))
    np.testing.assert_allclose([tau, p], [want.statistic, want.pvalue], rtol=1e-9, atol=0, equal_nan=True)


def test_fit_inverse_sqrt_recovers_exact_curve_and_matches_lstsq():
    t = np.arange(32)
    exact = fit_inverse_sqrt(torch.tensor(2.5 / np.sqrt(t + 1)))
    assert exact["s"] == pytest.approx(2.5) and exact["r2"] == pytest.approx(1.0) and exact["relative_rmse"] < 1e-12
    y = 2.5 / np.sqrt(t + 1) + np.random.default_rng(1).normal(0, 0.1, 32)
    g = 1 / np.sqrt(t + 1)
    s, *_ = np.linalg.lstsq(g[:, None], y, rcond=None)
    r2 = 1 - ((y - s[0] * g) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    fit = fit_inverse_sqrt(torch.tensor(np.append(y, np.nan)))
    assert fit["s"] == pytest.approx(s[0], rel=1e-10) and fit["r2"] == pytest.approx(r2, rel=1e-10)
    assert fit["positions"] == 32
    flat = fit_inverse_sqrt(torch.ones(32))  # a flat curve is a bad fit
    assert flat["r2"] < 0.5 or math.isnan(flat["r2"])


def test_first_rest_ratio_and_effective_tokens():
    assert float(first_rest_ratio(torch.tensor([4.0, 1.0, 3.0, float("nan")]))) == pytest.approx(2.0)
    probs = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25] * 4])
    np.testing.assert_allclose(effective_tokens(probs).numpy(), [1.0, 2.0, 4.0])


def test_excess_kurtosis_matches_scipy():
    x = np.random.default_rng(2).standard_t(3, size=(4, 200))
    np.testing.assert_allclose(excess_kurtosis(torch.tensor(x)).numpy(), scipy.stats.kurtosis(x, axis=-1), rtol=1e-9)


def test_histogram_median_is_within_one_bin():
    values = np.random.default_rng(3).lognormal(1.0, 0.5, 5000).clip(1, 60)
    edges = log_bins(64, 512)
    index = np.clip(np.searchsorted(edges.numpy(), values, side="right") - 1, 0, 511)
    counts = torch.tensor(np.bincount(index, minlength=512), dtype=torch.float64)
    median = float(histogram_quantile(counts[None], edges, 0.5)[0])
    width = float((edges[1:] / edges[:-1]).max())
    assert np.median(values) / width <= median <= np.median(values) * width
    assert math.isnan(float(histogram_quantile(torch.zeros(1, 512), edges, 0.5)[0]))


def test_spike_ratios_match_numpy():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(3, 10, 20, generator=g)
    act[:, 0, 7] = 500.0
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[:, 0] = False
    valid[2, 8:] = False  # padding is ignored
    other_sum = act.abs().masked_fill(~valid[..., None], 0).double().sum(1)
    token, channel, mean = spike_ratios(act[:, 0], other_sum, valid.sum(1))
    for b in range(3):
        sink = np.abs(act[b, 0].numpy().astype(np.float64))
        mean_other = np.abs(act[b][valid[b]].numpy()).mean(0)
        rest = np.array([np.delete(sink, i).mean() for i in range(len(sink))])  # the other channels
        np.testing.assert_allclose(token[b].numpy(), sink / mean_other, rtol=1e-5)
        np.testing.assert_allclose(channel[b].numpy(), sink / rest, rtol=1e-4)
        assert float(mean[b]) == pytest.approx(sink.mean(), rel=1e-5)


def test_top_rows_and_column_profile():
    w = torch.randn(50, 16) * 0.1
    w[13] = 3.0
    rows = top_rows(w, 3)
    assert rows[0]["index"] == 13 and rows[0]["ratio_to_median"] > 10 and len(rows) == 3
    column = torch.zeros(16)
    column[4], column[9] = 3.0, -1.0
    profile = column_profile(column, top=2)
    assert [d["dim"] for d in profile["dims"]] == [4, 9]
    assert profile["dims"][0]["share"] == pytest.approx(0.9) and profile["dims"][1]["weight"] == -1.0
    assert profile["kurtosis"] == pytest.approx(scipy.stats.kurtosis(column.numpy()), rel=1e-6)


def test_selectivity_by_position_is_the_mean_of_per_token_scores():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 8, generator=g)  # (N sequences, T positions, D)
    act = torch.randn(6, 5, generator=g)
    gate, up = torch.randn(8, generator=g), torch.randn(8, generator=g)
    count = torch.tensor([6, 6, 6, 3, 0])  # later positions seen by fewer sequences
    seen = torch.arange(6)[:, None] < count[None]  # (N, T)
    unit = x / x.norm(dim=-1, keepdim=True)
    sums = [(v.double() * seen[..., None]).sum(0) for v in (x, unit)] + [(act.double() * seen).sum(0)]
    xn, gn, un = x.double().numpy(), gate.double().numpy(), up.double().numpy()
    for row, name in ((gn, "gated"), (un, "plain")):  # plain MLP: cosine with the fc1 row
        got = selectivity_by_position(*sums, count, gate if name == "gated" else None, up)
        cos = xn @ row / (np.linalg.norm(xn, axis=-1) * np.linalg.norm(row))  # (N, T), token by token
        for t in range(4):
            n = int(count[t])
            assert float(got["cos_gate"][t]) == pytest.approx(cos[:n, t].mean(), rel=1e-6), name
            assert float(got["up_dot"][t]) == pytest.approx((xn[:n, t] @ un).mean(), rel=1e-6)
            assert float(got["activation"][t]) == pytest.approx(float(act[:n, t].double().mean()), rel=1e-6)
        assert all(torch.isnan(got[k][4]) for k in got)  # a position no sequence reached


def test_top_principal_direction_matches_svd_and_points_with_the_mean():
    g = torch.Generator().manual_seed(1)
    u = torch.tensor([0.6, -0.8, 0.0])
    q = 3 * u + 0.3 * torch.randn(400, 3, generator=g)  # (N, Dh), common direction u
    second = (q.T.double() @ q.double()) / len(q)
    top = top_principal_direction(second, q.double().mean(0))
    _, _, vt = np.linalg.svd(q.numpy().astype(np.float64), full_matrices=False)
    assert abs(float(cosine(top, torch.tensor(vt[0])))) == pytest.approx(1.0, abs=1e-9)
    assert float(cosine(top, u)) > 0.99  # signed towards the mean, not against it


def test_positive_dot_count_and_key_rows():
    q = torch.randn(2, 3, 5, 4)
    k = torch.randn(2, 3, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 0] = False
    brute = ((torch.einsum("bhtd,bhd->bht", q, k) > 0) & mask[:, None]).sum((0, 2))
    assert positive_dot_count(q, k, mask).tolist() == brute.double().tolist()
    w = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(8, 6)  # 2 kv heads x Dh 4, D 6
    rows = key_rows(w, n_kv=2, head_dim=4, n_heads=4)
    assert rows.shape == (4, 4, 6)
    assert torch.equal(rows[1], w[:4]) and torch.equal(rows[2], w[4:])


def test_massive_mask_and_dominance_ratio():
    h = torch.full((2, 10), 0.05)
    h[0, 3] = 150.0  # > 100 and > 1000 x median 0.05
    h[1, 4] = 40.0  # large relative, but not > 100
    mask = massive_mask(h, 100.0, 1000.0)
    assert mask.nonzero().tolist() == [[0, 3]]
    assert float(dominance_ratio(h)[0]) == pytest.approx(150 / ((150 + 9 * 0.05) / 10), rel=1e-5)


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (2, 7, 30)])
def test_effective_rank_gram_matches_svd(shape):
    from sinkscope.metrics.disparity import effective_rank, effective_rank_gram

    x = torch.randn(*shape, dtype=torch.float64)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum(-1, keepdims=True)
    brute = np.exp(-(p * np.log(p)).sum(-1))
    np.testing.assert_allclose(effective_rank_gram(x).numpy(), brute, rtol=1e-9)
    np.testing.assert_allclose(effective_rank(x).numpy(), brute, rtol=1e-5)


def test_spike_ratios_without_other_tokens_are_zero():
    act = torch.randn(2, 3, 5)
    valid = torch.zeros(2, 3, dtype=torch.bool)
    valid[1, 1:] = True
    other_sum = act.abs().masked_fill(~valid[..., None], 0).double().sum(1)
    token, channel, _ = spike_ratios(act[:, 0], other_sum, valid.sum(1))
    assert token[0].abs().sum() == 0 and token[1].abs().sum() > 0 and channel[0].abs().sum() > 0

@pytest.mark.parametrize("seed", range(4))
def test_massive_mask_is_suns_rule_with_the_median_of_the_whole_layer_output(seed):
    """Sun et al.'s median is torch.median over one sequence's whole (T, D) block output, padding excluded."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 20, 16, generator=g) * 0.05
    h[0, 0, 3], h[1, 5, 7], h[2, 9, 1] = 500.0, -300.0, 90.0  # two massive, one under the absolute bar
    h[2, 4] = 200.0  # a whole token large: 1000 x its own median is 200,000, but the sequence's median is small
    h[1, 15:] = 1.0  # padding of sequence 1: must not enter its median
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[1, 15:] = False
    brute = torch.zeros_like(valid[..., None].expand(-1, -1, 16))
    for s in range(3):
        real = h[s][valid[s]].abs()
        median = torch.median(real)  # Sun et al.'s call, on one sequence
        brute[s] = (h[s].abs() > 100.0) & (h[s].abs() > 1000.0 * median) & valid[s, :, None]
    got = massive_mask(h, 100.0, 1000.0, valid)
    assert torch.equal(got, brute)
    assert got.nonzero()[:, :2].unique(dim=0).tolist() == [[0, 0], [1, 5], [2, 4]]
    assert not massive_mask(h * 0 + 150.0, 100.0, 1000.0).any()  # all equal: nothing stands 1000x out


@pytest.mark.parametrize("tracked", [3, 6, 10])
def test_add_rows_by_position_matches_a_loop_over_tokens(tracked):
    x = torch.randn(3, 8, 5)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, 5:] = 0  # right padding
    batch = BatchInfo.from_attention_mask(mask)
    total = torch.full((tracked, 5), 2.0, dtype=torch.float64)  # adds to what is there
    total_sq = torch.zeros(tracked, 5, dtype=torch.float64)
    count = add_rows_by_position(total, x, batch.first, batch.valid, total_sq)
    want, want_sq, want_count = torch.full_like(total, 2.0), torch.zeros_like(total), torch.zeros(tracked)
    for b in range(3):
        real = [t for t in range(8) if mask[b, t]]
        for p, t in enumerate(real[:tracked]):
            want[p] += x[b, t].double()
            want_sq[p] += x[b, t].double() ** 2
            want_count[p] += 1
    torch.testing.assert_close(total, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(total_sq, want_sq, rtol=0, atol=1e-12)
    assert count.tolist() == want_count.tolist()


@pytest.mark.parametrize("width", [5, 6, 64, 577])
def test_massive_and_dominant_masks_match_their_definitions_at_the_boundaries(width):
    """The masks compute medians only on rows that can pass; they must equal the row-by-row definitions,
    also for values planted a hair either side of 100 and of 1000 x the row's median."""
    from sinkscope.metrics.disparity import dominant_mask

    g = torch.Generator().manual_seed(width)
    x = torch.randn(3, 40, width, generator=g) * torch.rand(1, 1, width, generator=g) * 10
    hair = 1 + (torch.rand(3, 40, 1, generator=g) - 0.5) * 1e-6
    x[..., :2] = 150.0  # above every median, so the median below is the one the plants end up with
    median = x.abs().flatten(1).median(1).values[:, None, None]  # (3, 1, 1): Sun's per-sequence median
    x[..., :1] = torch.where(torch.rand(3, 40, 1, generator=g) < 0.5, 1000 * median * hair, 150.0)
    x[..., 1:2] = 100.0 * hair
    mags = x.abs()
    want = (mags > 100.0) & (mags > 1000.0 * mags.flatten(1).median(1).values[:, None, None])
    assert want.any() and torch.equal(massive_mask(x, 100.0, 1000.0), want)
    y = torch.randn(3, 40, width, generator=g)
    y[:, :3, 0] = 30.0  # the first tokens, and two others, dominated by dim 0
    dom = dominance_ratio(y)
    others = torch.ones(3, 40, dtype=torch.bool)
    others[:, 0] = False
    level = 1.1 * dom.masked_fill(~others, torch.nan).nanmedian(-1).values  # (B,)
    want = y.abs() / y.abs().mean(-1, keepdim=True) >= level[:, None, None]
    assert want.any() and torch.equal(dominant_mask(y, dom, others, 1.1), want)
