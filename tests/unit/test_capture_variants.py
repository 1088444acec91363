"""The capture function is exact for softmax with a virtual sink key and for sigmoid attention; so is the
effective number of aggregated tokens, fused (twice-the-scale log-sum-exp) or chunked."""

import math

import pytest
import torch
from torch import nn

from sinkscope.capture.attention import BatchInfo, _ACTIVE, _Session, sinkscope_attention
from sinkscope.capture.learned_sink import LearnedSinkObserver
from sinkscope.capture.sink import EffectiveTokensObserver, SinkObserver
from sinkscope.errors import SinkscopeError


def _brute(q, k, v, scale, sink_logit=None, sigmoid_bias=None):
    """Eager reference: (B, H, T, S) weights and (B, T, H, D) output for a causal pattern."""
    T = q.shape[2]
    logits = (q @ k.transpose(-1, -2)) * scale
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    if sigmoid_bias is not None:
        weights = torch.sigmoid(logits + sigmoid_bias) * causal
    else:
        logits = logits.masked_fill(~causal, -math.inf)
        if sink_logit is not None:
            extra = sink_logit.view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
            weights = torch.softmax(torch.cat([logits, extra], -1), -1)[..., :-1]
        else:
            weights = torch.softmax(logits, -1)
    return weights, (weights @ v).transpose(1, 2)


@pytest.mark.parametrize("variant", ["softmax", "softmax1", "sink_logit", "s_aux", "sigmoid"])
def test_variant_output_and_sink_column_match_brute_force(variant):
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 9, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    kwargs = {}
    if variant == "softmax1":
        kwargs["sink_logit"] = torch.zeros(H)
    elif variant in ("sink_logit", "s_aux"):  # sinkscope's own name, and gpt-oss's
        kwargs[variant] = torch.tensor([2.0, -1.0, 0.5])
    elif variant == "sigmoid":
        kwargs["sigmoid_bias"] = -math.log(T)
    module = nn.Module()
    observer = SinkObserver(n_layers=1, n_heads=H, max_len=T, positions=(0,))
    learned = LearnedSinkObserver(n_layers=1, n_heads=H)
    tokens = EffectiveTokensObserver(n_layers=1, n_heads=H, max_len=T, max_positions=T, chunk=4)
    corner = EffectiveTokensObserver(n_layers=1, n_heads=H, max_len=T, max_positions=4, chunk=4)  # + the last
    session = _Session({id(module): 0}, [observer, learned, tokens, corner], [], query_chunk=4)
    session.batch = BatchInfo.from_attention_mask(torch.ones(B, T))
    _ACTIVE.append(session)
    try:
        out, _ = sinkscope_attention(module, q, k, v, None, scaling=0.3, is_causal=True, **kwargs)
    finally:
        _ACTIVE.remove(session)
    sink = kwargs.get("sink_logit", kwargs.get("s_aux"))
    weights, ref_out = _brute(q, k, v, 0.3, sink, kwargs.get("sigmoid_bias"))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    expected_score = weights[:, :, 1:, 0].mean((0, 2))  # rows 1.. see key 0 and another key
    torch.testing.assert_close(observer.sink_score()[0, :, 0].float(), expected_score, atol=1e-6, rtol=1e-5)
    expected_importance = weights[:, :, :, 0].mean((0, 2))
    torch.testing.assert_close(observer.importance()[0, :, 0].float(), expected_importance, atol=1e-6, rtol=1e-5)
    # the learned sink's share: 1 - the weights on real keys, over every query (row 0 included)
    expected_mass = (1 - weights.sum(-1)).mean((0, 2)) if sink is not None else torch.zeros(H)
    torch.testing.assert_close(learned.mass()[0].float(), expected_mass, atol=1e-6, rtol=1e-5)
    assert learned.has_learned_sink() == (sink is not None)
    expected_tokens = (1 / (weights.double() ** 2).sum(-1)).mean(0)  # (H, T)
    torch.testing.assert_close(tokens.effective_tokens()[0], expected_tokens, atol=1e-6, rtol=1e-5)
    got = corner.effective_tokens()[0]
    torch.testing.assert_close(got[:, :4], expected_tokens[:, :4], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[:, -1], expected_tokens[:, -1], atol=1e-6, rtol=1e-5)
    assert bool(torch.isnan(got[:, 4:-1]).all())  # positions it does not track


def _call(**kwargs):
    q = k = v = torch.randn(1, 2, 4, 8)
    return sinkscope_attention(nn.Linear(1, 1), q, k, v, None, scaling=0.3, is_causal=True, **kwargs)


def test_an_argument_the_capture_does_not_implement_is_refused_by_name():
    with pytest.raises(SinkscopeError, match="Linear passes attention argument\\(s\\) head_bias that") as err:
        _call(head_bias=torch.ones(2), position_ids=torch.arange(4)[None], sliding_window=3)
    assert "\n" not in str(err.value)
    with pytest.raises(SinkscopeError, match="attention dropout 0.1"):
        _call(dropout=0.1)
    with pytest.raises(SinkscopeError, match="both s_aux and sink_logit"):
        _call(s_aux=torch.zeros(2), sink_logit=torch.zeros(2))
    _call(head_bias=None, use_cache=False, output_router_logits=True)  # None is "not used"; switches change nothing
