"""The pretraining model's variants against independent, brute-force computations."""

from __future__ import annotations

import math

import pytest
import torch

from sinkscope.testing import tiny_sinkscope_config
from sinkscope.train.model import (
    VARIANTS,
    build_model,
    exact_attention,
)


def tiny(variant="softmax", **kw):
    return tiny_sinkscope_config(variant, **{"vocab_size": 50, **kw})  # the tests draw ids below 50


def brute_attention(q, k, v, extra_logit=None, sigmoid_bias=None):
    """Full T x T reference: q (B,H,T,D), k/v (B,Hkv,T,D) -> (B,T,H,D)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    T = q.shape[2]
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    if sigmoid_bias is not None:
        w = torch.sigmoid(logits + sigmoid_bias) * causal
        return (w @ v).transpose(1, 2)
    logits = logits.masked_fill(~causal, -math.inf)
    if extra_logit is not None:  # append the virtual key's column, then drop it (its value is zero)
        col = extra_logit.view(1, -1, 1, 1).expand(q.shape[0], -1, T, 1)
        w = torch.softmax(torch.cat([logits, col], -1), -1)[..., :T]
    else:
        w = torch.softmax(logits, -1)
    return (w @ v).transpose(1, 2)


def qkv(B=2, H=4, Hkv=2, T=7, D=8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g),
            torch.randn(B, Hkv, T, D, generator=g))


def test_exact_attention_softmax1_matches_extra_zero_column():
    q, k, v = qkv()
    out, _ = exact_attention(None, q, k, v, None, scaling=8 ** -0.5, sink_logit=torch.zeros(4))
    torch.testing.assert_close(out, brute_attention(q, k, v, extra_logit=torch.zeros(4)), atol=1e-5, rtol=1e-5)


def test_exact_attention_learned_sink_logit_and_plain_softmax():
    q, k, v = qkv()
    s = torch.tensor([-1.0, 0.5, 2.0, 4.0])
    out, _ = exact_attention(None, q, k, v, None, scaling=8 ** -0.5, sink_logit=s)
    torch.testing.assert_close(out, brute_attention(q, k, v, extra_logit=s), atol=1e-5, rtol=1e-5)
    plain, _ = exact_attention(None, q, k, v, None, scaling=8 ** -0.5)
    torch.testing.assert_close(plain, brute_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_exact_attention_sigmoid_is_unnormalised():
    q, k, v = qkv()
    out, _ = exact_attention(None, q, k, v, None, scaling=8 ** -0.5, sigmoid_bias=-math.log(7))
    torch.testing.assert_close(out, brute_attention(q, k, v, sigmoid_bias=-math.log(7)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("qk_norm", [False, True])
def test_every_variant_trains_one_step(variant, qk_norm):
    model = build_model(tiny(variant, qk_norm=qk_norm))
    ids = torch.randint(0, 50, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_captured_attention_path_equals_own_path(variant):
    """sinkscope's registered attention function (what probe captures) gives the same logits."""
    import sinkscope.capture.attention  # noqa: F401  (registers "sinkscope")

    model = build_model(tiny(variant)).eval()
    ids = torch.randint(0, 50, (2, 10))
    own = model(input_ids=ids).logits
    model.config._attn_implementation = "sinkscope"
    captured = model(input_ids=ids).logits
    torch.testing.assert_close(captured, own, atol=1e-5, rtol=1e-5)


def test_loss_is_next_token_cross_entropy():
    model = build_model(tiny())
    ids = torch.randint(0, 50, (3, 9))
    out = model(input_ids=ids, labels=ids)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def _head_outputs(model, ids):
    """Input of every layer's o_proj, (B, T, H, D)."""
    seen = []
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
             for layer in model.model.layers]
    model(input_ids=ids)
    for h in hooks:
        h.remove()
    return [s.view(*s.shape[:2], 4, 8) for s in seen]


def test_headnorm_gives_each_head_rms_equal_to_gamma():
    model = build_model(tiny("headnorm")).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.head_norm.weight.copy_(torch.rand(4, 8) + 0.5)
            layer.self_attn.v_proj.weight.mul_(100)  # head outputs far above eps = 1e-6
        outs = _head_outputs(model, torch.randint(0, 50, (2, 6)))
    for layer, out in zip(model.model.layers, outs):
        gamma = layer.self_attn.head_norm.weight
        # o_hat / gamma must have unit RMS over D for every (token, head)
        rms = (out / gamma).pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=1e-4)


def test_headnorm_calibration_matches_first_token_output_std():
    """gamma[h] = std of head h's first-token attention output on random-normal input (independent path)."""
    from sinkscope.train.model import CALIBRATION_BATCH, CALIBRATION_LEN

    config = tiny("headnorm")
    model = build_model(config, seed=3)
    softmax = build_model(tiny("softmax"), seed=3)  # same seed: same projections, no HeadNorm
    for i, (layer, ref_layer) in enumerate(zip(model.model.layers, softmax.model.layers)):
        torch.testing.assert_close(layer.self_attn.v_proj.weight, ref_layer.self_attn.v_proj.weight)
        g = torch.Generator().manual_seed(3 + i)
        x = torch.randn(CALIBRATION_BATCH, CALIBRATION_LEN, 32, generator=g)
        seen = []
        hook = ref_layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        rotary = softmax.model.rotary_emb(x, torch.arange(CALIBRATION_LEN)[None])
        with torch.no_grad():
            ref_layer.self_attn(ref_layer.input_layernorm(x), rotary)
        hook.remove()
        first = seen[0][:, 0].view(CALIBRATION_BATCH, 4, 8)  # (B, H, D)
        expected = first.std(dim=(0, 2))
        torch.testing.assert_close(layer.self_attn.head_norm.weight[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_shared_headnorm_and_headwise_gate_shapes():
    model = build_model(tiny("headnorm", headnorm_shared=True))
    assert model.model.layers[0].self_attn.head_norm.weight.shape == (8,)
    gated = build_model(tiny("gated", gate="headwise"))
    assert gated.model.layers[0].self_attn.gate_proj.out_features == 4


def test_gate_closed_zeroes_attention_contribution():
    model = build_model(tiny("gated")).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.gate_proj.weight.zero_()
            layer.self_attn.gate_proj.bias.fill_(-1e4)  # sigmoid -> 0
        outs = _head_outputs(model, torch.randint(0, 50, (2, 6)))
    assert all(o.abs().max() < 1e-6 for o in outs)


@pytest.mark.parametrize("rope", [True, False])
def test_without_rope_a_position_sees_its_prefix_as_a_set(rope):
    """NoPE: one layer of causal attention without positions is blind to the order of its keys, so swapping
    tokens 0 and 1 leaves positions 2 onwards unchanged; with rotary it does not."""
    model = build_model(tiny(rope=rope, num_hidden_layers=1)).eval()
    ids = torch.randint(3, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    swapped = ids[:, [1, 0, *range(2, 9)]]
    with torch.no_grad():
        a, b = model(input_ids=ids).logits[:, 2:], model(input_ids=swapped).logits[:, 2:]
    assert torch.allclose(a, b, atol=1e-5) == (not rope)


def test_unknown_variant_and_bad_gate_are_refused():
    # ValueError: the model files are copied into run folders and must not import sinkscope; the CLI refuses
    # both earlier through the flags' choices
    with pytest.raises(ValueError, match="unknown attention variant"):
        build_model(tiny("relu"))
    with pytest.raises(ValueError, match="gate"):
        build_model(tiny("gated", gate="sometimes"))


def test_weight_decay_only_on_matrices():
    from sinkscope.train.config import OptimConfig
    from sinkscope.train.loop import make_optimizer

    model = build_model(tiny("sink_logit", qk_norm=True))
    decay, rest = make_optimizer(model, OptimConfig()).param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    # HeadNorm's gamma is (H, D) but a gain: never decayed
    model = build_model(tiny("headnorm"))
    decay, rest = make_optimizer(model, OptimConfig()).param_groups
    gammas = [layer.self_attn.head_norm.weight for layer in model.model.layers]
    assert all(g.dim() == 2 for g in gammas)
    assert {id(g) for g in gammas} <= {id(p) for p in rest["params"]}
    assert not {id(g) for g in gammas} & {id(p) for p in decay["params"]}


def test_lr_schedule_warmup_then_cosine_to_floor():
    from sinkscope.train.config import OptimConfig
    from sinkscope.train.loop import lr_at

    cfg = OptimConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_lr_schedule_with_cooldown_is_constant_then_linear_to_floor():
    from sinkscope.train.config import OptimConfig
    from sinkscope.train.loop import lr_at

    cfg = OptimConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1, cooldown=20)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert [lr_at(s, cfg) for s in (10, 50, 90)] == [1.0, 1.0, 1.0]
    assert lr_at(100, cfg) == pytest.approx(1.0 - 0.9 * 0.5)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    longer = OptimConfig(lr=1.0, warmup=10, steps=210, min_lr_ratio=0.1, cooldown=20)
    assert [lr_at(s, longer) for s in range(90)] == [lr_at(s, cfg) for s in range(90)]  # extendable
