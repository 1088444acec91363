"""Every adapter matches its family: each declared module path resolves on a tiny model of that family,
every adapter field is read by some pipeline, and attention arguments the capture does not implement
are refused, never dropped."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import pytest
import torch

import sinkscope
from sinkscope.adapters import Adapter, adapter_for, base_model, blocks, supported_model_types
from sinkscope.adapters.coverage import BASE_PARTS, PATH_FIELDS, blocks_with, declared_paths
from sinkscope.testing import FAMILIES, tiny_model, tiny_sinkscope_config
from sinkscope.train.model import SinkscopeForCausalLM

SRC = Path(sinkscope.__file__).parent


def _own():
    torch.manual_seed(0)
    return SinkscopeForCausalLM(tiny_sinkscope_config()).eval()


def test_every_supported_family_has_a_tiny_model():
    assert set(supported_model_types()) == set(FAMILIES) | {"sinkscope"}


@pytest.mark.parametrize("family", sorted(FAMILIES) + ["sinkscope"])
def test_every_declared_path_resolves_on_a_tiny_model_of_its_family(family):
    model = _own() if family == "sinkscope" else tiny_model(family)
    adapter = adapter_for(model)
    assert adapter.model_type == family
    assert len(blocks(model, adapter)) == model.config.num_hidden_layers
    for part, path in declared_paths(adapter).items():
        found = blocks_with(model, adapter, part)
        assert found, f"{family}: {part}={path!r} resolves in no block"
        if part in BASE_PARTS:
            assert base_model(model).get_submodule(path) is not None
    # the parts every pipeline needs, in every block
    n = model.config.num_hidden_layers
    for part in ("attention", "o_proj"):
        assert blocks_with(model, adapter, part) == list(range(n)), f"{family}: {part} missing in some block"
    ffn = set(blocks_with(model, adapter, "mlp_down")) | set(blocks_with(model, adapter, "experts"))
    assert ffn == set(range(n)), f"{family}: some block has neither a dense FFN nor experts"


def test_every_adapter_field_is_read_outside_the_adapters():
    """No dead field: each is read as ``adapter.<field>`` or named as a part ("<field>") outside the family files."""
    families = {f"{name}.py" for name in supported_model_types()} | {"gemma3.py"}
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py") if "adapters" not in p.parts or p.name not in families)
    for field in dataclasses.fields(Adapter):
        used = re.search(rf"adapter\.{field.name}\b|\"{field.name}\"", code)
        assert used, f"Adapter.{field.name} is read by nothing"
    paths = {f.name for f in dataclasses.fields(Adapter) if f.type in ("str", "str | None")} - {"model_type", "qkv_layout"}
    assert set(PATH_FIELDS) == paths, "a new module-path field must be listed in coverage.PATH_FIELDS"


def test_a_family_passing_an_unimplemented_attention_argument_is_refused_by_name():
    model = tiny_model("llama")
    attention = model.model.layers[1].self_attn
    attention.forward = functools.partial(attention.forward, rotary_bias=torch.ones(4))  # a family's new argument
    with pytest.raises(sinkscope.SinkscopeError, match="LlamaAttention passes attention argument\\(s\\) rotary_bias"):
        sinkscope.probe(model, torch.randint(3, 96, (2, 8)), chain=False)


@pytest.mark.parametrize(("neurons", "message"), [
    ("1:3", "layer 1 has no dense FFN \\(its FFN is mlp.experts\\); name a neuron inside an expert as LAYER:E"),
    ("1:7:3", "expert 7 is out of range: layer 1 has experts 0..3"),
    ("0:1:3", "layer 0 has no routed experts"),
    ("auto", "found no super neuron"),  # the finder inside experts ran and found none in random weights
])
def test_ablating_a_neuron_that_is_not_there_is_refused_with_the_reason(neurons, message):
    from sinkscope.intervene import InterveneConfig, intervene

    with pytest.raises(sinkscope.SinkscopeError, match=message):
        intervene(tiny_model("qwen3_moe"), "ablate", InterveneConfig(neurons=neurons),
                  data=torch.randint(3, 96, (2, 12)).tolist())
