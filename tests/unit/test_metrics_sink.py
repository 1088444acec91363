"""Invariants of the pure metric functions (sink, norms, disparity), checked with hypothesis.

Every expected value is computed here from first principles (loops, numpy-free float64 sums), never
by calling another sinkscope function.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sinkscope.metrics.disparity import dominance_ratio, effective_rank
from sinkscope.metrics.norms import norm_ratio, token_norms
from sinkscope.metrics.sink import (
    attention_to_keys,
    key_importance_from_pattern,
    onset_layer,
    sink_rate,
    sink_score_from_pattern,
    softcap_logits,
    uniform_attention_baseline,
)

FAST = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _causal_softmax(logits: torch.Tensor) -> torch.Tensor:
    T = logits.shape[-1]
    hidden = torch.ones(T, T, dtype=torch.bool).triu(1)
    return torch.softmax(logits.masked_fill(hidden, -math.inf), -1)


# ---------------------------------------------------------------- sink rate
importance_grids = st.tuples(st.integers(1, 6), st.integers(1, 8), seeds).map(
    lambda a: torch.rand(a[0], a[1], generator=_gen(a[2])))


@FAST
@given(importance_grids, st.floats(0, 1), st.floats(0, 1))
def test_sink_rate_is_a_percentage_and_falls_as_eps_rises(importance, eps1, eps2):
    lo, hi = sorted((eps1, eps2))
    r_lo, r_hi = sink_rate(importance, lo), sink_rate(importance, hi)
    assert 0.0 <= r_hi <= r_lo <= 100.0
    want = 100.0 * sum(float(v) > lo for v in importance.flatten()) / importance.numel()
    assert r_lo == pytest.approx(want)


def test_sink_rate_counts_strictly_above_eps():
    assert sink_rate(torch.full((3, 4), 0.31), 0.3) == 100.0
    assert sink_rate(torch.full((3, 4), 0.3), 0.3) == 0.0  # Gu et al.: importance > eps, not >=
    assert sink_rate(torch.tensor([[0.9, 0.1], [0.5, 0.2]]), 0.3) == 50.0


# ---------------------------------------------------------------- onset layer
@FAST
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12), st.floats(0, 1))
def test_onset_layer_is_the_first_layer_above_threshold(scores, threshold):
    got = onset_layer(torch.tensor(scores, dtype=torch.float64), threshold)
    above = [i for i, s in enumerate(scores) if s > threshold]
    assert got == (above[0] if above else None)
    if got is not None:
        assert isinstance(got, int) and all(s <= threshold for s in scores[:got])


def test_onset_is_strictly_above_the_threshold():
    assert onset_layer(torch.tensor([0.1, 0.8, 0.81, 0.99]), 0.8) == 2  # a layer at exactly 0.8 is not the onset
    assert onset_layer(torch.tensor([0.1, 0.2]), 0.8) is None


# ---------------------------------------------------------------- attention to keys
@FAST
@given(st.integers(1, 2), st.integers(1, 3), st.integers(2, 9), st.integers(1, 6), seeds,
       st.sampled_from([None, 0.7, 5.0]))
def test_attention_to_keys_equals_softmax_columns(B, H, T, D, seed, softcap):
    g = _gen(seed)
    q, k = torch.randn(B, H, T, D, generator=g) * 2, torch.randn(B, H, T, D, generator=g) * 2
    scale = D ** -0.5
    logits = torch.einsum("bhtd,bhsd->bhts", q.double(), k.double()) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    probs = _causal_softmax(logits)
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    lse = torch.logsumexp(logits.masked_fill(~visible, -math.inf), -1)
    cols = torch.randint(0, T, (3,), generator=g)
    got = attention_to_keys(q, k[:, :, cols], lse.float(), visible[None, None][..., cols], scale, softcap)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), probs[..., cols], atol=1e-5, rtol=0)


def test_attention_to_keys_adds_the_bias_and_zeroes_hidden_keys():
    q = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    keys = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]]]])
    bias = torch.tensor([[[[0.5, -1.0]]]])
    logits = torch.tensor([2.0 + 0.5, 0.0 - 1.0])
    lse = torch.logsumexp(logits, 0).reshape(1, 1, 1)
    visible = torch.tensor([[[[True, False]]]])
    got = attention_to_keys(q, keys, lse, visible, 1.0, bias=bias)
    assert got[0, 0, 0, 0].item() == pytest.approx(math.exp(2.5 - lse.item()), abs=1e-6)
    assert got[0, 0, 0, 1].item() == 0.0


@FAST
@given(st.floats(-50, 50), st.floats(0.1, 30))
def test_softcap_is_bounded_odd_and_identity_without_cap(x, cap):
    t = torch.tensor([x, -x], dtype=torch.float64)
    capped = softcap_logits(t, cap)
    assert (capped.abs() <= cap + 1e-12).all()
    assert capped[0].item() == pytest.approx(-capped[1].item())
    assert torch.equal(softcap_logits(t, None), t)


# ---------------------------------------------------------------- brute-force pattern references
@FAST
@given(st.integers(1, 3), st.integers(1, 3), st.integers(2, 10), seeds)
def test_sink_score_from_pattern_skips_rows_that_see_only_the_key(N, H, T, seed):
    attn = _causal_softmax(torch.randn(N, H, T, T, generator=_gen(seed)) * 3)
    got = sink_score_from_pattern(attn, 0)
    want = torch.stack([sum(attn[n, h, t, 0] for n in range(N) for t in range(1, T)) / (N * (T - 1))
                        for h in range(H)])
    torch.testing.assert_close(got, want.to(got.dtype))
    assert ((got >= 0) & (got <= 1)).all()


@FAST
@given(st.integers(1, 3), st.integers(2, 10), seeds)
def test_key_importance_from_pattern_is_the_mean_over_queries_that_see_the_key(N, T, seed):
    attn = _causal_softmax(torch.randn(N, 2, T, T, generator=_gen(seed)))
    got = key_importance_from_pattern(attn)
    for j in range(T):
        want = attn[:, :, j:, j].sum((0, 2)) / (N * (T - j))
        torch.testing.assert_close(got[:, j], want)
    # bidirectional: every query sees every key
    full = torch.softmax(torch.randn(N, 2, T, T, generator=_gen(seed)), -1)
    torch.testing.assert_close(key_importance_from_pattern(full, causal=False), full.sum(2).mean(0) / T)


@FAST
@given(st.integers(1, 200))
def test_uniform_baseline_matches_its_definition(T):
    got = uniform_attention_baseline(T)
    want = 1.0 if T < 2 else sum(1 / (t + 1) for t in range(1, T)) / (T - 1)
    assert got == pytest.approx(want)
    assert 0 < got <= 1


# ---------------------------------------------------------------- norms
@FAST
@given(st.integers(1, 4), st.integers(1, 6), seeds)
def test_token_norms_are_euclidean_lengths(T, D, seed):
    h = torch.randn(2, T, D, generator=_gen(seed)).to(torch.bfloat16)
    got = token_norms(h)
    assert got.dtype == torch.float32 and got.shape == (2, T)
    want = h.double().pow(2).sum(-1).sqrt()
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@FAST
@given(st.lists(st.floats(0.1, 100), min_size=2, max_size=10), st.integers(0, 9))
def test_norm_ratio_is_sink_over_the_mean_of_the_rest(norms, sink):
    sink = sink % len(norms)
    rest = [n for i, n in enumerate(norms) if i != sink]
    got = norm_ratio(torch.tensor(norms, dtype=torch.float64), sink)
    assert got.item() == pytest.approx(norms[sink] / (sum(rest) / len(rest)))


# ---------------------------------------------------------------- dimension disparity
vectors = st.tuples(st.integers(1, 64), seeds).map(lambda a: torch.randn(a[0], generator=_gen(a[1])))


@FAST
@given(vectors)
def test_dominance_ratio_lies_between_one_and_the_dimension(h):
    D = h.shape[-1]
    r = dominance_ratio(h).item()
    assert 1 - 1e-5 <= r <= D + 1e-4
    assert r == pytest.approx(h.abs().max().item() / h.abs().mean().item(), rel=1e-5)


@FAST
@given(st.integers(1, 64), st.integers(0, 63), st.floats(-1e4, 1e4).filter(lambda x: abs(x) > 1e-3))
def test_dominance_ratio_of_a_scaled_basis_vector_is_the_dimension(D, c, scale):
    h = torch.zeros(D)
    h[c % D] = scale
    assert dominance_ratio(h).item() == pytest.approx(D)
    assert dominance_ratio(torch.full((D,), scale)).item() == pytest.approx(1.0)


@FAST
@given(st.integers(1, 8), st.integers(1, 8), seeds)
def test_effective_rank_lies_between_one_and_min_t_d(T, D, seed):
    m = torch.randn(T, D, generator=_gen(seed))
    r = effective_rank(m).item()
    assert 1 - 1e-4 <= r <= min(T, D) + 1e-4
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum()
    p = p[p > 0]
    assert r == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-4)


@FAST
@given(st.integers(1, 8), st.integers(1, 8), seeds)
def test_effective_rank_of_rank_one_is_one_and_of_orthonormal_rows_is_full(T, D, seed):
    g = _gen(seed)
    u, v = torch.randn(T, 1, generator=g), torch.randn(1, D, generator=g)
    assert effective_rank(u @ v).item() == pytest.approx(1.0, abs=1e-3)
    n = min(T, D)
    q, _ = torch.linalg.qr(torch.randn(D, n, generator=g, dtype=torch.float64))
    assert effective_rank(q.T.float()).item() == pytest.approx(n, rel=1e-4)
