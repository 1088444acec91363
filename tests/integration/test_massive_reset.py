"""Sun et al.'s set-to-zero / set-to-mean intervention, restated from their hook and on a planted model."""

from __future__ import annotations

import pytest
import torch

from sinkscope.fixtures import planted_sink_model
from sinkscope.intervene import InterveneConfig, intervene
from sinkscope.interventions import ResetMassive, applied


def _sun_hook(dims, values_first, values_other):
    """lib/hook.py Intervened_Layer.update for one unpadded sequence: edit the top token (if not 0), then token 0."""
    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.clone()
        top = torch.sort(out.abs().flatten(), descending=True).indices[0].item() // out.shape[2]
        for dim, v0, v1 in zip(dims, values_first, values_other):
            if top != 0:
                out[:, top, dim] = v1
            out[:, 0, dim] = v0
        return (out, *output[1:]) if isinstance(output, tuple) else out
    return hook


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_reset_is_sun_hook(mode):
    model, answer = planted_sink_model()
    ids = torch.tensor(answer.inputs(3, 20))
    first, other = ((0.0,), (0.0,)) if mode == "zero" else ((123.0,), (-45.0,))
    block = model.model.layers[answer.layer]
    for row in range(len(ids)):
        seq = ids[row:row + 1]
        handle = block.register_forward_hook(_sun_hook((answer.dim,), first, other))
        try:
            with torch.no_grad():
                want = model(seq).logits
        finally:
            handle.remove()
        with torch.no_grad(), applied(model, ResetMassive(answer.layer, (answer.dim,), mode, first, other)):
            got = model(seq).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_massive_experiment_on_planted_model():
    model, answer = planted_sink_model()
    payload = intervene(model, "massive", InterveneConfig(), data=answer.inputs(12, 24))
    assert (payload["layer"], payload["dims"]) == (answer.layer, [answer.dim])
    onset = answer.onset_layer
    row = payload["per_layer"][onset]
    assert row["sink_score_original"] > 0.9
    assert row["sink_score_zero"] < 0.5 * row["sink_score_original"]  # the sink needs the massive activation
    assert row["sink_score_mean"] == pytest.approx(row["sink_score_original"], abs=1e-3)  # its mean is enough
    ppl = payload["perplexity"]
    assert set(ppl) == {"original", "zero", "mean"} and all(p["ci"][0] <= p["perplexity"] <= p["ci"][1] for p in ppl.values())
    after = answer.layer + 1  # the observer at the reset block itself sees its output before the edit
    assert payload["max_abs_activation"]["zero"][after] < payload["max_abs_activation"]["original"][after] / 100


@pytest.mark.parametrize(("overrides", "message"), [({"layers": "0,1", "dims": "3"}, "single --layers"),
                                                    ({"layers": "1", "dims": "999"}, "massive dims"),
                                                    ({"layers": "1", "dims": "a"}, "--dims must be")])
def test_bad_targets_are_one_line_errors(overrides, message):
    from sinkscope.errors import SinkscopeError

    model, answer = planted_sink_model()
    with pytest.raises(SinkscopeError, match=message):
        intervene(model, "massive", InterveneConfig(**overrides), data=answer.inputs(2, 16))
