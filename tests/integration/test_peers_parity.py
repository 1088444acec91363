"""Each peer-named number equals the peer's own formula, restated here on eager tensors.

The references feed one unpadded sequence per forward with ``attn_implementation="eager"`` and
``output_attentions`` / ``output_hidden_states`` / plain forward hooks, as the peers' scripts do,
and compute in float64; sinkscope runs batched and padded. Nothing here calls sinkscope's metrics.
"""

from __future__ import annotations

import pytest
import torch

import sinkscope
from sinkscope import peers
from sinkscope.fixtures import planted_sink_model
from sinkscope.testing import tiny_model, twin

LENGTHS = (16, 11, 14, 7, 9, 16)  # variable lengths: padding on both sides inside each batch


def _sequences(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (n - 1,), generator=g).tolist() for n in LENGTHS]


def _gu_importance(eager, seq: list[int]) -> torch.Tensor:
    """(L, H, T) Gu et al. (eval_sink_open_source.py, compute_attention_sink): attention / (T - k), summed over queries."""
    with torch.no_grad():
        out = eager(torch.tensor([seq]), output_attentions=True)
    attn = torch.stack(out.attentions, 1)[0].double()  # (L, H, T, T)
    T = attn.shape[-1]
    return (attn / torch.arange(T, 0, -1, dtype=torch.float64)).sum(-2)


def _gu_rate(eager, sequences, eps: float) -> tuple[float, torch.Tensor]:
    """Share in % of (sample, layer, head) triples whose importance of key 0 exceeds eps, and (L, H) counts."""
    above = torch.stack([_gu_importance(eager, s)[..., 0] > eps for s in sequences])  # (N, L, H)
    return 100.0 * above.double().mean().item(), above.sum(0)


def _models():
    planted, answer = planted_sink_model()
    return {"llama": (tiny_model("llama"), 96), "gpt2": (tiny_model("gpt2"), 96),
            "planted": (planted, answer.vocab_size)}


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "planted"])
def test_sink_rate_is_gu_per_sequence_formula(name, padding_side):
    model, vocab = _models()[name]
    eager = twin(model, "eager")
    sequences = _sequences(vocab)
    for eps in (0.3, 0.6):
        result = sinkscope.probe(model, sequences, chain=False, batch_size=4, padding_side=padding_side,
                                 sink_rate_eps=eps)
        want, counts = _gu_rate(eager, sequences, eps)
        flips = (torch.tensor(result["sink_share"]) * len(sequences)).round().long() - counts
        assert int(flips.abs().sum()) <= 1, f"{name} eps {eps}: {flips.tolist()}"
        L, H = counts.shape
        assert abs(result["sink_rate"] - want) <= 100.0 / (len(sequences) * L * H) + 1e-9


def test_pooled_rate_differs_from_gu_when_samples_disagree():
    model, vocab = _models()["llama"]
    eager = twin(model, "eager")
    sequences = _sequences(vocab)
    importance = torch.stack([_gu_importance(eager, s)[..., 0] for s in sequences])  # (N, L, H)
    eps = float(importance.mean(0).median())  # half the heads above on average, many samples disagree
    result = sinkscope.probe(model, sequences, chain=False, batch_size=4, sink_rate_eps=eps)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.float64)[:, None, None]
    pooled = (importance * lengths).sum(0) / lengths.sum()  # every query of every sample weighs the same
    assert result["sink_rate_pooled"] == pytest.approx(100.0 * (pooled > eps).double().mean().item())
    gu = _gu_rate(eager, sequences, eps)[0]
    assert abs(result["sink_rate"] - gu) <= 100.0 / importance.numel() + 1e-9
    assert result["sink_rate_pooled"] != pytest.approx(gu)  # the two formulas are different numbers here


def _sun_reference(model, sequences) -> torch.Tensor:
    """(N, 4, L) Sun et al. (main_llm.py --exp2): per sequence and block output, top-3 and torch.median of |x|."""
    feats = {}
    hooks = [block.register_forward_hook(lambda m, a, out, layer=layer: feats.__setitem__(layer, out[0] if isinstance(out, tuple) else out))
             for layer, block in enumerate(model.model.layers)]
    rows = []
    try:
        for seq in sequences:
            with torch.no_grad():
                model(torch.tensor([seq]))
            stats = torch.zeros(4, len(feats), dtype=torch.float64)
            for layer in range(len(feats)):
                feat_abs = feats[layer].double().abs()  # their layer.feat is the block output in float64
                stats[:3, layer] = torch.sort(feat_abs.flatten(), descending=True).values[:3]
                stats[3, layer] = torch.median(feat_abs)
            rows.append(stats)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(rows)


# batch 1 runs the very forward the reference runs (1e-6); padded batches add float32 noise of the
# forward pass itself (batched matmuls), not of the statistic, so they get the forward's tolerance
@pytest.mark.parametrize(("batch_size", "tol"), [(1, 1e-6), (4, 1e-4)])
@pytest.mark.parametrize("name", ["llama", "planted"])
def test_layer_magnitudes_are_sun_layerwise_stats(name, batch_size, tol):
    model, vocab = _models()[name]
    sequences = _sequences(vocab)
    result = sinkscope.probe(model, sequences, chain=False, batch_size=batch_size, padding_side="left")
    ref = _sun_reference(model, sequences)  # (N, 4, L)
    mags = result["layer_magnitudes"]
    got_mean = torch.tensor(mags["mean"], dtype=torch.float64).T
    got_std = torch.tensor(mags["std"], dtype=torch.float64).T
    torch.testing.assert_close(got_mean, ref.mean(0), atol=tol, rtol=tol)
    torch.testing.assert_close(got_std, ref.std(0), atol=tol, rtol=tol)
    assert mags["sequences"] == len(sequences)


def _yu_reference(model, seq) -> list[tuple]:
    """Yu et al. (analyze.py check_module_hidden_states): per layer, signed top |x| and its index at down_proj."""
    records = {}
    hooks = []
    for layer, block in enumerate(model.model.layers):
        def pre(module, args, layer=layer):
            records.setdefault(layer, {})["input"] = args[0].detach()

        def post(module, args, output, layer=layer):
            records.setdefault(layer, {})["output"] = output.detach()
        hooks += [block.mlp.down_proj.register_forward_pre_hook(pre), block.mlp.down_proj.register_forward_hook(post)]
    with torch.no_grad():
        model(torch.tensor([seq]))
    for h in hooks:
        h.remove()
    out = []
    for layer in sorted(records):
        row = []
        for side in ("input", "output"):
            tensor = records[layer][side]
            index = torch.unravel_index(tensor.view(-1).abs().float().argmax(), tensor.shape)
            row.append((float(tensor[index]), int(index[-1])))
        out.append(tuple(row))
    return out


def test_yu_coordinates_follow_yu_procedure_on_planted_model():
    model, answer = planted_sink_model()
    sequences = answer.inputs(6, 24)
    result = sinkscope.probe(model, sequences, batch_size=4)
    yu = result["yu_super_weights"]
    refs = [_yu_reference(model, s) for s in sequences]
    for layer, row in enumerate(yu["layers"]):
        ins = [r[layer][0] for r in refs]
        outs = [r[layer][1] for r in refs]
        assert row["input_abs_mean"] == pytest.approx(sum(abs(v) for v, _ in ins) / len(ins), rel=1e-6)
        assert row["output_abs_mean"] == pytest.approx(sum(abs(v) for v, _ in outs) / len(outs), rel=1e-6)
        spiking = sum(abs(i[0]) > 50 and abs(o[0]) > 50 for i, o in zip(ins, outs)) / len(ins)
        assert row["spike_share"] == pytest.approx(spiking)
    assert yu["coordinates"] == [[answer.layer, answer.dim, answer.neuron]]
    assert result["super_weights"] == [[answer.layer, answer.dim, answer.neuron]]
    assert result["published_super_weights"] is None  # a name nobody published


def test_probe_says_whether_a_published_coordinate_matches(monkeypatch):
    model, answer = planted_sink_model()
    model.config._name_or_path = "tests/planted-sink"
    table = {"tests/planted-sink": {"coordinates": [[answer.layer, answer.dim, answer.neuron]], "source": "planted"}}
    monkeypatch.setattr(peers, "published_table", lambda: table)
    sequences = answer.inputs(6, 24)
    found = sinkscope.probe(model, sequences, batch_size=4)["published_super_weights"]
    assert found["model"] == "tests/planted-sink" and found["matches"] is True
    assert found["per_coordinate"] == [{"coordinate": [1, 3, 5], "chain": True, "yu": True}]
    table["tests/planted-sink"]["coordinates"] = [[answer.layer, answer.dim + 1, answer.neuron]]
    missed = sinkscope.probe(model, sequences, batch_size=4)["published_super_weights"]
    assert missed["matches"] is False


def test_published_table_ships_yu_and_li_coordinates():
    table = peers.published_table()
    assert table["meta-llama/Llama-2-7b-hf"]["coordinates"] == [[1, 2533, 7890]]
    assert table["mistralai/Mistral-7B-v0.1"]["coordinates"] == [[1, 2070, 7310]]
    assert peers.published_entry("/models/llama-2-7b-hf/")[0] == "meta-llama/Llama-2-7b-hf"
    assert peers.published_entry("someone/else") is None


def test_organism_sink_rate_is_gu_on_held_out_windows():
    """The issue's case: organism-softmax, 32 held-out windows of 64 tokens (the telemetry batch)."""
    from importlib import resources

    from sinkscope.loading import load_model
    from sinkscope.train.config import TrainDataConfig
    from sinkscope.train.data import prepare_data

    loaded = load_model("organism-softmax")
    folder = str(resources.files("sinkscope") / "assets/models/organism-softmax")
    _, data = prepare_data(TrainDataConfig(source="stdlib", tokenizer=folder, seq_len=64), loaded.model.config.vocab_size)
    windows = data.fixed_val(32, 64, seed_offset=1).tolist()
    result = sinkscope.probe(loaded.model, windows, chain=False)
    want, _ = _gu_rate(twin(loaded.model, "eager"), windows, result["sink_rate_eps"])
    L, H = len(result["sink_share"]), len(result["sink_share"][0])
    assert abs(result["sink_rate"] - want) <= 100.0 / (32 * L * H) + 1e-9
