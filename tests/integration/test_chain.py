"""The chain on tiny models: known-by-construction answers on the planted fixture, no chain on
random weights, and parity of every deterministic statistic with a brute-force recomputation
(one unpadded sequence at a time, eager attention, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sinkscope.fixtures import planted_sink_model
from sinkscope.probe import probe
from sinkscope.testing import tiny_model, twin, super_neuron_coordinates

CHAIN_KEYS = {"episodes", "trajectories", "super_neurons", "massive_dims", "disparity_layer_input", "onset_layer",
              "onset_episode", "tracking", "writer_share", "index", "consistent", "verdict", "evidence"}


@pytest.fixture(scope="module")
def planted():
    model, answer = planted_sink_model(layer=1, neuron=5, dim=3)
    return model, answer, probe(model, answer.inputs(12, 32, seed=1), batch_size=5)


def test_planted_chain_is_found_exactly(planted):
    _, answer, result = planted
    chain = result["chain"]
    assert set(chain) == CHAIN_KEYS
    assert super_neuron_coordinates(chain) == [{"layer": answer.layer, "index": answer.neuron, "dims": [answer.dim]}]
    assert chain["massive_dims"] == [answer.dim]
    assert chain["disparity_layer_input"] == answer.disparity_layer_input
    assert chain["onset_layer"] == answer.onset_layer == result["onset_layer"]
    assert chain["consistent"] is True
    (episode,) = chain["episodes"]  # the planted neuron alone writes the dim, from the next layer input on
    assert (episode["dim"], episode["start"]) == (3, answer.layer + 1) and episode["rise"]["from"] <= answer.layer
    assert [(w["layer"], w["index"]) for w in episode["rise"]["writers"]] == [(1, 5)]
    assert episode["rise"]["writers"][0]["share"] == pytest.approx(1.0, abs=0.01)
    assert "written by layer 1" in chain["verdict"] and "1:5 +" in chain["verdict"]
    assert chain["onset_episode"] == 0 and "The chain is consistent" in chain["verdict"]


def test_planted_finders_and_profiles(planted):
    model, answer, result = planted
    neurons = result["super_neurons"]
    assert [(c["layer"], c["index"]) for c in neurons["candidates"]] == [(answer.layer, answer.neuron)]
    cand = neurons["candidates"][0]
    assert neurons["attributed"] == [cand]  # the attribution's writer, profiled as the finder profiles it
    assert cand["persistence"] == 1.0 and cand["other_abs_max"] == 0.0  # fires only on the first token
    assert cand["down_column"]["dims"][0] == {"dim": answer.dim, "share": 1.0,
                                              "weight": pytest.approx(cand["down_column"]["dims"][0]["weight"])}
    assert neurons["down_output_at_sink"][answer.layer]["dims"][0] == answer.dim  # output-side spike
    assert neurons["down_output_at_sink"][answer.layer]["mean_abs"][0] > 1000
    weight = neurons["weight_finder"]
    assert [[r["index"] for r in w["outliers"]] for w in weight] == [[], [answer.neuron], [], []]
    assert weight[answer.layer]["gate"][0]["index"] == answer.neuron == weight[answer.layer]["up"][0]["index"]
    sel = result.tables["chain_neuron_selectivity"]
    rows = [i for i, p in enumerate(sel["position"])]
    first = [i for i in rows if sel["position"][i] == 0]
    rest = [i for i in rows if sel["position"][i] > 0]
    seen = {}
    norm = model.model.layers[answer.layer].post_attention_layernorm
    handle = norm.register_forward_hook(lambda m, a, o: seen.update(x=o[0, 0].double()))
    with torch.no_grad():
        model(torch.tensor(answer.inputs(1, 4)))
    handle.remove()
    x, gate = seen["x"], model.model.layers[answer.layer].mlp.gate_proj.weight[answer.neuron].detach().double()
    assert sel["cos_gate"][first[0]] == pytest.approx(float(x @ gate / (x.norm() * gate.norm())), rel=1e-5)
    assert sel["up_dot"][first[0]] == pytest.approx(float(x[answer.flag_dim]) * 4.0, rel=1e-5)
    assert sel["activation"][first[0]] == pytest.approx(float(torch.nn.functional.silu(x @ gate) * (x @ gate)), rel=1e-5)
    assert all(sel["cos_gate"][i] == 0 and sel["up_dot"][i] == 0 and sel["activation"][i] == 0 for i in rest)


def test_planted_disparity_massive_and_qk(planted):
    _, answer, result = planted
    disp = result["disparity"]
    k = answer.disparity_layer_input
    assert disp["contrast"][k] > 10 and all(c < 2 for c in disp["contrast"][:k])
    first = [(m["layer"], m["dim"]) for m in disp["massive"] if m["token"] == "first"]
    assert first == [(layer, answer.dim) for layer in range(k, len(disp["contrast"]))]
    assert not [m for m in disp["massive"] if m["token"] == "other"]
    qk = result["qk_locking"]
    assert qk["from_layer"] == k and [row["layer"] for row in qk["layers"]] == [2, 3]
    for row in qk["layers"]:
        assert row["massive_dim"] == answer.dim
        assert min(row["alignment"]) > 0.99 and min(row["positive_share"]) == 1.0 and min(row["sink_score"]) > 0.99
    assert len(qk["locked_heads"]) == 8


@pytest.mark.parametrize("layer,neuron,dim", [(0, 17, 40), (2, 100, 0)])
def test_planted_chain_elsewhere(layer, neuron, dim):
    model, answer = planted_sink_model(layer=layer, neuron=neuron, dim=dim, seed=3)
    chain = probe(model, answer.inputs(6, 24), selectivity_positions=0)["chain"]
    assert super_neuron_coordinates(chain) == [{"layer": layer, "index": neuron, "dims": [dim]}]
    assert (chain["disparity_layer_input"], chain["onset_layer"], chain["consistent"]) == (layer + 1, layer + 1, True)


def test_random_weights_produce_no_chain():
    for seed in range(3):
        model = tiny_model("llama", seed=seed)
        chain = probe(model, torch.randint(0, 96, (10, 24), generator=torch.Generator().manual_seed(seed)))["chain"]
        assert chain["super_neurons"] == [] and chain["massive_dims"] == [] and chain["disparity_layer_input"] is None
        assert chain["onset_layer"] is None and chain["verdict"].startswith("No attention sink")
        assert chain["consistent"] is False and "not established" in chain["verdict"]


def test_planted_model_without_bos_has_no_chain():
    model, _ = planted_sink_model()
    chain = probe(model, torch.randint(2, 64, (8, 24)))["chain"]
    assert chain["super_neurons"] == [] and chain["onset_layer"] is None and chain["disparity_layer_input"] is None
    assert chain["verdict"].startswith("No attention sink")


def test_no_chain_flag_leaves_no_chain_sections():
    result = probe(tiny_model("llama"), torch.randint(0, 96, (2, 8)), chain=False)
    assert "chain" not in result.payload and "variance" not in result.payload


def test_batches_merge_exactly(planted):
    model, answer, _ = planted
    seqs = answer.inputs(7, 20, seed=4)
    seqs[2], seqs[5] = seqs[2][:13], seqs[5][:9]  # ragged: padding must not leak into any statistic
    one = probe(model, seqs, batch_size=7)
    many = probe(model, seqs, batch_size=2)
    for name in ("chain_variance_by_position", "chain_variance_by_head", "chain_qk", "chain_neuron_selectivity"):
        for column, values in one.tables[name].items():
            np.testing.assert_allclose(np.array(values, dtype=float), np.array(many.tables[name][column], dtype=float),
                                       rtol=1e-6, atol=1e-9, err_msg=f"{name}.{column}")
    for key in ("sink_dom_ratio", "sink_dom_ratio_norm", "other_dom_ratio_max", "effective_rank"):
        np.testing.assert_allclose(one["disparity"][key], many["disparity"][key], rtol=1e-6)


# ---- brute force ---------------------------------------------------------------------------------

def _brute(model, seqs):
    """Per sequence (no padding, eager): o_proj in/out, attention weights, hidden states, q and k."""
    eager = twin(model, "eager")
    layers = eager.model.layers
    records = []
    for seq in seqs:
        store = {"o_in": {}, "o_out": {}, "q": {}, "k": {}}
        handles = []
        def keep(name, i, value):
            store[name][i] = value  # returns None: the hook never replaces an output

        for i, layer in enumerate(layers):
            attn = layer.self_attn
            handles.append(attn.o_proj.register_forward_hook(lambda m, a, o, i=i: keep("o_in", i, a[0][0].double())))
            handles.append(attn.o_proj.register_forward_hook(lambda m, a, o, i=i: keep("o_out", i, o[0].double())))
            handles.append(attn.q_proj.register_forward_hook(lambda m, a, o, i=i: keep("q", i, o)))
            handles.append(attn.k_proj.register_forward_hook(lambda m, a, o, i=i: keep("k", i, o)))
        ids = torch.tensor([seq])
        with torch.no_grad():
            out = eager(ids, output_attentions=True, output_hidden_states=True)
            cos, sin = eager.model.rotary_emb(out.hidden_states[0], torch.arange(len(seq))[None])
            normed = [layers[k].input_layernorm(out.hidden_states[k])[0] for k in range(len(layers))]
        for h in handles:
            h.remove()
        cfg = model.config
        qk = []
        for i in range(len(layers)):
            q = store["q"][i].view(1, len(seq), cfg.num_attention_heads, -1).transpose(1, 2)
            k = store["k"][i].view(1, len(seq), cfg.num_key_value_heads, -1).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            qk.append((q[0].double(), k[0].repeat_interleave(cfg.num_attention_heads // cfg.num_key_value_heads, 0).double()))
        records.append({**store, "attn": [a[0].double() for a in out.attentions], "qk": qk,
                        "hidden": [h[0].double() for h in out.hidden_states[:-1]], "normed": [n.double() for n in normed]})
    return records


def _dom(x):
    return x.abs().amax(-1) / x.abs().mean(-1)


def _erank(x):
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def test_chain_statistics_match_brute_force():
    model = tiny_model("llama", seed=1)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 96, (n,), generator=g).tolist() for n in (12, 12, 9, 12, 7, 12)]
    result = probe(model, seqs, batch_size=4)
    recs = _brute(model, seqs)
    L, H, T = 2, 4, 12
    table = result.tables["chain_variance_by_position"]
    heads = result.tables["chain_variance_by_head"]
    for layer in range(L):
        for t in range(T):
            rows = [r for r in recs if r["o_in"][layer].shape[0] > t]
            x = torch.stack([r["o_in"][layer][t] for r in rows]).numpy()  # (N, D)
            y = torch.stack([r["o_out"][layer][t] for r in rows]).numpy()
            eff = np.mean([(1 / (r["attn"][layer][:, t] ** 2).sum(-1)).numpy() for r in rows], 0)  # (H,)
            i = [j for j in range(len(table["layer"])) if table["layer"][j] == layer and table["position"][j] == t][0]
            expect = {"std_across_samples": x.std(0).mean(), "std_across_dims": x.std(1).mean(),
                      "std_across_samples_after": y.std(0).mean(), "std_across_dims_after": y.std(1).mean(),
                      "effective_tokens": eff.mean()}
            for name, value in expect.items():
                assert table[name][i] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, layer, t)
            xh = x.reshape(len(rows), H, -1)
            for h in range(H):
                j = [j for j in range(len(heads["layer"])) if (heads["layer"][j], heads["head"][j], heads["position"][j])
                     == (layer, h, t)][0]
                assert heads["std_across_samples"][j] == pytest.approx(xh[:, h].std(0).mean(), rel=1e-5, abs=1e-7)
                assert heads["std_across_dims"][j] == pytest.approx(xh[:, h].std(-1).mean(), rel=1e-5, abs=1e-7)
                assert heads["effective_tokens"][j] == pytest.approx(eff[h], rel=1e-5)
    var = result["variance"]["layers"]
    from scipy.stats import kendalltau
    for layer in range(L):
        before = [table["std_across_samples"][j] for j in range(len(table["layer"])) if table["layer"][j] == layer]
        after = [table["std_across_samples_after"][j] for j in range(len(table["layer"])) if table["layer"][j] == layer]
        assert var[layer]["across_samples"]["kendall_tau_o_proj"] == pytest.approx(kendalltau(before, after).statistic)
    disp = result["disparity"]
    for k in range(L):
        sink = [float(_dom(r["hidden"][k][0])) for r in recs]
        sink_norm = [float(_dom(r["normed"][k][0])) for r in recs]
        others = torch.cat([_dom(r["hidden"][k][1:]) for r in recs])
        assert disp["sink_dom_ratio"][k] == pytest.approx(np.mean(sink), rel=1e-5)
        assert disp["sink_dom_ratio_norm"][k] == pytest.approx(np.mean(sink_norm), rel=1e-5)
        assert disp["other_dom_ratio_max"][k] == pytest.approx(float(others.max()), rel=1e-5)
        assert disp["other_dom_ratio_mean"][k] == pytest.approx(float(others.mean()), rel=1e-5)
        width = float(np.exp(np.log(32) / 512))  # one log-spaced bin over [1, D]
        assert float(others.median()) / width**2 <= disp["other_dom_ratio_median"][k] <= float(others.median()) * width**2
        assert disp["effective_rank"][k] == pytest.approx(np.mean([_erank(r["hidden"][k]) for r in recs]), rel=1e-5)
    qk = result.tables["chain_qk"]
    for layer in range(L):
        qs = torch.cat([r["qk"][layer][0][:, 1:] for r in recs], 1)  # (H, N, Dh): queries that see the sink
        dots = torch.cat([(r["qk"][layer][0][:, 1:] * r["qk"][layer][1][:, :1]).sum(-1) for r in recs], 1)
        keys = torch.stack([r["qk"][layer][1][:, 0] for r in recs]).mean(0)  # (H, Dh)
        for h in range(H):
            j = [j for j in range(len(qk["layer"])) if (qk["layer"][j], qk["head"][j]) == (layer, h)][0]
            assert qk["positive_share"][j] == pytest.approx(float((dots[h] > 0).double().mean()), abs=1e-12)
            top = np.linalg.svd(qs[h].numpy(), full_matrices=False)[2][0]
            top *= np.sign(top @ qs[h].numpy().mean(0))
            cos = top @ keys[h].numpy() / np.linalg.norm(keys[h].numpy())
            assert qk["alignment_sink_key"][j] == pytest.approx(cos, abs=1e-5)
            assert qk["sink_score"][j] == pytest.approx(result["sink_score"][layer][h])


@pytest.mark.parametrize("random_tokens", [False, True])
def test_variance_on_natural_text_and_random_tokens(random_tokens):
    from sinkscope.testing import tiny_tokenizer

    kwargs = dict(random_tokens=True, bos="never") if random_tokens else {}
    result = probe(tiny_model("llama"), tokenizer=tiny_tokenizer(), samples=8, seq_len=24, **kwargs)
    assert result["data"]["source"] == ("random-tokens" if random_tokens else "embedded-prompts")
    table = result.tables["chain_variance_by_position"]
    for layer in result["variance"]["layers"]:
        for side, column in (("across_samples", "std_across_samples"), ("across_dims", "std_across_dims")):
            rows = [(p, v) for lay, p, v in zip(table["layer"], table["position"], table[column])
                    if lay == layer["layer"] and not np.isnan(v)]
            t, y = (np.array(c, dtype=np.float64) for c in zip(*rows))
            g = 1 / np.sqrt(t + 1)  # the fit restated: least squares of y on g through the origin
            s = np.linalg.lstsq(g[:, None], y, rcond=None)[0][0]
            r2 = 1 - ((y - s * g) ** 2).sum() / ((y - y.mean()) ** 2).sum()
            fit = layer[side]["fit"]
            assert fit["positions"] == len(y) and fit["s"] == pytest.approx(s, rel=1e-9)
            assert fit["r2"] == pytest.approx(r2, rel=1e-9, abs=1e-12)
            assert -1 <= layer[side]["kendall_tau_o_proj"] <= 1
    if random_tokens:  # the first token differs between samples, so its across-samples std is real
        assert all(layer["std_first"] > 0 for layer in result["variance"]["layers"])
    else:  # every sequence starts with the same BOS: identical first tokens, zero spread
        assert all(layer["std_first"] == pytest.approx(0, abs=1e-6) for layer in result["variance"]["layers"])


@pytest.mark.parametrize("flag,value", [("variance_positions", 0), ("neuron_top_k", 0), ("selectivity_positions", -1),
                                        ("massive_abs_paper", -1.0), ("spike_persistence", 2.0),
                                        ("sink_confidence", 1.0), ("writer_share", 0.0), ("onset_min_layers", 0)])
def test_bad_chain_settings_are_refused(flag, value):
    from sinkscope.errors import SinkscopeError

    with pytest.raises(SinkscopeError, match="--" + flag.replace("_", "-")):
        probe(tiny_model("llama"), torch.randint(3, 96, (2, 8)), **{flag: value})


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_effective_tokens_without_the_full_pass_match_it(padding_side):
    """The chain's O(T) effective tokens (first --variance-positions positions and the last) equal the
    exact T x S pass of --key-importance, with padding on either side; other positions are left out."""
    model = tiny_model("llama", seed=4)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, 96, (n,), generator=g).tolist() for n in (12, 8, 12, 10)]
    kwargs = dict(batch_size=3, padding_side=padding_side, variance_positions=5)
    cheap = probe(model, seqs, **kwargs).tables["chain_variance_by_head"]
    full = probe(model, seqs, key_importance=True, **kwargs).tables["chain_variance_by_head"]
    assert np.array_equal(cheap["position"], full["position"])
    for i, pos in enumerate(cheap["position"]):
        if pos < 5 or pos == 11:
            assert cheap["effective_tokens"][i] == pytest.approx(full["effective_tokens"][i], rel=1e-5)
        else:
            assert np.isnan(cheap["effective_tokens"][i]) and not np.isnan(full["effective_tokens"][i])


def test_a_writer_the_spike_finder_misses_is_profiled_beside_its_candidates():
    """The attribution names the neuron that wrote the massive dim even where the spike finder does not find it
    (on SmolLM2 the onset's writers also fire on later tokens; here the finder's bar is set out of reach).
    probe.json then profiles it beside the finder's candidates, with the same statistics, checked here against
    the activations read by a hook."""
    from dataclasses import replace

    from sinkscope.config import ProbeConfig

    model, answer = planted_sink_model(layer=1, neuron=5, dim=3)
    inputs = answer.inputs(8, 24, seed=2)
    config = ProbeConfig()
    config = replace(config, criteria=replace(config.criteria, spike_channel_ratio=1e30))
    result = probe(model, inputs, config=config, batch_size=4, selectivity_positions=0)
    assert super_neuron_coordinates(result["chain"]) == [{"layer": 1, "index": 5, "dims": [3]}]
    neurons = result["super_neurons"]
    assert neurons["candidates"] == []
    (writer,) = neurons["attributed"]
    seen = []
    down = model.model.layers[answer.layer].mlp.down_proj
    handle = down.register_forward_hook(lambda m, a, o: seen.append(a[0][..., answer.neuron].double()))
    with torch.no_grad():
        model(torch.tensor(inputs))
    handle.remove()
    act = seen[0]  # (B, T): the neuron's down_proj input
    assert (writer["layer"], writer["index"], writer["persistence"]) == (1, 5, 0.0)
    assert writer["sink_abs_mean"] == pytest.approx(float(act[:, 0].abs().mean()), rel=1e-5)
    assert writer["sink_abs_mean"] > 100 and writer["other_abs_mean"] == float(act[:, 1:].abs().mean()) == 0.0
    assert writer["down_column"]["dims"][0]["dim"] == answer.dim


def test_sun_median_is_taken_once_per_layer_and_sequence_and_changes_nothing(monkeypatch):
    """Block k's output is the residual stream entering layer k + 1: the layer-magnitude observer takes each
    sequence's median |x| there, and the disparity observer reuses it instead of taking it again."""
    import sinkscope.metrics.disparity as disparity
    from sinkscope.capture.activations import SharedMedians

    model, answer = planted_sink_model(massive=2000)
    inputs = answer.inputs(6, 24, seed=4)
    inputs[2] = inputs[2][:15]  # padding: the medians are over each sequence's real tokens
    own = []
    real = disparity.lower_median
    monkeypatch.setattr(disparity, "lower_median", lambda x: own.append(1) or real(x))
    shared = probe(model, inputs, batch_size=3, selectivity_positions=0)
    assert own == []  # every median the massive rule needed was the magnitude observer's
    monkeypatch.setattr(SharedMedians, "known", lambda self, hidden, valid: None)
    alone = probe(model, inputs, batch_size=3, selectivity_positions=0)
    assert own  # without sharing, the rule takes its own
    assert shared["layer_magnitudes"] == alone["layer_magnitudes"]
    for key in ("massive", "massive_dims", "massive_at_sink"):
        assert shared["disparity"][key] == alone["disparity"][key]
    assert shared["disparity"]["massive_dims"] == [answer.dim]
