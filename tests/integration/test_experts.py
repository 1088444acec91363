"""Super neurons inside experts: activations recomputed from transformers' fused expert weights, and a
planted MoE chain whose (layer, expert, neuron) the finder recovers exactly."""

from __future__ import annotations

import pytest
import torch

import sinkscope
from sinkscope.adapters import adapter_for, blocks
from sinkscope.adapters.coverage import blocks_with
from sinkscope.capture.experts import expert_activations, expert_down_column

MOE = ("gpt_oss", "qwen3_moe", "mixtral", "deepseek_v3")


@pytest.mark.parametrize("family", MOE)
def test_recomputed_expert_activations_rebuild_the_experts_output(family):
    """sum over the routed experts of weight * (activation @ down column) + bias == the module's own output."""
    from sinkscope.testing import tiny_model

    model = tiny_model(family)
    adapter = adapter_for(model)
    layer = blocks_with(model, adapter, "experts")[-1]
    experts = blocks(model, adapter)[layer].get_submodule(adapter.experts)
    seen = {}
    handle = experts.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    with torch.no_grad():
        model(torch.randint(3, 96, (2, 7)))
    handle.remove()
    x, index, weights = seen["args"][:3]
    N, k = index.shape
    act = expert_activations(experts, x.repeat_interleave(k, 0), index.reshape(-1))  # (N*k, I)
    columns = torch.stack([torch.stack([expert_down_column(experts, int(e), n) for n in range(act.shape[1])], -1)
                           for e in index.reshape(-1)])  # (N*k, D, I)
    out = torch.einsum("sdi,si->sd", columns, act)
    if getattr(experts, "has_bias", False):
        out = out + experts.down_proj_bias[index.reshape(-1)]
    rebuilt = (out * weights.reshape(-1, 1)).view(N, k, -1).sum(1)
    torch.testing.assert_close(rebuilt, seen["out"], rtol=1e-5, atol=1e-5)


def test_random_moe_models_have_no_expert_super_neuron():
    from sinkscope.testing import tiny_model

    for family in MOE:
        result = sinkscope.probe(tiny_model(family), torch.randint(3, 96, (6, 16)), batch_size=3)
        assert result["expert_neurons"]["candidates"] == [], family


@pytest.mark.parametrize(("layer", "expert", "neuron", "dim", "renormalise"), [
    (1, 2, 5, 3, False), (0, 0, 17, 40, False), (1, 2, 5, 3, True), (2, "shared", 9, 7, False)])
def test_the_expert_finder_recovers_the_planted_moe_neuron_exactly(layer, expert, neuron, dim, renormalise):
    from sinkscope.fixtures_moe import planted_moe_model

    model, answer = planted_moe_model(layer=layer, expert=expert, neuron=neuron, dim=dim)
    if renormalise:  # qwen3_moe's other routing: the top-k weights divided by their sum
        model.config.norm_topk_prob = True
        for block in model.model.layers:
            block.mlp.gate.norm_topk_prob = True
    sequences = [s[:n] for s, n in zip(answer.inputs(8, 24), (24, 19, 24, 21, 16, 24, 23, 24))]  # padded batches
    result = sinkscope.probe(model, sequences, batch_size=4)
    found = result["expert_neurons"]["candidates"]
    assert [(c["layer"], c["expert"], c["neuron"]) for c in found] == [(layer, expert, neuron)]
    hit = found[0]
    assert hit["persistence"] == 1.0 and hit["other_abs_mean"] == 0.0
    assert hit["down_column"]["dims"][0]["dim"] == dim and hit["down_column"]["dims"][0]["share"] == pytest.approx(1.0)
    want = _by_hand(model, layer, expert, sequences, answer.flag_dim)
    assert hit["sink_abs_mean"] == pytest.approx(want["sink_abs_mean"], rel=1e-5)
    if expert == "shared":
        assert hit["router_weight_sink"] is None and hit["sink_routed_share"] == 1.0
    else:  # the router sends every first token to the planted expert, with more weight than other tokens get
        assert hit["sink_routed_share"] == 1.0
        assert hit["router_weight_sink"] == pytest.approx(want["router_weight_sink"], rel=1e-5)
        assert hit["router_weight_other"] == pytest.approx(want["router_weight_other"], rel=1e-5)
        assert hit["router_weight_sink"] > 2 * hit["router_weight_other"]


def _by_hand(model, layer: int, expert, sequences, flag_dim: int) -> dict:
    """Each sequence alone: the MoE block's input x; the planted neuron's activation silu(g x) * u x at the first
    token (its gate and up rows read only the flag dim, GATE_UP_WEIGHT each); and the router's own softmax over
    experts, top-k, renormalised when the config says so (qwen3_moe's norm_topk_prob), averaged over first
    tokens and over the other tokens (0 where e is not chosen)."""
    from sinkscope.fixtures_moe import GATE_UP_WEIGHT

    moe = model.model.layers[layer].mlp
    seen = {}
    handle = moe.register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0][0].double()))
    sink_act, sink_weight, other_weight, others = [], 0.0, 0.0, 0
    try:
        for seq in sequences:
            with torch.no_grad():
                model(torch.tensor([seq]))
            x = seen["x"]  # (T, D)
            g = GATE_UP_WEIGHT * x[0, flag_dim]
            sink_act.append(abs(float(torch.nn.functional.silu(g) * g)))
            if expert == "shared":
                continue
            probs = torch.softmax(x @ moe.gate.weight.detach().double().T, -1)  # (T, E)
            top, index = probs.topk(model.config.num_experts_per_tok, -1)
            if model.config.norm_topk_prob:
                top = top / top.sum(-1, keepdim=True)
            weight = torch.zeros_like(probs).scatter_(1, index, top)[:, expert]  # (T,)
            sink_weight += float(weight[0])
            other_weight += float(weight[1:].sum())
            others += len(seq) - 1
    finally:
        handle.remove()
    return {"sink_abs_mean": sum(sink_act) / len(sink_act), "router_weight_sink": sink_weight / len(sequences),
            "router_weight_other": other_weight / max(others, 1)}


@pytest.mark.parametrize("expert", [2, "shared"])
def test_ablating_an_expert_neuron_equals_zeroing_its_down_column(expert):
    """The hook removes exactly the neuron's contribution: same logits as a copy whose down column is 0."""
    import copy

    from sinkscope.capture.hooks import scoped_hooks
    from sinkscope.fixtures_moe import planted_moe_model
    from sinkscope.interventions.ablate_experts import AblateExpertNeurons

    model, answer = planted_moe_model(layer=1, expert=expert, neuron=5, dim=3)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        moe = edited.model.layers[1].mlp
        if expert == "shared":
            moe.shared_experts.down_proj.weight[:, 5] = 0.0
        else:
            moe.experts.down_proj[expert][:, 5] = 0.0
    sweep = AblateExpertNeurons(neurons=((1, expert, 5),)).sweep(model, adapter_for(model))
    ids = torch.tensor(answer.inputs(3, 12))
    with torch.no_grad():
        plain = model(ids).logits
        with scoped_hooks(forward=sweep.forward_hooks, forward_pre=sweep.forward_pre_hooks):
            ablated = model(ids).logits
        want = edited(ids).logits
    assert (plain - want).abs().max() > 1e-2  # the neuron matters, so the comparison can fail
    torch.testing.assert_close(ablated, want, rtol=1e-5, atol=1e-5)


def test_ablate_auto_on_the_planted_moe_removes_the_massive_activation():
    from sinkscope.fixtures_moe import planted_moe_model
    from sinkscope.intervene import InterveneConfig, intervene

    model, answer = planted_moe_model(layer=0, expert=1, neuron=4, dim=3)
    # the planted model writes a massive dim but has no sink: name the episode whose writers to ablate
    result = intervene(model, "ablate", InterveneConfig(neurons="auto", episode=0), data=answer.inputs(6, 16))
    assert result["neurons"] == [[0, 1, 4]] and result["episode"]["dim"] == 3 and result["episode"]["ablated_share"] > 0.99
    before, after = result["max_abs_activation_before"], result["max_abs_activation_after"]
    assert before[-1] > 10 * after[-1]  # the planted write was the largest activation; without it, gone


def test_the_report_lists_the_expert_neuron_with_its_router_weights():
    from sinkscope.fixtures_moe import planted_moe_model
    from sinkscope.report.build import expert_neuron_rows

    model, answer = planted_moe_model(layer=1, expert=2, neuron=5, dim=3)
    result = sinkscope.probe(model, answer.inputs(4, 16), batch_size=4)
    hit = result["expert_neurons"]["candidates"][0]
    assert expert_neuron_rows(result.payload) == [{
        "layer": 1, "expert": 2, "neuron": 5, "sink |a|": hit["sink_abs_mean"], "other |a| mean": 0.0,
        "router weight sink": hit["router_weight_sink"], "router weight other": hit["router_weight_other"],
        "top dims": ", ".join(str(d["dim"]) for d in hit["down_column"]["dims"][:3])}]
    assert hit["down_column"]["dims"][0]["dim"] == 3
