"""The chain on a real pretrained LM, SmolLM2-135M-Instruct (its Q4_1 GGUF, dequantized), against the
hand analysis of issue 25 (plain hooks, an exact decomposition of the first token's dim 507): two
episodes, their writers and erasers, the onset at layer 3, the same verdict on text and random tokens."""

from __future__ import annotations

import os

import pytest
import torch

from sinkscope.config import ProbeConfig, build
from sinkscope.probe import probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_gguf.parent, smollm2_gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _chain(model, tokenizer, **data):
    config = build(ProbeConfig, {"data": {"samples": 32, **data}})
    return probe(model, tokenizer=tokenizer, config=config)


def _names(parts):
    return {(p["layer"], p["index"]) for p in parts if p["kind"] == "neuron"}


STDLIB_TEXT = {"data": os.path.join(os.path.dirname(os.__file__), "argparse.py"), "seq_len": 64}


@pytest.mark.parametrize("data", [{}, STDLIB_TEXT, {"random_tokens": True, "bos": "never"}],
                         ids=["prompts", "stdlib-text", "random-tokens"])
def test_two_episodes_of_dim_507_and_who_wrote_them(smollm2, data):
    result = _chain(*smollm2, **data)
    chain = result["chain"]
    assert result["sink"]["onset_layer"] == 3 and chain["consistent"] and chain["onset_episode"] == 0
    first, second = chain["episodes"][:2]
    assert (first["dim"], first["start"], first["end"]) == (507, 3, 9)
    assert (second["dim"], second["start"]) == (507, 12) and 27 <= second["end"] <= 28
    assert {(2, 90), (2, 430)} <= _names(first["rise"]["writers"])
    assert first["rise"]["explained"] >= 0.8
    assert (9, 200) in _names(first["fall"]["erasers"])
    assert {(11, 1229), (11, 1487)} == _names(second["rise"]["writers"])
    assert (28, 678) in _names(second["fall"]["erasers"])
    track = chain["tracking"]
    assert {10, 11} <= set(track["layers_without"])
    assert track["sink_ratio_with_episode"] > 2 * track["sink_ratio_without_episode"]
    ratio = result["sink"]["ratio"]
    assert max(ratio[10], ratio[11]) < min(ratio[3:10])  # the sink fades where dim 507 is erased


def test_ablating_the_onset_episode_s_writers(smollm2):
    """A partial effect, measured and explained: the writers of the first episode carry most of its rise."""
    from sinkscope.intervene import InterveneConfig, intervene

    model, tokenizer = smollm2
    config = build(InterveneConfig, {"data": {"samples": 16}})
    result = intervene(model, "ablate", config, tokenizer=tokenizer)
    episode = result["episode"]
    assert (episode["index"], episode["dim"], episode["inputs"]) == (0, 507, [3, 9])
    assert {(2, 90), (2, 430)} <= {tuple(n) for n in result["neurons"]}
    assert episode["ablated_share"] >= 0.8 and episode["dom_ratio_after"] < episode["dom_ratio_before"] / 2
    assert episode["sink_score_after"] < episode["sink_score_before"]
    layers_12_on = [row for row in result["per_layer"] if row["layer"] >= 12]  # episode 1 was not touched
    assert sum(r["sink_score_after"] for r in layers_12_on) > 0.8 * sum(r["sink_score_before"] for r in layers_12_on)
