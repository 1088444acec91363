"""The embedded organism checkpoints: loadable offline, with tokenizer and card, and the sink they were published with."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import sinkscope
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


def test_softmax_organism_sinks_and_headnorm_twin_sinks_less(heldout):
    scores, dom = {}, {}
    for name in NAMES:
        result = sinkscope.probe(name, heldout, seq_len=64, chain=False)
        scores[name] = max(result["layer_sink_score"])
        dom[name] = result["sink_dom_ratio"]
        card = json.loads((embedded_path(name) / "sinkscope.json").read_text())
        assert scores[name] == pytest.approx(card["sink score"]["max_layer"], abs=0.08)
    # measured here: 0.56 (layer 3) against 0.23; the first token's DomRatio 55-59 against 29.5-34
    assert scores["organism-softmax"] > 0.5  # the organism's target: a head-mean sink above 0.5 in some layer
    assert scores["organism-softmax"] > scores["organism-headnorm"] + 0.15
    assert max(dom["organism-headnorm"]) < 0.75 * min(dom["organism-softmax"])
