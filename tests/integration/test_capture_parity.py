"""Parity of every statistic sinkscope captures with a brute-force computation from eager attention.

The reference runs the same weights with ``attn_implementation="eager"`` and
``output_attentions=True`` / ``output_hidden_states=True`` on the same padded batches, and averages
in float64 with plain loops over sequences and positions. Which keys a query may see is derived
independently (causal, padding, sliding window) and checked against the zeros of eager's
probabilities. Per-query log-sum-exp, which eager does not return, comes from a separate float64
attention function written here and checked against eager's probabilities first. A learned sink
logit (gpt-oss ``s_aux``) enters that reference as one extra logit column with no value, as in
gpt-oss's own eager code, so its share is 1 minus the weights on the real keys.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

import sinkscope
from sinkscope.adapters import adapter_for
from sinkscope.capture.attention import BatchInfo, capture_attention
from sinkscope.capture.sink import SinkObserver
from sinkscope.testing import (
    ENCODERS,
    FAMILIES,
    SOFTCAP,
    default_attention,
    tiny_model,
    twin,
)

TOL = 1e-5
# half-precision models: the fused kernel's float32 lse from half inputs leaves ~1e-5; a statistic taken in half
# precision is off by 1e-3 (float16) to 1e-2 (bfloat16)
HALF_TOL = 1e-4
LENGTHS = (16, 11, 14, 7)  # two batches of size 3: padding inside the first, a lone sequence in the second
BATCH_SIZE = 3
KEYS = (0, 2, -1)  # first real token, a later one, and the last real token
REFERENCE = "parity_reference"

# ---------------------------------------------------------------- reference attention (float64)
_RECORDS: list[dict] = []


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                         **kwargs):
    """Textbook attention in float64 that records lse and probabilities; output cast back like eager."""
    n_rep = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(n_rep, dim=1)
    v = value.double().repeat_interleave(n_rep, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    raw = query.double() @ k.transpose(-1, -2) * scale
    logits = softcap * torch.tanh(raw / softcap) if softcap is not None else raw
    if attention_mask is not None:
        logits = logits + attention_mask.double()
    sink = kwargs.get("s_aux")
    columns = logits if sink is None else torch.cat(
        [logits, sink.double().view(1, -1, 1, 1).expand(*logits.shape[:3], 1)], dim=-1)
    lse = torch.logsumexp(columns, -1)
    probs = torch.exp(logits - lse[..., None])
    _RECORDS.append({"lse": lse, "probs": probs, "max_raw": raw.abs().max().item(), "sink_mass": 1 - probs.sum(-1)})
    out = (probs @ v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs.to(query.dtype)


AttentionInterface.register(REFERENCE, _reference_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(REFERENCE, eager_mask)


# ---------------------------------------------------------------- inputs
def _sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (n,), generator=g).tolist() for n in LENGTHS]


def _pad(chunk: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, chunk))
    ids = torch.zeros(len(chunk), width, dtype=torch.long)
    mask = torch.zeros(len(chunk), width, dtype=torch.long)
    for row, seq in enumerate(chunk):
        start = 0 if side == "right" else width - len(seq)
        ids[row, start:start + len(seq)] = torch.tensor(seq)
        mask[row, start:start + len(seq)] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each sequence's first real token (pads get 0)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def _window(config, layer: int) -> int | None:
    types = getattr(config, "layer_types", None)
    if types is not None:
        return config.sliding_window if types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def visible_keys(config, layer: int, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, T, S) bool, which keys each query may see, from first principles."""
    T = mask.shape[1]
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    rule = torch.ones(T, T, dtype=torch.bool) if not causal else s <= t
    window = _window(config, layer)
    if window is not None:
        rule = rule & (t - s < window)
    return rule[None] & mask.bool()[:, None, :]


def _block_outputs(model) -> list:
    """Forward hooks on the model's own list of blocks, found without the adapter."""
    layers = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len)
    store: list = []
    handles = [b.register_forward_hook(lambda mod, a, out: store.append(out[0] if isinstance(out, tuple) else out))
               for b in layers]
    return store, handles


# ---------------------------------------------------------------- brute force
class Reference:
    """Means as float64 sums / counts keyed exactly like the probe's tables."""

    def __init__(self):
        self.sum = defaultdict(float)
        self.count = defaultdict(int)

    def add(self, key, value: float, n: int = 1):
        self.sum[key] += float(value)
        self.count[key] += n

    def mean(self, kind: str) -> dict:
        return {k[1:]: self.sum[k] / self.count[k] for k in self.sum if k[0] == kind and self.count[k]}


def brute_force(model, sequences, padding_side: str, keys=KEYS) -> tuple[Reference, list]:
    eager = twin(model, "eager")
    reference = twin(model, REFERENCE)
    config, causal = model.config, model.config.model_type not in ENCODERS
    ref = Reference()
    extra = []
    for start in range(0, len(sequences), BATCH_SIZE):
        ids, mask = _pad(sequences[start:start + BATCH_SIZE], padding_side)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)}
        hidden, handles = _block_outputs(eager)
        with torch.no_grad():
            out = eager(**inputs, output_attentions=True, output_hidden_states=True)
            _RECORDS.clear()
            reference(**inputs)
        for h in handles:
            h.remove()
        valid = mask.bool()
        first = valid.long().argmax(1)
        last = valid.shape[1] - 1 - valid.flip(1).long().argmax(1)
        for layer, attn in enumerate(out.attentions):
            record = _RECORDS[layer]
            vis = visible_keys(config, layer, mask, causal)
            rows = valid[:, None, :, None]
            # the reference's own checks: independent visibility == eager's non-zeros; float64 probs == eager
            assert torch.equal((attn > 0) & rows, vis[:, None].expand_as(attn) & rows), \
                "visibility rule disagrees with eager"
            assert ((record["probs"] - attn.double()).abs() * rows).max() < 5e-6, \
                "reference attention disagrees with eager"
            # then the float64 weights: eager's float32 ones lose digits where a learned sink leaves real keys ~1e-3
            A = record["probs"]  # (B, H, T, S)
            extra.append(record["max_raw"])
            n_visible = vis.sum(-1)  # (B, T)
            for b in range(A.shape[0]):
                f = int(first[b])
                cols = [f + p if p >= 0 else int(last[b]) + 1 + p for p in keys]
                for t in range(A.shape[2]):
                    if not valid[b, t]:
                        continue
                    rel_t = t - f
                    norm = torch.linalg.vector_norm(hidden[layer][b, t].double()).item()
                    ref.add(("norm", layer, rel_t), norm)
                    for h in range(A.shape[1]):
                        ref.add(("learned_sink", layer, h), record["sink_mass"][b, h, t])
                        ref.add(("lse", layer, h, rel_t), record["lse"][b, h, t])
                        ref.add(("eff", layer, h, rel_t), 1.0 / (A[b, h, t] ** 2).sum())
                        for p, col in zip(keys, cols):
                            if not vis[b, t, col]:
                                continue
                            a = A[b, h, t, col]
                            ref.add(("importance", layer, h, p), a)
                            ref.add(("by_position", layer, h, p, rel_t), a)
                            if n_visible[b, t] > 1:
                                ref.add(("score", layer, h, p), a)
                        for s in range(A.shape[3]):
                            if vis[b, t, s]:
                                ref.add(("key_importance", layer, h, s - f), A[b, h, t, s])
                                ref.add(("pattern", layer, h, rel_t, s - f), A[b, h, t, s])
    return ref, extra


# ---------------------------------------------------------------- helpers on probe results
def _rows(table: dict, keys: tuple[str, ...], value: str) -> dict:
    return {tuple(table[k][i] for k in keys): table[value][i] for i in range(len(table[value]))}


def _assert_same(got: dict, want: dict, what: str, relative: bool = False, tol: float = TOL):
    """Equal to TOL; ``relative`` scales TOL by magnitudes above 1, for quantities that are not weights in
    [0, 1] (hidden norms of ~20 from float32 states; effective token counts of ~100 behind a learned sink)."""
    assert set(got) == set(want), f"{what}: entries differ, e.g. {sorted(set(got) ^ set(want))[:5]}"
    worst = max(abs(got[k] - want[k]) / (max(1.0, abs(want[k])) if relative else 1.0) for k in want)
    assert worst <= tol, f"{what}: max |captured - brute force| = {worst:.2e}"


def _per_head(ref: Reference, kind: str, p) -> dict:
    return {(layer, h): v for (layer, h, key), v in ref.mean(kind).items() if key == p}


def _grid(values) -> dict:
    return {(layer, h): v for layer, row in enumerate(values) for h, v in enumerate(row)}


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize(("padding_side", "query_chunk"), [("right", 1024), ("left", 5)])  # 5: several chunks
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_statistic_matches_brute_force(family, padding_side, query_chunk):
    model = tiny_model(family)
    sequences = _sequences()
    result = sinkscope.probe(model, sequences, chain=False, batch_size=BATCH_SIZE, padding_side=padding_side,
                             sink_positions=KEYS, key_importance=True, full_pattern=True, query_chunk=query_chunk)
    ref, max_raw = brute_force(model, sequences, padding_side)

    for p in KEYS:
        _assert_same(_grid(result["sink_score_by_key"][str(p)]), _per_head(ref, "score", p), f"sink score key {p}")
    importance = _per_head(ref, "importance", 0)
    _assert_same(_grid(result["importance"]), importance, "importance")
    learned = ref.mean("learned_sink")
    _assert_same(_grid(result["learned_sink_mass"]), learned, "learned sink mass")
    assert result["model"]["learned_sink"] == (max(learned.values()) > 0.05)  # gpt-oss: the sink must take mass
    L = model.config.num_hidden_layers
    want_rate = 100.0 * sum(v > result["sink_rate_eps"] for v in importance.values()) / len(importance)
    assert result["sink_rate_pooled"] == pytest.approx(want_rate)  # the per-sequence rate: test_peers_parity.py
    layer_score = [sum(v for (lay, _), v in _per_head(ref, "score", 0).items() if lay == layer)
                   / model.config.num_attention_heads for layer in range(L)]
    assert result["layer_sink_score"] == pytest.approx(layer_score, abs=TOL)

    tables = result.tables
    _assert_same(_rows(tables["attention_by_position"], ("layer", "head", "key", "query_position"), "attention"),
                 ref.mean("by_position"), "attention by query position")
    _assert_same(_rows(tables["lse_by_position"], ("layer", "head", "position"), "lse"), ref.mean("lse"),
                 "per-query lse")
    _assert_same(_rows(tables["key_importance"], ("layer", "head", "key_position"), "importance"),
                 ref.mean("key_importance"), "key importance")
    _assert_same(_rows(tables["key_importance"], ("layer", "head", "key_position"), "effective_tokens"),
                 ref.mean("eff"), "effective tokens", relative=True)
    _assert_same(_rows(tables["attention_pattern"], ("layer", "head", "query_position", "key_position"),
                       "attention"), ref.mean("pattern"), "full pattern")
    _assert_same(_rows(tables["hidden_by_position"], ("layer", "position"), "norm"), ref.mean("norm"),
                 "hidden norm by position", relative=True)
    if family == "gemma2":  # the cap must actually bend some logits, or the test proves nothing
        assert max(max_raw) > SOFTCAP


def test_the_tiny_models_exercise_what_makes_each_family_different():
    heads = {f: (tiny_model(f).config.num_attention_heads,
                 getattr(tiny_model(f).config, "num_key_value_heads", None)) for f in ("llama", "qwen2", "gemma")}
    assert heads["llama"] == (4, 2) and heads["qwen2"] == (4, 1) and heads["gemma"] == (4, 1)  # GQA, MQA
    for f in ("mistral", "gemma2", "mixtral", "gpt_oss", "gemma3_text", "olmo3"):
        assert 0 < tiny_model(f).config.sliding_window < max(LENGTHS)
    for f in ("gpt_oss", "gemma3_text", "olmo3"):  # a window on, off, then on again
        assert tiny_model(f).config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert tiny_model("smollm3").config.no_rope_layers == [1, 0]  # the second layer has no rotary
    deepseek = tiny_model("deepseek_v3").config
    assert deepseek.v_head_dim < deepseek.qk_head_dim  # latent attention: values narrower than queries
    assert tiny_model("gemma2").config.attn_logit_softcapping == SOFTCAP
    for f in ("phi3", "gpt_neox"):
        rope = tiny_model(f).config.rope_parameters
        assert 0 < rope["partial_rotary_factor"] < 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padding_side_and_batching_do_not_change_the_numbers(family):
    """The sink is the first real token: left, right or no padding must agree."""
    model = tiny_model(family)
    sequences = _sequences(seed=1)
    kwargs = {"chain": False, "sink_positions": (0, -1)}
    alone = sinkscope.probe(model, sequences, batch_size=1, **kwargs)
    for side in ("left", "right"):
        batched = sinkscope.probe(model, sequences, batch_size=4, padding_side=side, **kwargs)
        for key in ("0", "-1"):
            got = torch.tensor(batched["sink_score_by_key"][key])
            want = torch.tensor(alone["sink_score_by_key"][key])
            assert torch.allclose(got, want, atol=TOL), f"{side} padding changes the sink score of key {key}"
        assert batched["norm_ratio"] == pytest.approx(alone["norm_ratio"], rel=1e-4)


def _snapshot(model):
    return {
        "impl": model.config._attn_implementation,
        "training": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_unchanged(model, before):
    after = _snapshot(model)
    assert after["impl"] == before["impl"]
    assert after["training"] == before["training"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():  # bit-identical, NaN included
        assert torch.equal(_bits(after["state"][k]), _bits(v)), f"{k} changed"
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {name or 'model'}"


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_outputs_under_capture_equal_the_models_own(family, padding_side):
    model = tiny_model(family)
    eager = twin(model, "eager")
    before = _snapshot(model)
    ids, mask = _pad(_sequences()[:3], padding_side)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)}
    observer = SinkObserver(model.config.num_hidden_layers, model.config.num_attention_heads, ids.shape[1])
    with torch.no_grad():
        own = model(**inputs)
        reference = eager(**inputs)
        with capture_attention(model, adapter_for(model), [observer]) as session:
            session.batch = BatchInfo.from_attention_mask(mask)
            captured = model(**inputs)
    _assert_unchanged(model, before)
    assert model.config._attn_implementation == default_attention(model.config)
    field = "last_hidden_state" if family in ENCODERS else "logits"
    rows = mask.bool()
    got, own, want = (getattr(o, field)[rows] for o in (captured, own, reference))
    assert torch.isfinite(got).all()
    assert (got - own).abs().max() <= TOL
    assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize("family", ["llama", "gemma2", "bert"])
def test_probe_leaves_the_model_unchanged_even_in_train_mode(family):
    model = tiny_model(family)
    model.train()
    list(model.modules())[-1].eval()  # mixed train/eval flags must come back exactly as they were
    before = _snapshot(model)
    sinkscope.probe(model, _sequences()[:2], chain=False, key_importance=True)
    _assert_unchanged(model, before)


def test_probe_leaves_the_model_unchanged_when_it_fails():
    model = tiny_model("llama")
    before = _snapshot(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
    before["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sinkscope.SinkscopeError):
        sinkscope.probe(model, _sequences()[:2], chain=False)
    _assert_unchanged(model, before)


class _Inputs:
    """Attention observer keeping what each layer's attention received: (layer, query, key, scale)."""

    def __init__(self):
        self.calls = []

    def observe(self, call):
        self.calls.append((call.layer, call.query.detach().clone(), call.key.detach().clone(), call.scale))


def _float64_statistics(calls, mask: torch.Tensor, ref: Reference) -> None:
    """Softmax attention in float64 from one batch's half-precision queries and keys (causal, padded);
    adds per head the first token's score and importance, the lse by position and each sequence's ratio."""
    valid = mask.bool()
    T = valid.shape[1]
    vis = (torch.arange(T)[None, :] <= torch.arange(T)[:, None])[None] & valid[:, None, :]  # (B, T, S)
    for layer, query, key, scale in calls:
        logits = (query.double() @ key.double().transpose(-1, -2) * scale).masked_fill(~vis[:, None], -math.inf)
        lse = torch.logsumexp(logits, -1)  # (B, H, T)
        A = torch.exp(logits - lse[..., None])
        for b in range(A.shape[0]):
            f = int(valid[b].long().argmax())
            scored = [t for t in range(T) if valid[b, t] and t > f]  # causal: they see f and f itself
            for h in range(A.shape[1]):
                for t in (t for t in range(f, T) if valid[b, t]):
                    ref.add(("importance", layer, h), A[b, h, t, f])
                    ref.add(("lse", layer, h, t - f), lse[b, h, t])
                    if t in scored:
                        ref.add(("score", layer, h), A[b, h, t, f])
            score = float(A[b, :, scored, f].mean())
            ref.add(("ratio", layer), score / sum(1.0 / (t - f + 1) for t in scored) * len(scored))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_statistics_match_float64_attention_from_the_same_half_inputs(dtype):
    """The half model's own queries and keys, taken in float64: what is left is how sinkscope computes and
    accumulates, so a statistic summed or exponentiated in half precision (errors ~1e-3 to 1e-2) would show."""
    model = tiny_model("llama", dtype=dtype)
    sequences = _sequences()
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    sink, inputs, ref = SinkObserver(L, H, max(LENGTHS)), _Inputs(), Reference()
    for side, start in (("right", 0), ("left", BATCH_SIZE)):
        ids, mask = _pad(sequences[start:start + BATCH_SIZE], side)
        inputs.calls.clear()
        with torch.no_grad(), capture_attention(model, adapter_for(model), [inputs, sink]) as session:
            session.batch = BatchInfo.from_attention_mask(mask)
            model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
        assert inputs.calls[0][1].dtype == dtype
        _float64_statistics(inputs.calls, mask, ref)
    for name, got in (("score", sink.sink_score()), ("importance", sink.importance())):
        _assert_same(_grid(got[:, :, 0].tolist()), ref.mean(name), f"{dtype} {name}", tol=HALF_TOL)
    lse = sink.lse_by_position()
    got = {(layer, h, t): float(lse[layer, h, t]) for layer, h, t in ref.mean("lse")}
    _assert_same(got, ref.mean("lse"), f"{dtype} lse by position", relative=True, tol=HALF_TOL)
    ratio = (sink.tally["ratio_sum"] / sink.tally["ratio_count"]).tolist()
    assert ratio == pytest.approx([ref.mean("ratio")[(layer,)] for layer in range(L)], rel=HALF_TOL)


class _MaskKinds:
    def __init__(self):
        self.kinds = []

    def observe(self, call):
        self.kinds.append(None if call.visible is None else call.visible.dtype)


@pytest.mark.parametrize(("family", "padded", "kind"), [
    ("llama", False, None), ("llama", True, torch.bool), ("mistral", False, torch.bool), ("bert", False, None),
])
def test_the_parity_runs_cover_both_mask_paths(family, padded, kind):
    """Plain causal (or full) batches reach the capture with no mask; padding or a window gives bool masks."""
    model = tiny_model(family)
    ids, mask = _pad(_sequences()[:3] if padded else [_sequences()[0]], "right")
    seen = _MaskKinds()
    with torch.no_grad(), capture_attention(model, adapter_for(model), [seen]) as session:
        session.batch = BatchInfo.from_attention_mask(mask)
        model(input_ids=ids, attention_mask=mask)
    assert seen.kinds == [kind] * model.config.num_hidden_layers


def test_bert_tracks_cls_and_sep_by_default():
    result = sinkscope.probe(tiny_model("bert"), _sequences()[:2], chain=False)
    assert result["sink_positions"] == [0, -1]
    assert set(result["sink_score_by_key"]) == {"0", "-1"}
