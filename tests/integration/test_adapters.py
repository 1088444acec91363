"""Every adapter matches its family: each declared module path resolves on a tiny model of that family,
every adapter field is read by some pipeline, and attention arguments the capture does not implement
are refused, never dropped."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path

import pytest
import torch

import sinkscope
from sinkscope.adapters import Adapter, adapter_for, base_model, blocks, supported_model_types
from sinkscope.adapters.coverage import BASE_PARTS, PATH_FIELDS, blocks_with, declared_paths
from sinkscope.testing import FAMILIES, tiny_model, tiny_sinkscope_config
from sinkscope.train import model as own_model

SRC = Path(sinkscope.__file__).parent


def _own(variant: str = "softmax"):
    torch.manual_seed(0)
    return own_model.SinkscopeForCausalLM(tiny_sinkscope_config(variant)).eval()


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


@pytest.mark.parametrize("variant", ["softmax", "softmax1", "sink_logit", "sigmoid"])
def test_sinkscope_variants_report_the_learned_sink_mass(variant, monkeypatch):
    model = _own(variant)
    if variant == "sink_logit":  # trained logits are not all zero; make them differ per head
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sink_logit.copy_(torch.tensor([1.5, -0.5, 0.0, 3.0]))
    brute: dict[int, list[torch.Tensor]] = {}
    own = own_model.exact_attention

    def recording(module, query, key, value, attention_mask, scaling, dropout=0.0, sink_logit=None, **kwargs):
        if sink_logit is not None:  # float64: softmax over the real keys and one sink column, minus the real weights
            T = query.shape[2]
            k = key.double().repeat_interleave(query.shape[1] // key.shape[1], 1)
            logits = (query.double() @ k.transpose(-1, -2) * scaling).masked_fill(
                ~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
            column = sink_logit.double().view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
            weights = torch.softmax(torch.cat([logits, column], -1), -1)[..., :-1]
            brute.setdefault(module.layer_idx, []).append((1 - weights.sum(-1)).mean((0, 2)))
        return own(module, query, key, value, attention_mask, scaling, dropout, sink_logit=sink_logit, **kwargs)

    monkeypatch.setattr(own_model, "exact_attention", recording)
    ids = torch.randint(0, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids)  # the model's own attention: the brute force
    result = sinkscope.probe(model, ids, chain=False, batch_size=3)
    mass = torch.tensor(result["learned_sink_mass"], dtype=torch.float64)
    assert mass.shape == (2, 4)
    assert result["model"]["learned_sink"] == (variant in ("softmax1", "sink_logit"))
    if variant in ("softmax", "sigmoid"):
        assert not brute and bool((mass == 0).all())
        return
    want = torch.stack([brute[layer][0] for layer in range(2)])
    torch.testing.assert_close(mass, want, atol=1e-6, rtol=0)
    assert bool((mass > 0.01).all())
