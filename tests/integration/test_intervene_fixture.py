"""On the hand-built model whose chain is known, ablation removes the planted disparity and sink, and
isolation / amplification leave it exactly where the construction puts it: the sink is keyed on the
massive dim, which only the planted neuron writes at BOS (every o_proj row of the reserved dims is zero),
so neither edit at token p can give p that dim or take the sink off BOS. The values of both experiments
against hand-edited eager models: tests/integration/test_intervene_values.py."""

import pytest

from sinkscope.config import build
from sinkscope.fixtures import planted_sink_model
from sinkscope.intervene import InterveneConfig, intervene


@pytest.fixture(scope="module")
def planted():
    return planted_sink_model(layer=1, neuron=5, dim=3)


def test_ablating_the_planted_neuron_removes_disparity_and_sink(planted):
    model, answer = planted
    data = answer.inputs(8, 32)
    config = build(InterveneConfig, {"neurons": f"{answer.layer}:{answer.neuron}"})
    result = intervene(model, "ablate", config, data=data)
    onset = answer.onset_layer
    row = result["per_layer"][onset]
    assert row["sink_score_before"] > 0.9  # the planted sink
    assert row["sink_score_after"] < 0.2  # gone without the neuron (uniform over 32 keys is ~0.13)
    assert result["dom_ratio_before"][answer.layer] > 50  # ~ a basis vector in 64 dims
    assert result["dom_ratio_before"][answer.layer] > 10 * result["dom_ratio_after"][answer.layer]
    assert max(result["max_abs_activation_after"]) < 0.01 * max(result["max_abs_activation_before"])
    assert result["sink_rate_after"] < result["sink_rate_before"]
    for key, zeroed in (("perplexity_before", False), ("perplexity_after", True)):
        assert result[key]["perplexity"] == pytest.approx(_plain_perplexity(model, data, answer, zeroed), rel=1e-5)


def _plain_perplexity(model, data, answer, zero_neuron: bool) -> float:
    """exp(mean next-token NLL) from a plain HF forward; the ablation restated as a zeroed down_proj column."""
    import copy

    import torch

    model = copy.deepcopy(model)
    if zero_neuron:
        with torch.no_grad():
            model.model.layers[answer.layer].mlp.down_proj.weight[:, answer.neuron] = 0
    ids = torch.tensor(data)
    with torch.no_grad():
        logits = model(ids).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return float(torch.exp(nll))


def test_ablating_an_unrelated_neuron_changes_nothing_material(planted):
    model, answer = planted
    data = answer.inputs(8, 32)
    config = build(InterveneConfig, {"neurons": f"{answer.layer}:{answer.neuron + 1}"})
    result = intervene(model, "ablate", config, data=data)
    row = result["per_layer"][answer.onset_layer]
    assert row["sink_score_after"] > 0.9


def test_ablating_the_massive_dim_removes_the_sink(planted):
    model, answer = planted
    config = build(InterveneConfig, {"neurons": "none", "dims": str(answer.dim)})
    result = intervene(model, "ablate", config, data=answer.inputs(8, 32))
    assert result["per_layer"][answer.onset_layer]["sink_score_after"] < 0.2


def test_mean_ablation_takes_its_means_from_the_baseline_pass():
    """Mean ablation, whose means are gathered in the baseline sweep, equals ablation with means
    computed by hand from plain forwards (real tokens other than the first, one sequence at a time)."""
    import torch

    from sinkscope.interventions import AblateNeurons
    from sinkscope.intervene import _Experiment
    from sinkscope.loading import prepare_model
    from sinkscope.testing import tiny_model

    model = tiny_model("llama", seed=2)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 9, 12, 7)]
    neurons = ((0, 4), (1, 9), (1, 2))
    config = build(InterveneConfig, {"neurons": ",".join(f"{a}:{b}" for a, b in neurons), "mode": "mean",
                                     "position": 2, "data": {"batch_size": 3}})  # position 2: every sequence counts
    result = intervene(model, "ablate", config, data=seqs)
    acts = {layer: [] for layer in (0, 1)}
    handles = [model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
        lambda m, a, layer=layer: acts[layer].append(a[0][0, 1:].double())) for layer in acts]
    with torch.no_grad():
        for seq in seqs:
            model(torch.tensor([seq]))
    for h in handles:
        h.remove()
    means = {(layer, n): float(torch.cat(acts[layer])[:, n].mean()) for layer, n in neurons}
    exp = _Experiment(prepare_model(model, None, config.load), config, False, seqs)
    by_hand = exp.sweep([AblateNeurons(neurons=neurons, mode="mean", target=config.target, means=means)])
    expect = by_hand["sink"].sink_score()[:, :, 0].float().mean(1)
    got = [row["sink_score_after"] for row in result["per_layer"]]
    assert got == pytest.approx(expect.tolist(), rel=1e-5)
    assert got != pytest.approx([row["sink_score_before"] for row in result["per_layer"]], rel=1e-3)  # it did change


def test_isolating_a_token_leaves_the_planted_sink_on_bos(planted):
    model, answer = planted
    p = 9
    result = intervene(model, "isolate", build(InterveneConfig, {"position": p}), data=answer.inputs(8, 32))
    for row in result["per_layer"][answer.onset_layer:]:
        assert row["original_sink_before"] > 0.9 and row["original_sink_after"] > 0.9
        assert row["sink_score_after"] < 0.05  # p gets no massive dim, so no query locks onto it
    moved = [abs(row["sink_score_after"] - row["sink_score_before"]) for row in result["per_layer"][1:]]
    assert max(moved) > 0  # the edit ran: p's own output changed, and with it its keys from layer 1 on


def test_amplifying_a_token_cannot_write_the_massive_dim(planted):
    import torch

    from sinkscope.interventions import Amplify, applied

    model, answer = planted
    p, layers = 9, tuple(range(answer.onset_layer))
    config = build(InterveneConfig, {"position": p, "lambdas": (1.0, 30.0), "layers": ",".join(map(str, layers)),
                                     "observe": answer.onset_layer, "value_mean_tokens": 512})
    result = intervene(model, "amplify", config, data=answer.inputs(8, 32))
    assert max(result["sink_score"] + result["control_sink_score"]) < 0.05
    ids = torch.tensor(answer.inputs(2, 32))
    hidden = {}
    hook = model.model.layers[answer.onset_layer].register_forward_pre_hook(
        lambda module, args: hidden.__setitem__("h", args[0].detach()))
    try:
        with torch.no_grad(), applied(model, Amplify(position=p, lam=30.0, layers=layers, mean=None)):
            model(ids)
    finally:
        hook.remove()
    assert hidden["h"][:, p, answer.dim].abs().max() == 0  # by construction, whatever the attention output
    assert hidden["h"][:, 0, answer.dim].abs().min() > 1000  # while BOS holds the massive value
