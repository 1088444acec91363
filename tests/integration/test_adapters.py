"""Every adapter matches its family: each declared module path resolves on a tiny model of that family,
every adapter field is read by some pipeline, and attention arguments the capture does not implement
are refused, never dropped."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sinkscope
from sinkscope.adapters import Adapter, adapter_for, base_model, blocks, supported_model_types
from sinkscope.adapters.coverage import BASE_PARTS, PATH_FIELDS, blocks_with, declared_paths
from sinkscope.testing import FAMILIES, MULTIMODAL, tiny_model, tiny_sinkscope_config
from sinkscope.train.model import SinkscopeForCausalLM

SRC = Path(sinkscope.__file__).parent


def _own():
    torch.manual_seed(0)
    return SinkscopeForCausalLM(tiny_sinkscope_config()).eval()


def test_every_supported_family_has_a_tiny_model():
    assert set(supported_model_types()) == set(FAMILIES) | set(MULTIMODAL) | {"sinkscope"}


@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(MULTIMODAL) + ["sinkscope"])
def test_every_declared_path_resolves_on_a_tiny_model_of_its_family(family):
    model = _own() if family == "sinkscope" else tiny_model(family)
    adapter = adapter_for(model)
    assert adapter.model_type == family
    n = model.config.get_text_config().num_hidden_layers
    assert len(blocks(model, adapter)) == n
    for part, path in declared_paths(adapter).items():
        if part == "text_model":  # from the top-level model, not a block
            assert model.get_submodule(path) is not None
            continue
        found = blocks_with(model, adapter, part)
        assert found, f"{family}: {part}={path!r} resolves in no block"
        if part in BASE_PARTS:
            assert base_model(model).get_submodule(path) is not None
    # the parts every pipeline needs, in every block
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
    paths = {f.name for f in dataclasses.fields(Adapter) if f.type in ("str", "str | None")}
    paths -= {"model_type", "qkv_layout"}
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
    ("auto", "no dim dominates the first token"),  # random weights: no episode, so no writers to ablate
])
def test_ablating_a_neuron_that_is_not_there_is_refused_with_the_reason(neurons, message):
    from sinkscope.intervene import InterveneConfig, intervene

    with pytest.raises(sinkscope.SinkscopeError, match=message):
        intervene(tiny_model("qwen3_moe"), "ablate", InterveneConfig(neurons=neurons),
                  data=torch.randint(3, 96, (2, 12)).tolist())


def test_a_multimodal_wrapper_is_probed_through_its_text_decoder_with_the_same_numbers():
    """gemma3 (with a vision tower) gives exactly what its text decoder alone gives, and stays untouched."""
    from transformers import Gemma3ForCausalLM

    full = tiny_model("gemma3")
    text_only = Gemma3ForCausalLM(full.config.text_config).eval()
    text_only.model.load_state_dict(full.model.language_model.state_dict())
    text_only.lm_head.load_state_dict(full.lm_head.state_dict())
    before = {k: v.clone() for k, v in full.state_dict().items()}
    ids = torch.randint(3, 90, (4, 12), generator=torch.Generator().manual_seed(0))
    kwargs = {"chain": False, "key_importance": True, "batch_size": 3}
    got, want = sinkscope.probe(full, ids, **kwargs), sinkscope.probe(text_only, ids, **kwargs)
    assert got["model"] == want["model"] and got["model"]["model_type"] == "gemma3_text"
    for key in ("sink_score", "importance", "learned_sink_mass", "norm_ratio", "max_abs_activation"):
        assert got[key] == want[key], key
    got_table, want_table = got.tables["key_importance"], want.tables["key_importance"]
    assert got_table.keys() == want_table.keys()
    assert all(np.array_equal(got_table[k], want_table[k], equal_nan=True) for k in want_table)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in before.items())
    assert full.config.text_config._attn_implementation == "sdpa"
