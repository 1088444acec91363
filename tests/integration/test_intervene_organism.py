"""On the embedded organism trained by `sinkscope train`, amplifying a token's variance creates a sink there,
and the norm-only control does not (method.md section 5 (ii))."""

import pytest

from sinkscope.config import build
from sinkscope.intervene import InterveneConfig, intervene
from sinkscope.models import embedded_path

pytestmark = pytest.mark.skipif(embedded_path("organism-softmax") is None, reason="organism checkpoint not embedded")

DATA = {"samples": 32, "seq_len": 64}


def test_amplify_creates_a_sink_at_the_target_and_the_norm_control_does_not():
    config = build(InterveneConfig, {"data": DATA, "position": 9, "lambdas": (1.0, 10.0, 30.0), "layers": "0,1,2",
                                     "observe": 3, "value_mean_tokens": 1024})
    result = intervene("organism-softmax", "amplify", config)
    baseline, amplified = result["sink_score"][0], result["sink_score"][-1]
    control = result["control_sink_score"][-1]
    # measured on the float32 run: 0.0091 -> 0.0267 -> 0.0356 (3.9x), control 0.0149 (1.6x)
    assert amplified >= 3 * baseline and result["monotone"]
    assert control < 3 * baseline
    assert result["control_differs"]


@pytest.mark.xfail(strict=True, reason="measured: 1.0x. The organism's super neuron keys on the BOS token itself "
                   "(a BOS written at position 9 fires it without isolation), so isolating an ordinary token cannot "
                   "recreate the sink; see docs/training.md")
def test_isolate_creates_a_sink_at_the_target():
    config = build(InterveneConfig, {"data": DATA, "position": 9})
    result = intervene("organism-softmax", "isolate", config)
    assert result["max_gain"] >= 3
