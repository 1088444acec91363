"""Every decision rule of sinkscope.criteria at its boundary, on synthetic tallies and tensors whose
answer is known by construction (exactly at the threshold counts; just below does not)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinkscope.capture.attention import BatchInfo
from sinkscope.chain.observers import DisparityObserver, NeuronObserver
from sinkscope.capture.sink import SinkObserver
from sinkscope.chain import reduce_disparity
from sinkscope.chain.verdict import first_position
from sinkscope.criteria import Criteria
from sinkscope.metrics.disparity import dominant_mask
from sinkscope.metrics.qk import locked
from sinkscope.metrics.sink import ratio_interval, sustained_onset, uniform_attention_baseline, uniform_score_per_sequence
from sinkscope.verdicts import reduce_sink

C = Criteria()


def test_ratio_interval_matches_numpy():
    x = np.random.default_rng(0).lognormal(size=(3, 40))
    mean, low, high = ratio_interval(torch.tensor(x.sum(1)), torch.tensor((x * x).sum(1)), torch.full((3,), 40.0), 0.95)
    half = 1.959963984540054 * x.std(1, ddof=1) / math.sqrt(40)
    np.testing.assert_allclose(mean.numpy(), x.mean(1), rtol=1e-12)
    np.testing.assert_allclose(low.numpy(), x.mean(1) - half, rtol=1e-9)
    np.testing.assert_allclose(high.numpy(), x.mean(1) + half, rtol=1e-9)
    empty = ratio_interval(torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.95)
    assert all(math.isnan(float(v)) for v in empty)


def test_uniform_score_per_sequence_is_the_causal_baseline():
    T = 16
    scored = torch.arange(T)[None] >= 1  # key 0: every query but row 0
    counts = torch.arange(1, T + 1)[None]
    assert float(uniform_score_per_sequence(scored, counts)) == pytest.approx(uniform_attention_baseline(T))
    bidirectional = uniform_score_per_sequence(torch.ones(1, T, dtype=torch.bool), torch.full((1, T), T))
    assert float(bidirectional) == pytest.approx(1 / T)


def _sink_tally(ratios_by_layer: list[list[float]], uniform: float = 0.1) -> SinkObserver:
    obs = SinkObserver(len(ratios_by_layer), 1, 8)
    for layer, ratios in enumerate(ratios_by_layer):
        r = torch.tensor(ratios, dtype=torch.float64)
        obs.tally["ratio_sum"][layer] = r.sum()
        obs.tally["ratio_sumsq"][layer] = (r * r).sum()
        obs.tally["ratio_count"][layer] = len(ratios)
        obs.tally["uniform_sum"][layer] = uniform * len(ratios)
    return obs


def test_sink_present_exactly_at_the_ratio_bound():
    at = [C.sink_ratio_min] * 4  # zero spread: the interval is the point itself
    below = [C.sink_ratio_min - 1e-9] * 4
    scores = torch.tensor([0.1, C.sink_ratio_min * 0.1, 0.1], dtype=torch.float64)
    sink = reduce_sink(_sink_tally([[1.0] * 4, at, below]), scores, C)
    assert sink["present_by_layer"] == [False, True, False] and sink["onset_layer"] == 1 and sink["present"]
    assert "Attention sink on the first token" in sink["verdict"]
    none = reduce_sink(_sink_tally([[1.0] * 4, below]), torch.tensor([0.1, 0.2], dtype=torch.float64), C)
    assert none["present"] is False and none["onset_layer"] is None and none["verdict"].startswith("No attention sink")


def test_a_wide_interval_is_no_sink_even_with_a_high_mean():
    noisy = reduce_sink(_sink_tally([[0.5, 8.0]]), torch.tensor([0.4], dtype=torch.float64), C)
    assert noisy["ratio"][0] > C.sink_ratio_min and noisy["present"] is False


def test_sustained_onset_at_the_fraction_of_its_own_run():
    excess = torch.tensor([0.0, 0.5 - 1e-9, 0.5, 1.0], dtype=torch.float64)
    present = torch.tensor([False, True, True, True])
    assert sustained_onset(excess, present, 0.5, 2) == 2
    assert sustained_onset(excess, present, 0.4, 2) == 1
    assert sustained_onset(excess, torch.zeros(4, dtype=torch.bool), 0.5, 2) is None


def test_a_later_higher_sink_never_pushes_the_onset_deeper():
    # SmolLM2's shape: a sustained sink at 3-5, a gap, then a stronger one at 8-9
    excess = torch.tensor([0, 0, 1.0, 4.0, 4.2, 4.0, 0, 0, 9.0, 9.0], dtype=torch.float64)
    present = excess > 0
    assert sustained_onset(excess, present, 0.5, 2) == 3  # layer 2's 1.0 is under half of its run's 4.2
    assert sustained_onset(excess, present, 0.2, 2) == 2


def test_a_one_layer_blip_is_not_an_onset_unless_it_is_the_strongest():
    blip = torch.tensor([0, 1.5, 0, 2.0, 2.0, 0], dtype=torch.float64)
    assert sustained_onset(blip, blip > 0, 0.5, 2) == 3  # the lone, weaker layer 1 is not sustained
    assert sustained_onset(blip, blip > 0, 0.5, 1) == 1  # ... unless one layer is enough
    strong = torch.tensor([0, 3.0, 0, 2.0, 2.0, 0], dtype=torch.float64)
    assert sustained_onset(strong, strong > 0, 0.5, 2) == 1  # the strongest layer's run counts, however short
    only = torch.tensor([0, 0, 0, 2.6, 0, 0], dtype=torch.float64)  # organism-nobos: one sink layer, the strongest
    assert sustained_onset(only, only > 0, 0.5, 2) == 3


def test_paper_rules_use_the_absolute_onset():
    paper = Criteria(rules="paper")
    scores = torch.tensor([0.5, 0.8, 0.81], dtype=torch.float64)
    sink = reduce_sink(_sink_tally([[1.0] * 3, [9.0] * 3, [9.0] * 3]), scores, paper)
    assert sink["onset_layer"] == sink["onset_layer_paper"] == 2 and sink["present_by_layer"] == [False, False, True]


def _batch(B: int, T: int) -> BatchInfo:
    return BatchInfo.from_attention_mask(torch.ones(B, T, dtype=torch.long))


@pytest.mark.parametrize(("token_scale", "channel_scale", "spikes"), [(1.0, 1.0, True), (0.999, 1.0, False),
                                                                        (1.0, 0.999, False)])
def test_spike_rule_at_both_ratios(token_scale, channel_scale, spikes):
    I, T = 8, 5
    a = C.spike_token_ratio * token_scale  # channel 0 at the first token
    act = torch.ones(1, T, I)  # |a| = 1 everywhere else, so channel 0's mean at the other tokens is 1
    act[0, 0, 0] = a
    act[0, 0, 1:] = a / (C.spike_channel_ratio * channel_scale)  # the other channels at the first token
    obs = NeuronObserver(1, I, 4, C.spike_token_ratio, C.spike_channel_ratio)
    obs.batch = _batch(1, T)
    obs.observe(0, act)
    assert bool(obs.tally["extreme_count"][0, 0] == 1) is spikes
    assert obs.tally["extreme_count"][0, 1:].sum() == 0


def test_dominant_mask_at_the_contrast():
    D, T = 10, 3
    hidden = torch.ones(1, T, D)  # every token flat: DomRatio 1, so the reference median is 1
    others = torch.tensor([[False, True, True]])
    # token 0: dim 0 = v, the rest 1: |h_0| / mean |h| = v / ((v + 9) / 10) equals the contrast 4 at v = 6
    for v, expected in ((6.0, True), (5.999, False)):
        hidden[0, 0, 0] = v
        dom = hidden.abs().amax(-1) / hidden.abs().mean(-1)
        mask = dominant_mask(hidden, dom, others, C.disparity_contrast)
        assert bool(mask[0, 0, 0]) is expected and not mask[0, 1:].any() and not mask[0, 0, 1:].any()
    assert not dominant_mask(hidden, dom, torch.zeros(1, T, dtype=torch.bool), 4.0).any()  # no reference token


def _disparity(contrast: float, sinks: int = 4) -> dict:
    """A DisparityObserver fed ``sinks`` sequences whose first token's dim 2 alone gives DomRatio ``contrast``."""
    D, T = 8, 6
    obs = DisparityObserver(1, D, T, 100.0, 1000.0, C.disparity_contrast, effective_rank=False)
    obs.batch = _batch(sinks, T)
    hidden = torch.ones(sinks, T, D)
    v = contrast * (D - 1) / (D - contrast)  # v / ((v + D - 1) / D) = contrast
    hidden[:, 0, 2] = v
    obs.observe(0, hidden, hidden)
    obs.observe(1, hidden, hidden)
    return reduce_disparity(obs, C)


def test_disparity_and_massive_dim_at_the_contrast():
    # the disparity rule reads the other tokens' median from a 512-bin histogram (exact to one bin, < 1.3 %),
    # the massive-dim rule from each sequence's exact median: 2 % either side of the threshold
    at = _disparity(C.disparity_contrast * 1.02)
    assert at["disparity_layer_input"] == 0 and at["massive_dims"] == [2] and at["massive_at_sink"] == {0: [2], 1: [2]}
    assert at["massive_dims_paper"] == []  # |h| ~ 5: far below Sun et al.'s 100
    below = _disparity(C.disparity_contrast * 0.98)
    assert below["disparity_layer_input"] is None and below["massive_dims"] == []


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_qk_lock_against_its_nulls(head_dim):
    bound = C.lock_alignment_z / math.sqrt(head_dim)
    assert locked(C.lock_positive_share, bound, head_dim, C.lock_positive_share, C.lock_alignment_z)
    assert not locked(C.lock_positive_share, bound * 0.999, head_dim, C.lock_positive_share, C.lock_alignment_z)
    assert not locked(C.lock_positive_share - 1e-6, 1.0, head_dim, C.lock_positive_share, C.lock_alignment_z)
    assert not locked(0.5, 1 / math.sqrt(head_dim), head_dim, C.lock_positive_share, C.lock_alignment_z)  # the null


def test_first_position_detects_a_constant_first_token():
    assert first_position([[1, 5, 6], [1, 7, 8]])["same_token_every_sample"] is True
    varied = first_position([[3, 5], [4, 5]])
    assert varied["same_token_every_sample"] is False and varied["across_samples_defined"] and varied["note"] is None
