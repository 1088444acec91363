"""Learned sinks are first-class: gpt-oss's ``s_aux`` and sinkscope's own softmax1 / sink_logit variants
report the share of attention their sink logit takes (``learned_sink_mass``), checked against float64
brute force, and the verdict and the report set it beside the first-token sink.

(The full-statistics parity of gpt-oss against its own eager attention is in test_capture_parity.py.)
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import sinkscope
from sinkscope.report import build_report
from sinkscope.testing import tiny_model, tiny_sinkscope_config
from sinkscope.train import model as own_model

from test_capture_parity import brute_force


def _own(variant: str):
    torch.manual_seed(0)
    return own_model.SinkscopeForCausalLM(tiny_sinkscope_config(variant)).eval()


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


def test_the_verdict_and_the_report_show_the_learned_sink_beside_the_first_token(tmp_path):
    """The verdict's numbers from float64 brute force on eager gpt-oss (test_capture_parity.brute_force: the
    sink logit as an extra column with no value), not from the result it describes."""
    model = tiny_model("gpt_oss")
    sequences = torch.randint(3, 96, (4, 12)).tolist()
    result = sinkscope.probe(model, sequences, batch_size=4, out=tmp_path / "gpt-oss" / "probe")
    verdict = result["learned_sink_verdict"]
    ref, _ = brute_force(model, sequences, "right", keys=(0,))
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    mass = torch.tensor([[ref.mean("learned_sink")[(layer, h)] for h in range(H)] for layer in range(L)])
    first = torch.tensor([[ref.mean("score")[(layer, h, 0)] for h in range(H)] for layer in range(L)])
    quoted = re.search(r"on average ([\d.]+)% of their attention to their learned sink logit \(most: layer (\d+) "
                       r"head (\d+), ([\d.]+)%\) and ([\d.]+)% to the first token; (\d+) of (\d+) heads give", verdict)
    assert quoted is not None, verdict
    percents = [float(quoted[i]) for i in (1, 4, 5)]  # printed to one decimal: compare to half a unit of it
    want = [100 * float(mass.mean()), 100 * float(mass.max()), 100 * float(first.mean())]
    assert percents == pytest.approx(want, abs=0.05 + 1e-4)
    assert (int(quoted[2]), int(quoted[3])) == divmod(int(mass.argmax()), H)
    assert (int(quoted[6]), int(quoted[7])) == (int((mass > first).sum()), mass.numel())
    assert "chain_skipped" not in result.payload and "episodes" in result["chain"]
    page = build_report([tmp_path / "gpt-oss"], tmp_path / "report.html")
    text = (tmp_path / "report.html").read_text()
    assert "learned sink share (%)" in text and verdict.split(";")[0] in text
    assert any(f.startswith("learned-sink--") for f in page.figures)
    svg = next((tmp_path / "report_figures").glob("learned-sink--*.svg")).read_text()
    assert 'id="first-token-sink' in svg and 'id="learned-sink' in svg


def test_a_model_without_a_learned_sink_gets_no_learned_sink_figure(tmp_path):
    result = sinkscope.probe(tiny_model("llama"), torch.randint(3, 96, (2, 12)), chain=False,
                             out=tmp_path / "llama" / "probe")
    assert result["learned_sink_verdict"] is None and not result["model"]["learned_sink"]
    page = build_report([tmp_path / "llama"], tmp_path / "report.html")
    assert not any(f.startswith("learned-sink") for f in page.figures)
    assert "learned sink share" not in (tmp_path / "report.html").read_text()


def test_the_sink_verdict_ends_with_the_learned_sink_sentence():
    result = sinkscope.probe(_own("softmax1"), torch.randint(0, 60, (4, 12)), batch_size=4)
    assert result["sink"]["verdict"].endswith(" " + result["learned_sink_verdict"])
    assert result["learned_sink_verdict"] in result["chain"]["verdict"]  # the chain verdict opens with the sink's
    assert result["learned_sink_verdict"].startswith("Learned sink: heads send on average")
