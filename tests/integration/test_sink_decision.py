"""The sink decision (probe.json's ``sink`` section) against eager attention, computed independently.

The reference runs a twin of the model with ``attn_implementation="eager"`` and ``output_attentions=True``
on the same padded batches, derives which keys each query sees from first principles (causal or
bidirectional, sliding window, padding; checked against eager's zeros), and then computes in float64,
one sequence at a time: the head-mean attention the first real token gets from the queries that see it
and at least one other key, the score uniform attention would give it over those same queries
(1 / keys visible), their ratio, the ratio's mean and normal interval over sequences (scipy's quantile),
the mean uniform baseline, the excess of the pooled score over it, and the presence rule
(lower bound >= ``sink_ratio_min``). The onset layer is not checked here (its rule is being rebuilt).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import norm
from test_capture_parity import visible_keys  # the one first-principles mask of the parity tests

import sinkscope
from sinkscope.criteria import Criteria
from sinkscope.fixtures import planted_sink_model
from sinkscope.testing import ENCODERS, tiny_model, twin

LENGTHS = (16, 11, 14, 7, 12, 9, 16, 5)  # batches of 3: padding in every batch, a short sequence in the window
BATCH = 3
TOL = 1e-5


def _sequences(seed: int = 0, lengths=LENGTHS, vocab: int = 96) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _pad(chunk: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, chunk))
    ids = torch.zeros(len(chunk), width, dtype=torch.long)
    mask = torch.zeros(len(chunk), width, dtype=torch.long)
    for row, seq in enumerate(chunk):
        start = 0 if side == "right" else width - len(seq)
        ids[row, start:start + len(seq)] = torch.tensor(seq)
        mask[row, start:start + len(seq)] = 1
    return ids, mask


def reference_sink(model, sequences, padding_side: str, batch_size: int = BATCH, confidence: float = 0.95) -> dict:
    """Per layer: ratio mean, CI, uniform baseline, pooled head-mean score and excess, all in float64."""
    eager = twin(model, "eager")
    config, causal = model.config, model.config.model_type not in ENCODERS
    L, H = config.num_hidden_layers, config.num_attention_heads
    ratios = [[] for _ in range(L)]
    uniforms = [[] for _ in range(L)]
    pooled = np.zeros((L, H))
    pooled_count = np.zeros(L)
    for start in range(0, len(sequences), batch_size):
        ids, mask = _pad(sequences[start:start + batch_size], padding_side)
        with torch.no_grad():
            out = eager(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                        output_attentions=True)
        valid = mask.bool()
        for layer, attn in enumerate(out.attentions):
            vis = visible_keys(config, layer, mask, causal)  # (B, T, S)
            rows = valid[:, None, :, None]
            assert torch.equal((attn > 0) & rows, vis[:, None].expand_as(attn) & rows), "visibility rule disagrees"
            A = attn.double().numpy()
            for b in range(A.shape[0]):
                f = int(valid[b].long().argmax())
                scored = [t for t in range(A.shape[2])
                          if valid[b, t] and vis[b, t, f] and int(vis[b, t].sum()) > 1]
                if not scored:
                    continue
                per_head = np.array([[A[b, h, t, f] for t in scored] for h in range(H)])  # (H, Q)
                uniform = float(np.mean([1.0 / int(vis[b, t].sum()) for t in scored]))
                ratios[layer].append(per_head.mean(1).mean() / uniform)
                uniforms[layer].append(uniform)
                pooled[layer] += per_head.sum(1)
                pooled_count[layer] += len(scored)
    z = norm.ppf(0.5 + confidence / 2)
    r = [np.array(x) for x in ratios]
    mean = np.array([x.mean() for x in r])
    half = np.array([z * x.std(ddof=1) / math.sqrt(len(x)) for x in r])
    layer_score = (pooled / pooled_count[:, None]).mean(1)
    uniform = np.array([np.mean(u) for u in uniforms])
    return {"ratio": mean, "low": mean - half, "high": mean + half, "uniform": uniform,
            "layer_score": layer_score, "excess": layer_score - uniform, "sequences": max(len(x) for x in r)}


def _assert_sink_section(sink: dict, layer_score: list, ref: dict, ratio_min: float) -> None:
    np.testing.assert_allclose(sink["ratio"], ref["ratio"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose([lo for lo, _ in sink["ratio_ci"]], ref["low"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose([hi for _, hi in sink["ratio_ci"]], ref["high"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(sink["uniform_baseline"], ref["uniform"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer_score, ref["layer_score"], atol=TOL)
    np.testing.assert_allclose(sink["excess"], ref["excess"], atol=TOL)
    assert sink["sequences"] == ref["sequences"]
    assert sink["present_by_layer"] == [bool(lo >= ratio_min) for lo in ref["low"]]
    assert sink["present"] == any(lo >= ratio_min for lo in ref["low"])
    peak = int(np.argmax(ref["ratio"]))
    assert sink["peak_layer"] == peak
    # the sentence a researcher quotes carries the reference's numbers, to the digits it prints
    if sink["present"]:  # "peaks at layer K with Rx ... (95 % CI L-H over N sequences" or, in the onset rewrite's
        # wording, "strongest at layer K (Rx uniform (95 % CI L-H)), over N sequences"
        pattern, digits = r"at layer (\d+) (?:with |\()([\d.]+)x .*?95 % CI ([\d.]+)-([\d.]+)\)?\)?,? over (\d+) seq", 1
    else:
        pattern, digits = r"\(highest: layer (\d+), ([\d.]+)x uniform, 95 % CI ([\d.]+)-([\d.]+)\)", 2
    quoted = re.search(pattern, sink["verdict"])
    assert quoted is not None, sink["verdict"]
    assert int(quoted[1]) == peak
    numbers = [float(quoted[i]) for i in (2, 3, 4)]
    want = [ref["ratio"][peak], ref["low"][peak], ref["high"][peak]]
    assert numbers == pytest.approx(want, abs=0.5 * 10 ** -digits + TOL)
    if sink["present"]:
        assert int(quoted[5]) == ref["sequences"]


# mistral: a window on every layer; gemma2: soft-capped logits, window and full; gemma3_text: window, full,
# window; bert: every query sees every key
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "gemma3_text", "bert"])
def test_sink_section_matches_eager_attention(family, padding_side):
    model = tiny_model(family)
    sequences = _sequences()
    result = sinkscope.probe(model, sequences, chain=False, batch_size=BATCH, padding_side=padding_side,
                             sink_positions=(0,))
    ref = reference_sink(model, sequences, padding_side)
    _assert_sink_section(result["sink"], result["layer_sink_score"], ref, Criteria.sink_ratio_min)


def test_the_cases_really_differ_from_a_causal_unpadded_baseline():
    """Under a window only the queries within it see the first token, so only they count (and their uniform
    share is the causal one); under bidirectional attention every query counts with 1 / T. Either way the
    baseline is far from the causal T-token value, so scoring the wrong queries or dividing by the causal
    counts could not pass the test above."""
    causal = float(np.mean([1 / (t + 1) for t in range(1, 16)]))
    windowed = reference_sink(tiny_model("mistral"), _sequences(lengths=(16, 16)), "right")
    bidirectional = reference_sink(tiny_model("bert"), _sequences(lengths=(16, 16)), "right")
    window = tiny_model("mistral").config.sliding_window
    assert windowed["uniform"][0] == pytest.approx(np.mean([1 / (t + 1) for t in range(1, window)]))
    assert bidirectional["uniform"][0] == pytest.approx(1 / 16)
    for case in (windowed, bidirectional):
        assert abs(case["uniform"][0] - causal) > 0.5 * causal


@pytest.mark.parametrize("family", ["mistral", "bert"])
def test_presence_on_both_sides_of_the_ratio_bound_on_real_outputs(family):
    """``sink_ratio_min`` set just under, then just over, the reference's highest lower bound: the layer that
    holds it flips from sink to no sink, and no other layer does."""
    model = tiny_model(family)
    sequences = _sequences(seed=3)
    ref = reference_sink(model, sequences, "left")
    top = int(np.argmax(ref["low"]))
    for scale, present in ((1 - 1e-4, True), (1 + 1e-4, False)):
        ratio_min = float(ref["low"][top]) * scale
        result = sinkscope.probe(model, sequences, chain=False, batch_size=BATCH, padding_side="left",
                                 sink_positions=(0,), sink_ratio_min=ratio_min)
        sink = result["sink"]
        assert sink["present_by_layer"][top] is present
        assert sink["present"] is present
        assert sink["ratio_min"] == ratio_min
        assert sink["verdict"].startswith("Attention sink" if present else "No attention sink")


def test_a_planted_sink_is_present_with_the_default_rule_and_its_numbers_match_eager():
    model, answer = planted_sink_model(layer=1, neuron=5, dim=3)
    sequences = answer.inputs(8, 24)
    sequences = [s[:n] for s, n in zip(sequences, (24, 20, 24, 17, 22, 24, 19, 24))]  # padded batches
    result = sinkscope.probe(model, sequences, chain=False, batch_size=4, padding_side="left")
    ref = reference_sink(model, sequences, "left", batch_size=4)
    _assert_sink_section(result["sink"], result["layer_sink_score"], ref, Criteria.sink_ratio_min)
    assert ref["low"][answer.onset_layer] > 3 * Criteria.sink_ratio_min  # far above the bound: a real sink
    assert not ref["low"][0] >= Criteria.sink_ratio_min  # and none before the planted neuron writes its dim
    assert result["sink"]["present"]
