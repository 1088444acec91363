import math

import torch

from sinkscope.capture.attention import AttentionCall, _fused_attention
from sinkscope.capture.columns import BLOCK, column_blocks
from sinkscope.stream.policy import policy_mask


def call_with(visible, T=300, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(visible.shape[0], H, T, D, generator=g) for _ in range(3))
    return AttentionCall(layer=0, module=None, query=q, key=k, value=v, visible=visible, bias=None, causal=True,
                         scale=D ** -0.5, softcap=None, batch=None)


def reference(call):
    """Softmax over the visible keys in float64, written out."""
    logits = (call.query.double() @ call.key.double().transpose(-1, -2)) * call.scale
    logits = logits.masked_fill(~call.visible, -math.inf)
    lse = torch.logsumexp(logits, -1)
    return torch.exp(logits - lse[..., None]) @ call.value.double(), lse


def test_a_window_with_kept_keys_runs_in_blocks_and_equals_the_softmax():
    T = 300
    kept = torch.zeros(2, T, dtype=torch.bool)
    kept[0, [0, 7]] = True
    kept[1, [0, 150, 299]] = True  # a kept key after some windows, one at the very end
    visible = policy_mask(kept, 40)[:, None]
    blocks = column_blocks(visible)
    assert blocks is not None and len(blocks) == math.ceil(T / BLOCK)
    assert sum((t1 - t0) * len(cols) for t0, t1, cols in blocks) < 0.5 * T * T
    out, lse = _fused_attention(call_with(visible))
    ref_out, ref_lse = reference(call_with(visible))
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-5)


def test_a_dense_pattern_stays_one_kernel_call():
    T = 300
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    assert column_blocks(causal) is None  # a causal mask skips half the pairs, no more
    assert column_blocks(causal[..., :100, :100]) is None  # one block's worth of queries
    out, _ = _fused_attention(call_with(causal))
    torch.testing.assert_close(out.double(), reference(call_with(causal))[0], rtol=1e-5, atol=1e-5)
