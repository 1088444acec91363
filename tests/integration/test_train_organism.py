"""The embedded organism checkpoints: loadable offline, with tokenizer and card, and the sink they were published with."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AttentionInterface, AutoTokenizer

import sinkscope
from sinkscope.loading import load_model
from sinkscope.models import embedded_models, embedded_path
from sinkscope.train.data import split_documents, stdlib_documents

NAMES = ("organism-softmax", "organism-headnorm")


@pytest.fixture(scope="module")
def heldout():
    _, val = split_documents(stdlib_documents(), 50)  # the organism runs' own validation documents
    return [val[i][:4000] for i in range(1, len(val), max(1, len(val) // 24))]


@pytest.mark.parametrize("name", NAMES)
def test_embedded_organism_loads_with_tokenizer_and_card(name):
    folder = embedded_path(name)
    assert folder is not None, f"{name} is missing from src/sinkscope/assets/models"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("import os")["input_ids"][0] == tokenizer.bos_token_id
    card = json.loads((folder / "sinkscope.json").read_text())
    assert card["variant"] == name.split("-")[1]
    assert "sinkscope train --config configs/organism.yaml" in card["command"]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 8_000_000
    assert name in {m["name"] for m in embedded_models()}


_PROBS: list[torch.Tensor] = []


def _float64_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal softmax attention in float64 (one unpadded sequence), recording its weights (H, T, T)."""
    n_rep = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(n_rep, dim=1)
    v = value.double().repeat_interleave(n_rep, dim=1)
    T = query.shape[2]
    logits = (query.double() @ k.transpose(-1, -2) * scaling).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    probs = torch.softmax(logits, -1)
    _PROBS.append(probs[0])
    return (probs @ v).to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register("organism_float64", _float64_attention)


def _layer_sink_score(model, sequences: list[list[int]]) -> list[float]:
    """Per layer: attention to the first token from every later query, pooled per head over sequences, head mean."""
    model = copy.deepcopy(model)
    model.config._attn_implementation_internal = "organism_float64"  # read by the llama and sinkscope layers
    total, count = 0.0, 0
    for seq in sequences:
        _PROBS.clear()
        with torch.no_grad():
            model(torch.tensor([seq]))
        total = total + torch.stack([p[:, 1:, 0].sum(1) for p in _PROBS])  # (L, H)
        count += len(seq) - 1
    assert len(_PROBS) == model.config.num_hidden_layers  # every layer went through the reference
    return (total / count).mean(1).tolist()


def test_softmax_organism_sinks_and_headnorm_twin_sinks_less(heldout):
    scores, dom = {}, {}
    for name in NAMES:
        loaded = load_model(name)
        ids = [loaded.tokenizer(text)["input_ids"][:64] for text in heldout]
        result = sinkscope.probe(loaded.model, ids, tokenizer=loaded.tokenizer, chain=False)
        assert result["layer_sink_score"] == pytest.approx(_layer_sink_score(loaded.model, ids), abs=1e-5)
        scores[name] = max(result["layer_sink_score"])
        dom[name] = result["sink_dom_ratio"]
    # measured here: 0.56 (layer 3) against 0.23; the first token's DomRatio 55-59 against 29.5-34
    assert scores["organism-softmax"] > 0.5  # the organism's target: a head-mean sink above 0.5 in some layer
    assert scores["organism-softmax"] > scores["organism-headnorm"] + 0.15
    assert max(dom["organism-headnorm"]) < 0.75 * min(dom["organism-softmax"])
