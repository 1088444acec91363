"""Exact attribution on every family: the parts of the first token's residual stream add up to what
``output_hidden_states`` measures, with random biases, padding on both sides and the families' own
norms (pre-LN, sandwich, post-LN) and FFNs (gated, fused, Conv1D, routed and shared experts)."""

from __future__ import annotations

import pytest
import torch

from sinkscope.adapters import base_model
from sinkscope.capture.runner import Sweep, run_sweep
from sinkscope.chain.attribution import AttributionObserver
from sinkscope.config import LoadConfig
from sinkscope.loading import prepare_model
from sinkscope.testing import tiny_model

REL = 1e-4


def _randomise_biases_and_gains(model, seed: int = 3) -> None:
    """Biases and norm gains away from their init (0 and 1), so a dropped bias or gain shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.add_(0.5 * torch.randn(p.shape, generator=g))


def _brute_force(model, sequences: list[list[int]]) -> torch.Tensor:
    """(N, K, D) the first token's hidden state at every layer input, one unpadded sequence per forward."""
    out = []
    with torch.no_grad():
        for seq in sequences:
            states = base_model(model)(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
            out.append(torch.stack([h[0, 0] for h in states]).double())
    return torch.stack(out)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_parts_add_up_to_the_measured_change(family, padding_side):
    model = tiny_model(family)
    _randomise_biases_and_gains(model)
    loaded = prepare_model(model, None, LoadConfig())
    model, adapter = loaded.model, loaded.adapter
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 9, 12, 7, 10)]
    observer = AttributionObserver(model, adapter)
    pre, post = observer.hooks()
    run_sweep(model, adapter, None, sequences, Sweep(forward_pre_hooks=pre, forward_hooks=post,
                                                     batch_listeners=[observer]),
              batch_size=3, padding_side=padding_side)
    att = observer.reduce(model)
    states = _brute_force(model, sequences)  # hidden_states[-1] may be after the final norm: compare inputs 0..L-1
    L = att.attention.shape[0]
    scale = states.abs().max()
    torch.testing.assert_close(att.mean[:L], states.mean(0)[:L], rtol=0, atol=REL * float(scale))
    pre_norm = adapter.pre_norm
    for layer in range(L):
        measured = att.mean[layer + 1] - att.mean[layer]  # (D,)
        blocks_sum = att.attention[layer] + att.mlp[layer]
        if pre_norm:  # nothing but the two blocks writes the stream
            torch.testing.assert_close(blocks_sum, measured, rtol=0, atol=REL * float(scale))
        for dim in (0, att.mean.shape[1] // 2):
            parts = att.parts(layer, dim)
            neurons = sum(w for p, w in parts if p["kind"] == "neuron")
            rest = next(w for p, w in parts if p["kind"] == "mlp")
            # the neurons' writes plus the FFN's biases make the FFN's write; without biases they make all of it
            assert neurons + rest == pytest.approx(float(att.mlp[layer, dim]), abs=1e-9 * float(scale))
            expected = _bias_write(model, adapter, layer, dim)
            if expected is None:  # routed experts' biases: at most what every expert's bias could write
                assert abs(rest) <= _expert_bias_bound(model, layer, dim) + REL * float(scale)
            else:
                assert rest == pytest.approx(expected, abs=REL * float(scale))
            assert sum(w for _, w in parts) == pytest.approx(float(measured[dim]), abs=REL * float(scale))


def _bias_write(model, adapter, layer: int, dim: int) -> float | None:
    """The dense down projection's bias on ``dim`` (what the FFN writes beyond its neurons); None in experts."""
    from sinkscope.adapters import blocks
    from sinkscope.adapters.coverage import find

    block = blocks(model, adapter)[layer]
    if adapter.mlp_down is None or find(block, adapter.mlp_down) is None:
        return None
    bias = getattr(find(block, adapter.mlp_down), "bias", None)
    assert bias is None or adapter.mlp_out_norm is None  # no tiny family has both
    return 0.0 if bias is None else float(bias.detach()[dim])


def _expert_bias_bound(model, layer: int, dim: int) -> float:
    from sinkscope.adapters import adapter_for, blocks

    block = blocks(model, adapter_for(model))[layer]
    return sum(float(p.detach()[..., dim].abs().sum()) for n, p in block.named_parameters() if "down_proj_bias" in n)
