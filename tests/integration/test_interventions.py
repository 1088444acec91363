"""Interventions are exact (against hand-applied edits on an eager model) and leave no trace."""

import pytest
import torch
import transformers
from transformers import AttentionInterface

from sinkscope.cli import main
from sinkscope.config import build
from sinkscope.interventions import AblateNeurons, Amplify, Isolate, applied
from sinkscope.intervene import InterveneConfig, _Experiment, intervene, value_mean
from sinkscope.loading import prepare_model
from sinkscope.results import SCHEMA_VERSION

POSITION = 5


def tiny_llama(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                                   num_attention_heads=6, num_key_value_heads=2, vocab_size=80,
                                   max_position_embeddings=128)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def _brute_isolated_attention(position, layers):
    """Eager attention written out by hand, with query ``position`` allowed to see only itself."""
    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        n_rep = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
        T = query.shape[2]
        logits = query @ key.transpose(-1, -2) * scaling
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        if module.layer_idx in layers:
            allowed[position] = False
            allowed[position, position] = True
        weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        return (weights @ value).transpose(1, 2), weights
    return attend


def test_isolate_matches_hand_edited_eager_model():
    model = tiny_llama()
    ids = torch.randint(0, 80, (3, 16))
    layers = {0, 2}
    AttentionInterface.register("brute_isolate", _brute_isolated_attention(POSITION, layers))
    reference = tiny_llama()
    reference.set_attn_implementation("brute_isolate")
    expected = reference(ids).logits
    with applied(model, Isolate(position=POSITION, layers=tuple(sorted(layers)))):
        got = model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - model(ids).logits).abs().max() > 1e-3  # the edit did something


def test_isolate_respects_left_padding():
    model = tiny_llama()
    ids = torch.randint(1, 80, (2, 12))
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 12, dtype=torch.long)], dim=1)
    with applied(model, Isolate(position=POSITION)):
        plain = model(ids).logits
    with applied(model, Isolate(position=POSITION), attention_mask=mask):
        shifted = model(padded, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, 3:]
    torch.testing.assert_close(shifted, plain, atol=1e-5, rtol=1e-5)


def test_amplify_matches_hand_applied_edit_and_value_mean_matches_v_proj():
    model = tiny_llama()
    config = build(InterveneConfig, {"data": {"random_tokens": True, "samples": 4, "seq_len": 16},
                                     "value_mean_tokens": 512})
    exp = _Experiment(prepare_model(model, None, config.load), config, progress=False)
    mu = value_mean(exp)  # (L, H*D) from the captured, GQA-expanded values
    # independent estimate: v_proj outputs on the same random tokens, expanded by hand
    generator = torch.Generator().manual_seed(config.data.seed + 1)
    seqs = torch.randint(0, 80, (512 // 16, 16), generator=generator)
    outputs = {}
    handles = [layer.self_attn.v_proj.register_forward_hook(
        lambda m, a, o, i=i: outputs.setdefault(i, []).append(o)) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for start in range(0, len(seqs), 8):
            model(seqs[start:start + 8])
    for h in handles:
        h.remove()
    for layer in range(3):
        v = torch.cat(outputs[layer]).reshape(-1, 2, 8).mean(0)  # (Hkv, D)
        torch.testing.assert_close(mu[layer], v.repeat_interleave(3, dim=0).reshape(-1), atol=1e-5, rtol=1e-4)
    # the edit itself, applied by hand on the o_proj input
    ids = torch.randint(0, 80, (2, 16))
    lam = 7.0

    def by_hand(layer):
        def pre_hook(module, args):
            x = args[0].clone()
            x[:, POSITION] = mu[layer] + lam * (x[:, POSITION] - mu[layer])
            return (x,)
        return pre_hook

    handles = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(by_hand(i)) for i in (0, 1)]
    expected = model(ids).logits
    for h in handles:
        h.remove()
    with applied(model, Amplify(position=POSITION, lam=lam, layers=(0, 1), mean=mu)):
        got = model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_interventions_compose_and_leave_the_model_bit_identical():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    implementation = model.config._attn_implementation
    ids = torch.randint(0, 80, (2, 16))
    reference = model(ids).logits
    mu = torch.zeros(3, 48)
    with applied(model, Isolate(position=POSITION), Amplify(position=POSITION, lam=3.0, layers=(0,), mean=mu),
                 AblateNeurons(neurons=((1, 4),))):
        edited = model(ids).logits
    assert (edited - reference).abs().max() > 1e-3
    assert torch.equal(model(ids).logits, reference)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config._attn_implementation == implementation
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_column_and_activation_ablation_agree():
    model = tiny_llama()
    ids = torch.randint(0, 80, (2, 16))
    neurons = ((0, 3), (2, 17))
    with applied(model, AblateNeurons(neurons=neurons, target="activation")):
        by_activation = model(ids).logits
    with applied(model, AblateNeurons(neurons=neurons, target="column")):
        by_column = model(ids).logits
    torch.testing.assert_close(by_activation, by_column, atol=1e-5, rtol=1e-5)
    assert (by_activation - model(ids).logits).abs().max() > 1e-4


def test_intervene_payload_keys():
    """The keys and shapes of each experiment's payload; its values are checked against hand-edited eager
    models in test_intervene_values.py (isolate, amplify) and test_intervene_fixture.py (ablate)."""
    model = tiny_llama()
    config = build(InterveneConfig, {"data": {"random_tokens": True, "samples": 8, "seq_len": 16}, "position": POSITION})
    iso = intervene(model, "isolate", config)
    assert iso["kind"] == "isolate" and iso["position"] == POSITION and iso["schema_version"] == SCHEMA_VERSION
    assert {"layer", "sink_score_before", "sink_score_after"} <= iso["per_layer"][0].keys()
    config = build(InterveneConfig, {"data": {"random_tokens": True, "samples": 8, "seq_len": 16},
                                     "position": POSITION, "lambdas": (1.0, 4.0), "layers": "0", "observe": 1,
                                     "value_mean_tokens": 256})
    amp = intervene(model, "amplify", config)
    assert amp["lambdas"] == [1.0, 4.0] and len(amp["sink_score"]) == 2 and len(amp["control_sink_score"]) == 2
    assert all(lo <= s <= hi for s, (lo, hi) in zip(amp["sink_score"], amp["sink_score_ci"]))
    assert isinstance(amp["monotone"], bool)
    config = build(InterveneConfig, {"data": {"random_tokens": True, "samples": 8, "seq_len": 16}, "neurons": "1:3"})
    abl = intervene(model, "ablate", config)
    for key in ("dom_ratio_before", "dom_ratio_after", "perplexity_before", "perplexity_after", "per_layer"):
        assert key in abl
    lo, hi = abl["perplexity_before"]["ci"]
    assert lo < abl["perplexity_before"]["perplexity"] < hi


@pytest.mark.parametrize("args, message", [
    (["isolate", "--position", "500"], "--position"),
    (["isolate", "--layers", "0,7"], "layer 7 is out of range"),
    (["amplify", "--lambdas", "1,0"], "positive"),
    (["ablate", "--neurons", "1:5000"], "out of range"),
    (["ablate", "--neurons", "one"], "--neurons"),
])
def test_intervene_cli_errors_are_one_line_with_exit_2(tmp_path, capsys, args, message):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "m")
    capsys.readouterr()  # drop save_pretrained's own progress output
    code = main(["intervene", str(tmp_path / "m"), *args, "--random-tokens", "--samples", "2", "--seq-len", "16"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
