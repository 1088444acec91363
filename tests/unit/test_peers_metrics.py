"""Peer formulas restated on synthetic tensors: Sun's magnitudes, Yu's spikes, Sun's reset, Gu's importance."""

from __future__ import annotations

import pytest
import torch

from sinkscope.capture.activations import LayerMagnitudeObserver
from sinkscope.capture.attention import BatchInfo
from sinkscope.interventions.massive import ResetMassive, _MassiveEditor
from sinkscope.metrics.magnitudes import largest_entries, layer_magnitudes, lower_median, top_spike
from sinkscope.metrics.sink import gu_importance, sink_rate


def _padded(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 9, 6, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    x[1, :4] = 1e6  # padding must never enter
    x[2, 6:] = -1e6
    return x, BatchInfo.from_attention_mask(mask), mask.bool()


def test_layer_magnitudes_match_sun_on_real_tokens():
    x, batch, valid = _padded()
    obs = LayerMagnitudeObserver(n_layers=1, hidden=6, max_len=9, n_sequences=3)
    obs.batch = batch
    obs.observe(0, x)
    ref = []
    for row in range(3):
        feat_abs = x[row][valid[row]].abs()
        top = torch.sort(feat_abs.flatten(), descending=True).values[:3]
        ref.append(torch.cat([top, torch.median(feat_abs)[None]]))  # torch.median: the lower middle value
    ref = torch.stack(ref)
    torch.testing.assert_close(obs.mean()[0], ref.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(obs.std()[0], ref.std(0), atol=1e-12, rtol=0)
    assert layer_magnitudes(torch.tensor([[1.0, -4.0], [2.0, 3.0]]))[3] == 2.0  # even count: lower middle


def test_top_spike_is_signed_value_and_channel():
    x = torch.tensor([[0.5, -9.0, 1.0], [3.0, 2.0, 8.0]])
    assert top_spike(x) == (-9.0, 0, 1)


def test_reset_matches_sun_hook_with_a_second_massive_token():
    x, batch, valid = _padded(1)
    x[valid] = x[valid].clamp(-5, 5)
    x[0, 0, 2] = 700.0  # first token
    x[0, 5, 2] = 2500.0  # a later token holds the top |x|: Sun edits it too
    x[1, 4, 2] = 600.0  # sequence 1's first real token is index 4 (left padding)
    spec = ResetMassive(layer=0, dims=(2, 4), mode="mean", first_values=(11.0, 12.0), other_values=(21.0, 22.0))
    editor = _MassiveEditor(spec)
    editor.batch = batch
    got = editor.hook(None, (), x)
    for row in range(3):
        real = x[row][valid[row]].clone()  # what Sun's script sees: one unpadded sequence
        top = torch.sort(real.abs().flatten(), descending=True).indices[0].item() // real.shape[1]
        for dim, v0, v1 in zip(spec.dims, spec.first_values, spec.other_values):
            if top != 0:
                real[top, dim] = v1
            real[0, dim] = v0
        torch.testing.assert_close(got[row][valid[row]], real)
        torch.testing.assert_close(got[row][~valid[row]], x[row][~valid[row]])
    assert got[0, 5, 2] == 21.0 and got[0, 0, 2] == 11.0


def test_gu_importance_and_rate_restated():
    g = torch.Generator().manual_seed(0)
    N, H, T = 5, 3, 8
    logits = torch.randn(N, H, T, T, generator=g) * 2
    attn = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf).softmax(-1).double()
    ratios = torch.arange(T, 0, -1, dtype=torch.float64)  # eval_sink_open_source.py compute_attention_sink
    want = (attn / ratios).sum(-2)  # (N, H, T)
    n_queries = torch.tensor([[T - k for k in range(T)]] * N)
    got = gu_importance(attn, n_queries)  # all T keys tracked
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    eps = 0.3
    assert sink_rate(got[..., 0], eps) == pytest.approx(100.0 * (want[..., 0] > eps).double().mean().item())


@pytest.mark.parametrize("seed", range(6))
def test_top_spike_and_largest_entries_match_a_flat_search_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-4, 5, (7, 5), generator=g).float()  # small integers: many tied |x|
    flat = x.abs().flatten()
    token, channel = divmod(int(flat.argmax()), 5)  # the first largest |x| in row-major order
    assert top_spike(x) == (float(x[token, channel]), token, channel)
    for k in (1, 3, 35, 40):
        assert largest_entries(x.abs(), k).tolist() == flat.sort(descending=True).values[:k].tolist()


@pytest.mark.parametrize("case", ["normal", "ties", "even", "nan", "half", "bfloat16", "one"])
def test_sun_median_is_torch_median(case):
    """Sun's median is ``torch.median`` of |x|; ours selects it with numpy and must give the same value."""
    g = torch.Generator().manual_seed(len(case))
    x = torch.randn(301, 7, generator=g).abs()
    if case == "ties":
        x = torch.randint(0, 3, (301, 7), generator=g).float()
    elif case == "even":
        x = x[:300]
    elif case == "nan":
        x[5, 3] = float("nan")
    elif case in ("half", "bfloat16"):
        x = x.to(getattr(torch, case))
    elif case == "one":
        x = x[:1, :1]
    got, want = lower_median(x), x.flatten().median()
    assert got.dtype == want.dtype and (bool(got == want) or bool(got.isnan() and want.isnan()))
