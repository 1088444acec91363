"""The default criteria against answers known by construction: planted chains at every scale must be
found exactly; the organisms are judged as docs/training.md describes them (docs/metrics.md, "How
sinkscope decides"). The random-weight null sweep over every family is in tests/slow."""

from __future__ import annotations

import pytest

from sinkscope.testing import super_neuron_coordinates
from sinkscope.fixtures import planted_sink_model
from sinkscope.probe import probe


@pytest.mark.parametrize("width", [64, 256, 1024])
@pytest.mark.parametrize("massive", [20.0, 200.0, 2000.0])
def test_planted_chain_is_found_exactly_at_every_scale(width, massive):
    model, answer = planted_sink_model(layer=1, neuron=5, dim=3, hidden=width, intermediate=2 * width,
                                       massive=massive, seed=width)
    result = probe(model, answer.inputs(6, 24, seed=1), selectivity_positions=0)
    chain = result["chain"]
    assert super_neuron_coordinates(chain) == [{"layer": answer.layer, "index": answer.neuron, "dims": [answer.dim]}]
    assert chain["massive_dims"] == [answer.dim]
    assert chain["disparity_layer_input"] == answer.disparity_layer_input
    assert chain["onset_layer"] == result["onset_layer"] == answer.onset_layer
    assert chain["consistent"] is True
    sink = result["sink"]
    assert sink["present"] and sink["present_by_layer"] == [layer >= answer.onset_layer for layer in range(4)]
    # Sun et al.'s rule needs |h| > 100 and > 1000x the layer output's median |h| (0.67-0.72 in these models):
    # the plant of 2000 passes both, 200 fails the relative bar and 20 both; the scale-free rule finds every one
    assert result["disparity"]["massive_dims_paper"] == ([answer.dim] if massive == 2000.0 else [])


def test_paper_preset_uses_the_absolute_rules():
    model, answer = planted_sink_model(massive=40.0)
    result = probe(model, answer.inputs(6, 24, seed=1), selectivity_positions=0, rules="paper")
    chain = result["chain"]
    assert chain["massive_dims"] == [] and chain["super_neurons"] == [] and chain["consistent"] is False
    assert result["sink"]["rules"] == "paper" and result["onset_layer"] == result["onset_layer_paper"] == 2
    assert result["criteria"]["rules"] == "paper"
    assert result["provenance"]["config"]["criteria"]["rules"] == "paper"


@pytest.fixture(scope="module")
def organisms():
    return {name: probe(f"organism-{name}", samples=16, selectivity_positions=0) for name in ("softmax", "headnorm", "nobos")}


def test_organism_softmax_chain_with_defaults(organisms):
    result = organisms["softmax"]
    chain = result["chain"]
    assert super_neuron_coordinates(chain) == [{"layer": 0, "index": 202, "dims": [112]}]  # README / docs/training.md
    assert (chain["disparity_layer_input"], chain["onset_layer"], chain["consistent"]) == (1, 3, True)
    assert result["sink"]["peak_layer"] == 3 and result["onset_layer_paper"] is None
    assert result["variance"]["first_position"]["same_token_every_sample"] is True
    assert "0 by construction" in chain["verdict"]


def test_organism_headnorm_and_nobos_as_they_are(organisms):
    headnorm, nobos = organisms["headnorm"], organisms["nobos"]
    assert super_neuron_coordinates(headnorm["chain"]) == [{"layer": 0, "index": 147, "dims": [12]}]
    weaker = headnorm["sink"]["ratio"][3] < organisms["softmax"]["sink"]["ratio"][3]
    assert headnorm["sink"]["present"] and weaker
    assert nobos["sink"]["present"] and nobos["onset_layer"] == 3  # the structural first-position sink
    assert nobos["chain"]["super_neurons"] == [] and nobos["chain"]["disparity_layer_input"] is None
    assert nobos["variance"]["first_position"]["same_token_every_sample"] is False


def test_ablate_auto_finds_the_organisms_super_neuron_and_removes_its_sink():
    from sinkscope.config import DataConfig
    from sinkscope.intervene import InterveneConfig, intervene

    payload = intervene("organism-softmax", "ablate", InterveneConfig(data=DataConfig(samples=12)))
    assert payload["neurons"] == [[0, 202]]
    assert payload["sink_before"]["present"] is True and payload["sink_after"]["present"] is False
