"""The capture function is exact for softmax with a virtual sink key and for sigmoid attention."""

import math

import pytest
import torch
from torch import nn

from sinkscope.capture.attention import BatchInfo, _ACTIVE, _Session, sinkscope_attention
from sinkscope.capture.sink import SinkObserver


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


@pytest.mark.parametrize("variant", ["softmax", "softmax1", "sink_logit", "sigmoid"])
def test_variant_output_and_sink_column_match_brute_force(variant):
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 9, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    kwargs = {}
    if variant == "softmax1":
        kwargs["sink_logit"] = torch.zeros(H)
    elif variant == "sink_logit":
        kwargs["sink_logit"] = torch.tensor([2.0, -1.0, 0.5])
    elif variant == "sigmoid":
        kwargs["sigmoid_bias"] = -math.log(T)
    module = nn.Module()
    observer = SinkObserver(n_layers=1, n_heads=H, max_len=T, positions=(0,))
    session = _Session({id(module): 0}, [observer], [], query_chunk=4)
    session.batch = BatchInfo.from_attention_mask(torch.ones(B, T))
    _ACTIVE.append(session)
    try:
        out, _ = sinkscope_attention(module, q, k, v, None, scaling=0.3, is_causal=True, **kwargs)
    finally:
        _ACTIVE.remove(session)
    weights, ref_out = _brute(q, k, v, 0.3, kwargs.get("sink_logit"), kwargs.get("sigmoid_bias"))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    expected_score = weights[:, :, 1:, 0].mean((0, 2))  # rows 1.. see key 0 and another key
    torch.testing.assert_close(observer.sink_score()[0, :, 0].float(), expected_score, atol=1e-6, rtol=1e-5)
    expected_importance = weights[:, :, :, 0].mean((0, 2))
    torch.testing.assert_close(observer.importance()[0, :, 0].float(), expected_importance, atol=1e-6, rtol=1e-5)
