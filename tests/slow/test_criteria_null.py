"""The random-weight null: on random models of every supported family at widths 64 to 1024, the default
criteria find no sink, no super neuron, no disparity and no chain (docs/metrics.md, "How sinkscope
decides", reports the counts).

Two nulls. ``default``: the family's own initialisation (what ``from_config`` gives a user, std 0.02):
nothing at all may be found. ``peaked``: the test models' std 0.25 (12x), whose attention is so
peaked that a key holding the same token in every sequence (a BOS) can draw ~2.5x the uniform
attention by chance; there the sink rule may fire, but no chain link may.
"""

from __future__ import annotations

import pytest
import torch

from sinkscope.probe import probe
from sinkscope.testing import FAMILIES, INIT_STD, VOCAB, tiny_model

WIDTHS_SEEDS = ((64, 0), (128, 3), (256, 1), (1024, 2))
FAMILY_INIT_STD = 0.02  # transformers' default initializer_range for every family here


def wide_model(family: str, width: int, seed: int, init_std: float = INIT_STD):
    """The family's tiny random model at hidden width ``width`` (MLP 2x wider)."""
    names = {"gpt2": {"n_embd": width, "n_inner": 2 * width},
             "opt": {"hidden_size": width, "ffn_dim": 2 * width, "word_embed_proj_dim": width}}
    sizes = names.get(family, {"hidden_size": width, "intermediate_size": 2 * width})
    return tiny_model(family, seed=seed, initializer_range=init_std, **sizes)


def null_probe(family: str, width: int, seed: int, init_std: float, samples: int = 16):
    ids = torch.randint(4, VOCAB, (samples, 32), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 1  # the same first token in every sequence (a BOS): the harder null
    return probe(wide_model(family, width, seed, init_std), ids.tolist(), selectivity_positions=0)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["default", "peaked"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("width", "seed"), WIDTHS_SEEDS)
def test_random_weights_give_no_verdict(family, width, seed, init):
    result = null_probe(family, width, seed, FAMILY_INIT_STD if init == "default" else INIT_STD)
    if init == "default":
        assert result["sink"]["present"] is False and result["onset_layer"] is None
    if "expert_neurons" in result.payload:  # mixture of experts: the finder inside experts must find nothing
        assert result["expert_neurons"]["candidates"] == []
    chain = result["chain"]
    assert result["super_neurons"]["candidates"] == [] and chain["super_neurons"] == [] and chain["episodes"] == []
    assert chain["massive_dims"] == [] and chain["disparity_layer_input"] is None and chain["consistent"] is False
