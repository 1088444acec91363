"""The chain's C1 and C3 numbers beyond llama, against plain forwards (one unpadded sequence at a time):
gpt2 (Conv1D), gpt_neox (per-head fused qkv, parallel residual), phi3 (fused gate_up), opt, bert (post-LN,
bidirectional) and olmo2 (norms after the blocks only). Padded batches on the probe's side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinkscope.adapters import adapter_for, base_model, block_part, blocks
from sinkscope.probe import probe
from sinkscope.testing import tiny_model

FAMILIES = ("gpt2", "gpt_neox", "phi3", "opt", "bert", "olmo2")


def _sequences(n_tokens=(10, 7, 10, 8, 6, 10)):
    g = torch.Generator().manual_seed(4)
    return [torch.randint(3, 96, (n,), generator=g).tolist() for n in n_tokens]


def _plain(model, adapter, sequences):
    """Per sequence: the o_proj input of every layer (T, W) and the hidden state entering every layer (K, T, D)."""
    inputs, rows = {}, []
    handles = [block_part(model, adapter, layer, "o_proj").register_forward_pre_hook(
        lambda m, a, layer=layer: inputs.__setitem__(layer, a[0].reshape(-1, a[0].shape[-1]).double()))
        for layer in range(len(blocks(model, adapter)))]
    try:
        for seq in sequences:
            with torch.no_grad():
                states = base_model(model)(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
            rows.append(({k: v.clone() for k, v in inputs.items()}, torch.stack(states)[:, 0].double()))
    finally:
        for h in handles:
            h.remove()
    return rows


@pytest.mark.parametrize("name", FAMILIES)
def test_variance_and_disparity_values(name):
    model = tiny_model(name)
    adapter = adapter_for(model)
    sequences = _sequences()
    result = probe(model, sequences, batch_size=4, padding_side="left")
    plain = _plain(model, adapter, sequences)
    L = len(blocks(model, adapter))
    # C1: per position, the std over samples of each o_proj input dim (population), then the mean over dims
    table = result.tables["chain_variance_by_position"]
    got = {(int(layer), int(pos)): value for layer, pos, value in
           zip(table["layer"], table["position"], table["std_across_samples"]) if value == value}
    for layer in range(L):
        for pos in range(6):  # every sequence has 6 tokens
            stacked = np.stack([o[layer][pos].numpy() for o, _ in plain])  # (N, W)
            assert got[(layer, pos)] == pytest.approx(stacked.std(0).mean(), rel=1e-4, abs=1e-6)
    # C3: the first token's DomRatio at every layer input, averaged over sequences
    dom = np.mean([(s[:, 0].abs().amax(-1) / s[:, 0].abs().mean(-1)).numpy() for _, s in plain], axis=0)
    np.testing.assert_allclose(result["disparity"]["sink_dom_ratio"][:L], dom[:L], rtol=1e-4)
