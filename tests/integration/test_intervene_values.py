"""isolate's and amplify's numbers (intervene.json) against eager attention on hand-edited models.

The reference runs each sequence alone (no padding) through an eager copy of the model whose edit is
written out here: for isolate, an attention function whose mask lets query p see only itself; for
amplify, a pre-hook on o_proj that sets o_p to mu + lambda (o_p - mu) (or lambda o_p, the control), with
mu the mean v_proj output over the same random tokens. From the eager weights it computes, per layer
and head, the attention key p gets from the queries strictly after it (pooled over sequences, then
averaged over heads: ``score_after``), each sequence's head-mean of it (``per_sequence_after``), their
mean and normal 95 % interval in numpy (``mean_with_ci``), and the decisions read off them:
``max_gain``/``max_gain_layer``, ``monotone`` and ``control_differs``. sinkscope runs on padded batches
(left padding, batches of 3), so a position counted from the wrong token would show.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers
from scipy.stats import norm
from transformers import AttentionInterface

from sinkscope.config import build
from sinkscope.data import embedded_prompts
from sinkscope.intervene import InterveneConfig, intervene
from sinkscope.loading import load_model
from sinkscope.testing import tiny_model

from conftest import require_embedded as embedded

POSITION = 5
LENGTHS = (16, 12, 14, 9, 16, 11, 13, 16)
VOCAB = 80
Z = norm.ppf(0.975)


def tiny_llama(seed: int = 0, implementation: str = "eager"):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=implementation).eval()


def _sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def _config(**values) -> InterveneConfig:
    return build(InterveneConfig, {"position": POSITION, "data": {"batch_size": 3, "padding_side": "left"}, **values})


_WEIGHTS: list[torch.Tensor] = []


def _isolated_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention in float64, written out, with query POSITION allowed to see only itself."""
    n_rep = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(n_rep, dim=1)
    v = value.double().repeat_interleave(n_rep, dim=1)
    T = query.shape[2]
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    allowed[POSITION] = False
    allowed[POSITION, POSITION] = True
    weights = torch.softmax((query.double() @ k.transpose(-1, -2) * scaling).masked_fill(~allowed, -math.inf), -1)
    _WEIGHTS.append(weights)
    return (weights @ v).to(query.dtype).transpose(1, 2).contiguous(), weights.to(query.dtype)


AttentionInterface.register("hand_isolated", _isolated_attention)


def _eager_weights(model, seq: list[int], isolated: bool = False) -> list[torch.Tensor]:
    """Per layer, (H, T, T) float64 attention weights of one unpadded sequence."""
    ids = torch.tensor([seq])
    with torch.no_grad():
        if isolated:
            _WEIGHTS.clear()
            model(ids)
            return [w[0] for w in _WEIGHTS]
        return [a[0].double() for a in model(ids, output_attentions=True).attentions]


def _after(weights: list[list[torch.Tensor]], key: int, isolated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """From per-sequence, per-layer weights: (L,) pooled head-mean score of ``key`` from the queries after
    it that may see it (an isolated query sees only itself), and (N, L) each sequence's head-mean of it."""
    L = len(weights[0])
    H = weights[0][0].shape[0]
    total, count = np.zeros((L, H)), np.zeros(L)
    per_sequence = np.zeros((len(weights), L))
    for n, layers in enumerate(weights):
        for layer, w in enumerate(layers):
            queries = [t for t in range(key + 1, w.shape[1]) if not (isolated and t == POSITION)]
            column = w[:, queries, key].numpy()  # (H, queries after key)
            total[layer] += column.sum(1)
            count[layer] += column.shape[1]
            per_sequence[n, layer] = column.sum(1).mean() / column.shape[1]
    return (total / count[:, None]).mean(1), per_sequence


def _ci(values: np.ndarray) -> list[float]:
    half = Z * values.std(ddof=1) / math.sqrt(len(values))
    return [values.mean() - half, values.mean() + half]


def test_isolate_scores_and_gain_match_a_hand_masked_eager_model():
    model = tiny_llama()
    sequences = _sequences()
    result = intervene(model, "isolate", _config(), data=sequences)
    hand = tiny_llama(implementation="hand_isolated")
    before = [_eager_weights(model, s) for s in sequences]
    after = [_eager_weights(hand, s, isolated=True) for s in sequences]
    target_b, _ = _after(before, POSITION)
    target_a, _ = _after(after, POSITION)
    first_b, _ = _after(before, 0)
    first_a, _ = _after(after, 0, isolated=True)
    rows = result["per_layer"]
    for key, want in (("sink_score_before", target_b), ("sink_score_after", target_a),
                      ("original_sink_before", first_b), ("original_sink_after", first_a)):
        np.testing.assert_allclose([row[key] for row in rows], want, rtol=1e-5, atol=1e-6, err_msg=key)
    gains = target_a / target_b
    assert result["max_gain_layer"] == int(np.argmax(gains))
    assert result["max_gain"] == pytest.approx(gains.max(), rel=1e-5)
    assert not np.allclose(target_a, target_b, rtol=1e-3)  # the edit moved the scores


def _value_mean(model, config: InterveneConfig, max_len: int) -> torch.Tensor:
    """(L, H*D) mean v_proj output over the random tokens intervene draws, expanded to query heads by hand."""
    cfg = model.config
    length = min(max_len, 64)
    g = torch.Generator().manual_seed(config.data.seed + 1)
    seqs = torch.randint(0, cfg.vocab_size, (max(1, config.value_mean_tokens // length), length), generator=g)
    outputs: dict[int, list] = {}
    handles = [layer.self_attn.v_proj.register_forward_hook(lambda m, a, o, i=i: outputs.setdefault(i, []).append(o))
               for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(seqs)
    for h in handles:
        h.remove()
    D = cfg.head_dim
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    return torch.stack([torch.cat(outputs[i]).reshape(-1, cfg.num_key_value_heads, D).mean(0)
                        .repeat_interleave(rep, dim=0).reshape(-1) for i in sorted(outputs)])


def _amplified_weights(model, seq, p: int, lam: float, layers, mu: torch.Tensor | None) -> list[torch.Tensor]:
    def edit(layer):
        def pre_hook(module, args):
            x = args[0].clone()
            x[:, p] = x[:, p] * lam if mu is None else mu[layer] + lam * (x[:, p] - mu[layer])
            return (x,)
        return pre_hook

    handles = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(edit(i)) for i in layers]
    try:
        return _eager_weights(model, seq)
    finally:
        for h in handles:
            h.remove()


def _random_llama():
    """sinkscope's tiny llama (peaked attention), three layers, with its usual random sequences."""
    return tiny_model("llama", attn_implementation="eager", num_hidden_layers=3), _sequences(seed=1), 5, (0, 1), 2


def _organism():
    """organism-softmax, where amplification creates a sink and the norm control does not (method.md 5 (ii))."""
    loaded = load_model(embedded("organism-softmax"))
    model = loaded.model.float()
    model.set_attn_implementation("eager")
    rows = [loaded.tokenizer(d["text"])["input_ids"] for d in embedded_prompts()]
    rows = [r[:64 - 5 * (i % 4)] for i, r in enumerate(rows)]  # 20 prompts, cut to 64, 59, 54, 49 tokens
    return model, rows, 9, (0, 1, 2), 3


@pytest.mark.parametrize(("setup", "lambdas", "differs"), [
    (_random_llama, (1.0, 4.0, 12.0), False),  # a random model: amplified and control move alike
    (_random_llama, (1.0, 1.0), False),  # lambda 1: both edits are the identity
    (_organism, (1.0, 30.0), True),  # a trained model: the amplified score clears the control's interval
])
def test_amplify_scores_intervals_and_decisions_match_a_hand_edited_eager_model(setup, lambdas, differs):
    model, sequences, p, layers, observe = setup()
    config = build(InterveneConfig, {"position": p, "data": {"batch_size": 3, "padding_side": "left"},
                                     "lambdas": lambdas, "layers": ",".join(map(str, layers)), "observe": observe,
                                     "value_mean_tokens": 512})
    result = intervene(model, "amplify", config, data=sequences)
    mu = _value_mean(model, config, max(map(len, sequences)))
    want = {"amplify": [], "control": []}
    for lam in lambdas:
        for name, mean in (("amplify", mu), ("control", None)):
            weights = [_amplified_weights(model, s, p, lam, layers, mean) for s in sequences]
            pooled, per_sequence = _after(weights, p)
            want[name].append((pooled[observe], _ci(per_sequence[:, observe])))
    for name, score_key in (("amplify", "sink_score"), ("control", "control_sink_score")):
        np.testing.assert_allclose(result[score_key], [s for s, _ in want[name]], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result[f"{score_key}_ci"], [ci for _, ci in want[name]], rtol=1e-5, atol=1e-7)
    cis = [ci for _, ci in want["amplify"]]  # monotone: no later interval wholly below an earlier one
    assert result["monotone"] == all(cis[j][1] >= cis[i][0] for i in range(len(cis)) for j in range(i + 1, len(cis)))
    assert result["gain"] == pytest.approx(want["amplify"][-1][0] / want["amplify"][0][0], rel=1e-5)
    assert result["control_differs"] is bool(want["amplify"][-1][1][0] > want["control"][-1][1][1])
    assert result["control_differs"] is differs  # each side of the rule is exercised by one case


def test_ablate_perplexity_on_padded_batches_matches_cross_entropy_per_sequence():
    """perplexity_before/after with its CI: each sequence alone through the plain (or column-zeroed) model,
    torch's cross-entropy, and the normal interval on per-sequence mean NLL in numpy."""
    import copy

    model = tiny_llama(seed=2)
    sequences = _sequences(seed=2)
    layer, neuron = 1, 7
    result = intervene(model, "ablate", _config(neurons=f"{layer}:{neuron}"), data=sequences)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.model.layers[layer].mlp.down_proj.weight[:, neuron] = 0
    for key, reference in (("perplexity_before", model), ("perplexity_after", zeroed)):
        rows = []
        for seq in sequences:
            ids = torch.tensor(seq)
            with torch.no_grad():
                logits = reference(ids[None]).logits[0].double()
            rows.append((float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")), len(seq) - 1))
        rows = np.array(rows)
        total = rows[:, 0].sum() / rows[:, 1].sum()
        half = Z * (rows[:, 0] / rows[:, 1]).std(ddof=1) / math.sqrt(len(rows))
        assert result[key]["perplexity"] == pytest.approx(math.exp(total), rel=1e-5)
        assert result[key]["ci"] == pytest.approx([math.exp(total - half), math.exp(total + half)], rel=1e-5)
    assert result["perplexity_after"]["perplexity"] != pytest.approx(result["perplexity_before"]["perplexity"])
