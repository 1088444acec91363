"""The chain runs on every supported family, and reads each family's MLP and key weights the right
way round (gated / fused gate_up / plain fc1-fc2 / Conv1D; separate / fused / per-head-fused qkv)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinkscope.adapters import adapter_for, block_part, blocks, head_counts, key_weight, mlp_input_module, mlp_weights
from sinkscope.adapters.coverage import blocks_with
from sinkscope.capture.attention import BatchInfo, capture_attention
from sinkscope.metrics.qk import key_rows
from sinkscope.probe import probe
from sinkscope.testing import tiny_model


def test_chain_sections_on_every_family(family):
    model = tiny_model(family)
    n_layers = len(blocks(model, adapter_for(model)))
    result = probe(model, torch.randint(3, 96, (4, 12), generator=torch.Generator().manual_seed(0)), batch_size=3)
    assert "chain_skipped" not in result.payload  # experts and latent attention get the same chain
    chain = result["chain"]
    assert {"episodes", "trajectories", "super_neurons", "massive_dims", "disparity_layer_input", "onset_layer",
            "onset_episode", "tracking", "consistent", "verdict"} <= set(chain)
    assert isinstance(chain["consistent"], bool) and chain["verdict"]
    assert len(result["variance"]["layers"]) == n_layers
    assert len(result["disparity"]["sink_dom_ratio"]) == n_layers + 1
    dense = blocks_with(model, adapter_for(model), "mlp_down")
    if dense:
        assert [w["layer"] for w in result["super_neurons"]["weight_finder"]] == dense
    assert len(result.tables["chain_qk"]["layer"]) == n_layers * head_counts(model.config)[0]
    eff = result.tables["chain_variance_by_position"]["effective_tokens"]
    eff = eff[~np.isnan(eff)]
    assert eff.size and (eff >= 1 - 1e-6).all()


def _record(module, store, name):
    def hook(m, args, output):
        store[name] = (args[0].detach(), output.detach())
    return module.register_forward_hook(hook)


def test_mlp_weights_are_oriented_out_in(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    if 0 not in blocks_with(model, adapter, "mlp_down"):
        pytest.skip("the first block's FFN is a mixture of experts")
    store = {}
    first = mlp_input_module(model, adapter, 0)
    handles = [_record(first, store, "first"), _record(block_part(model, adapter, 0, "mlp_down"), store, "down")]
    if adapter.mlp_gate is not None:
        handles.append(_record(block_part(model, adapter, 0, "mlp_up"), store, "up"))
    with torch.no_grad():
        model(torch.randint(3, 96, (2, 6)))
    for h in handles:
        h.remove()
    w = mlp_weights(model, adapter, 0)
    bias = lambda name: (getattr(block_part(model, adapter, 0, name), "bias", None)  # noqa: E731
                         if getattr(block_part(model, adapter, 0, name), "bias", None) is not None else 0)
    x, y = store["first"]
    if adapter.mlp_gate_up_fused:  # phi3: one Linear, rows [gate | up]
        torch.testing.assert_close(x @ w["gate"].T, y[..., : w["gate"].shape[0]])
        torch.testing.assert_close(x @ w["up"].T, y[..., w["gate"].shape[0]:])
    elif adapter.mlp_gate is not None:
        torch.testing.assert_close(x @ w["gate"].T + bias("mlp_gate"), y)
        torch.testing.assert_close(store["up"][0] @ w["up"].T + bias("mlp_up"), store["up"][1])
    else:
        assert w["gate"] is None
        torch.testing.assert_close(x @ w["up"].T + bias("mlp_up"), y)
    a, out = store["down"]
    torch.testing.assert_close(a @ w["down"].T + bias("mlp_down"), out)


def test_key_weight_gives_the_key_attention_sees(family):
    if family in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2", "olmo3"):
        pytest.skip("this family normalises keys after the projection")
    model = tiny_model(family)
    adapter = adapter_for(model)
    if adapter.k_proj is None and adapter.qkv_proj is None:
        pytest.skip("keys are built from a latent (MLA): no key projection")
    part = "k_proj" if adapter.k_proj is not None else "qkv_proj"
    for block in blocks(model, adapter):  # zero biases, so the key of x is exactly W_K x
        module = block.get_submodule(getattr(adapter, part))
        if getattr(module, "bias", None) is not None:
            module.bias.data.zero_()
    n_heads, n_kv, head_dim = head_counts(model.config)
    inputs, keys = {}, {}

    class FirstKey:
        def observe(self, call):
            keys[call.layer] = call.key[:, :, 0].detach()  # position 0: rotary is the identity there

    handles = [block_part(model, adapter, i, part).register_forward_hook(
        lambda m, a, o, i=i: inputs.__setitem__(i, a[0][:, 0].detach())) for i in range(len(blocks(model, adapter)))]
    ids = torch.randint(3, 96, (2, 6))
    with torch.no_grad(), capture_attention(model, adapter, [FirstKey()]) as session:
        session.batch = BatchInfo.from_attention_mask(torch.ones_like(ids))
        model(input_ids=ids)
    for h in handles:
        h.remove()
    for layer in keys:
        rows = key_rows(key_weight(model, adapter, layer, n_heads, n_kv, head_dim), n_kv, head_dim, n_heads)
        expect = torch.einsum("hdD,bD->bhd", rows, inputs[layer])
        torch.testing.assert_close(expect, keys[layer], rtol=1e-4, atol=1e-5)


def test_selectivity_from_the_one_sweep_matches_a_plain_forward(family):
    """Selectivity of any neuron, from the sweep's position sums, equals per-token scores from plain
    forwards (one unpadded sequence at a time), averaged over sequences; ragged batches, positions past Tp dropped."""
    from sinkscope.capture.runner import Sweep, run_sweep
    from sinkscope.capture.selectivity import SelectivityObserver
    from sinkscope.chain import selectivity_table

    model = tiny_model(family)
    adapter = adapter_for(model)
    if 0 not in blocks_with(model, adapter, "mlp_down"):
        pytest.skip("the first block's FFN is a mixture of experts: selectivity reads dense FFNs")
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (9, 6, 9, 4, 8)]
    w0 = mlp_weights(model, adapter, 0)
    dense = blocks_with(model, adapter, "mlp_down")
    L, tracked = len(blocks(model, adapter)), 7
    obs = SelectivityObserver(L, model.config.hidden_size, w0["down"].shape[1], 9, tracked, dense)
    run_sweep(model, adapter, None, seqs, Sweep(forward_pre_hooks=obs.hooks(model, adapter)[0], batch_listeners=[obs]),
              batch_size=3, padding_side="left")
    neurons = [(0, 3), (dense[-1], 10)]
    table = selectivity_table(obs, model, adapter, neurons)
    for i, (layer, n) in enumerate(neurons):
        store = {}
        handles = [mlp_input_module(model, adapter, layer).register_forward_pre_hook(
                       lambda m, a: store.__setitem__("x", a[0].reshape(-1, a[0].shape[-1]).double())),
                   block_part(model, adapter, layer, "mlp_down").register_forward_pre_hook(
                       lambda m, a: store.__setitem__("a", a[0].reshape(-1, a[0].shape[-1]).double()))]
        w = mlp_weights(model, adapter, layer)
        row = (w["gate"] if w["gate"] is not None else w["up"])[n].double()
        per_token = {"cos_gate": [], "up_dot": [], "activation": []}
        for seq in seqs:
            with torch.no_grad():
                model(torch.tensor([seq]))
            x, a = store["x"], store["a"]
            per_token["cos_gate"].append(x @ row / (x.norm(dim=-1) * row.norm()))
            per_token["up_dot"].append(x @ w["up"][n].double())
            per_token["activation"].append(a[:, n])
        for h in handles:
            h.remove()
        mine = [j for j in range(len(table["neuron"])) if table["neuron"][j] == i]
        assert [table["position"][j] for j in mine] == list(range(tracked))
        for j in mine:
            t = table["position"][j]
            for name, values in per_token.items():
                expect = torch.stack([v[t] for v in values if len(v) > t]).mean()
                assert table[name][j] == pytest.approx(float(expect), rel=1e-4, abs=1e-6), (family, name, t)
