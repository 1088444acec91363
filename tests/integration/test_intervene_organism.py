"""On the embedded organisms trained by `sinkscope train` (method.md section 5).

organism-softmax: amplifying a token's variance creates a sink there and the norm-only control does not;
isolation does not, because its super neuron keys on the BOS token (the third test shows it).
organism-nobos, the same model with its first blocks retrained without BOS: its first position is a sink
by structure, so isolating any token recreates the first token's state and a sink."""

from sinkscope.config import build
from sinkscope.intervene import InterveneConfig, intervene

from conftest import require_embedded as embedded


DATA = {"samples": 32, "seq_len": 64}


def test_amplify_creates_a_sink_at_the_target_and_the_norm_control_does_not():
    config = build(InterveneConfig, {"data": DATA, "position": 9, "lambdas": (1.0, 10.0, 30.0), "layers": "0,1,2",
                                     "observe": 3, "value_mean_tokens": 1024})
    result = intervene(embedded("organism-softmax"), "amplify", config)
    baseline, amplified = result["sink_score"][0], result["sink_score"][-1]
    control = result["control_sink_score"][-1]
    # measured on the float32 run: 0.0091 -> 0.0267 -> 0.0356 (3.9x), control 0.0149 (1.6x)
    assert amplified >= 3 * baseline and result["monotone"]
    assert control < 3 * baseline
    assert result["control_differs"]


def test_isolate_creates_a_sink_where_the_first_position_is_a_sink_by_structure():
    config = build(InterveneConfig, {"data": DATA, "position": 9})
    result = intervene(embedded("organism-nobos"), "isolate", config)
    layer = result["max_gain_layer"]
    target = result["per_layer"][layer]
    # measured: 0.029 -> 0.133 at layer 3 (4.6x); token 9's DomRatio 6.9 -> 14.2 at layer 2
    assert target["sink_score_after"] >= 3 * target["sink_score_before"]
    # the chain: the isolated token's DomRatio rises as a first token's does, before the sink layer
    rows = result["per_layer"][:layer]
    assert max(row["dom_ratio_after"] / row["dom_ratio_before"] for row in rows) >= 2


def test_isolate_creates_no_sink_where_the_sink_is_keyed_on_bos():
    config = build(InterveneConfig, {"data": DATA, "position": 9})
    result = intervene(embedded("organism-softmax"), "isolate", config)
    assert result["max_gain"] < 1.5  # measured: 1.0x


def test_the_organisms_first_token_neuron_keys_on_the_bos_token_not_on_isolation():
    """Why isolate fails here (docs/training.md): the neuron that fires on the first token fires on a BOS
    token wherever it stands, and not on an ordinary token that attends only to itself."""
    import torch

    from sinkscope.data import embedded_prompts
    from sinkscope.interventions import Isolate, applied
    from sinkscope.loading import load_model

    loaded = load_model(embedded("organism-softmax"))
    model, tokenizer = loaded.model.float(), loaded.tokenizer
    rows = [tokenizer(d["text"])["input_ids"][:64] for d in embedded_prompts()]
    ids = torch.tensor([r for r in rows if len(r) == 64][:8])
    with_bos = ids.clone()
    with_bos[:, 9] = tokenizer.bos_token_id
    seen = {}
    down = model.model.layers[0].mlp.down_proj
    hook = down.register_forward_pre_hook(lambda module, args: seen.__setitem__("act", args[0].detach()))
    try:
        with torch.no_grad():
            model(ids)
            plain = seen["act"]  # (B, T, F)
            neuron = int(plain[:, 0].mean(0).argmax())
            with applied(model, Isolate(position=9)):
                model(ids)
            isolated = seen["act"][:, 9, neuron]
            model(with_bos)
            moved = seen["act"][:, 9, neuron]
    finally:
        hook.remove()
    first, ordinary = plain[:, 0, neuron], plain[:, 1:, neuron].abs().max()
    assert first.min() > 20 * ordinary  # measured: 58 against 0.53
    assert moved.min() > 0.5 * first.mean()  # a BOS at position 9 fires it (60)
    assert isolated.abs().max() < 2 * ordinary  # isolation alone does not (0.11)
