import json

import pytest
import torch
import transformers

from sinkscope.errors import SinkscopeError
from sinkscope.loading import prepare_model
from sinkscope.config import LoadConfig
from sinkscope.criteria import Criteria
from sinkscope.stream.cache import SinkCache
from sinkscope.stream.config import StreamConfig
from sinkscope.stream.fixture import planted_secondary_sink_model, secondary_sink_inputs
from sinkscope.stream.policy import first_tokens, policy_mask
from sinkscope.stream.run import decode_nll, full_pass, masked_nll, stream, token_nll
from sinkscope.stream.discover import discover_from_observer, sink_keys


def tiny_llama(layers=2, seed=0):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                   max_position_embeddings=512)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def loaded(model):
    return prepare_model(model, None, LoadConfig())


@pytest.mark.parametrize("k", [0, 2])
def test_original_positions_match_a_hand_built_eager_mask(k):
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = policy_mask(first_tokens(3, 40, k), budget=10)
    ours = masked_nll(loaded(model), ids, first_tokens(3, 40, k), 10, StreamConfig(batch_size=2))
    model.set_attn_implementation("eager")
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        reference = token_nll(model(ids, attention_mask=additive).logits, ids)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    full = token_nll(model(ids).logits, ids)
    assert (ours[:, 12:] - full[:, 12:]).abs().max() > 1e-3  # the policy did change something


@pytest.mark.parametrize("keep", [frozenset({0, 1}), frozenset({0, 13})])
def test_cache_positions_match_a_from_scratch_rerun(keep):
    """One layer: a token's key and value depend only on itself and its position, so decoding through
    the cache equals re-running the kept tokens from scratch at positions 0..n-1."""
    model = tiny_llama(layers=1)
    T, budget = 36, 8
    window = budget - len(keep)
    ids = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(2))
    nll, _ = decode_nll(model, ids, budget, keep)
    with torch.no_grad():
        for i in range(T - 1):
            kept = sorted({j for j in keep if j <= i} | set(range(max(0, i - window + 1), i + 1)))
            logits = model(ids[:, kept]).logits[:, -1]
            reference = torch.nn.functional.cross_entropy(logits, ids[:, i + 1])
            assert float((nll[0, i] - reference).abs() / reference.abs()) < 1e-4


def test_cache_window_equals_original_window_and_full_when_nothing_is_evicted():
    """Rotary sees only distances: a plain window gives the same distances with either positions."""
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(3))
    cached, _ = decode_nll(model, ids, budget=8, keep=frozenset())
    masked = masked_nll(loaded(model), ids, first_tokens(2, 30, 0), 8, StreamConfig())
    torch.testing.assert_close(cached, masked, rtol=1e-4, atol=1e-5)
    roomy, _ = decode_nll(model, ids, budget=31, keep=frozenset({0}))
    torch.testing.assert_close(roomy, token_nll(model(ids).logits, ids), rtol=1e-4, atol=1e-5)


def test_sink_cache_in_generate_holds_at_most_the_budget():
    model = tiny_llama()
    cache = SinkCache(model, budget=6, keep_first=2)
    out = model.generate(torch.tensor([[1, 5, 7, 9]]), cache=cache, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert out.shape[1] == 24
    assert all(layer.keys.shape[2] == 5 for layer in cache.layers)  # budget - 1: room for the next token
    assert cache.layers[0].index[:2].tolist() == [0, 1]


def test_cache_positions_refuse_a_model_that_ignores_the_cache():
    from sinkscope.train.model import SinkscopeConfig, build_model

    model = build_model(SinkscopeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64)).eval()
    with pytest.raises(SinkscopeError, match="does not use a transformers KV cache"):
        decode_nll(model, torch.randint(0, 64, (1, 20)), budget=8, keep=frozenset())


def test_cache_refuses_models_it_cannot_rerotate():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(SinkscopeError, match="--positions original"):
        SinkCache(gpt2, budget=8)


@pytest.mark.parametrize("lock_logit,seq_len", [(6.0, 64), (12.0, 160)])
def test_discovery_finds_exactly_the_planted_secondary_sink(lock_logit, seq_len):
    model, answer = planted_secondary_sink_model(secondary_id=7, lock_logit=lock_logit)
    at = seq_len // 3
    sequences = secondary_sink_inputs(answer, 7, n=4, seq_len=seq_len, at=(at,))
    _, observer = full_pass(loaded(model), torch.tensor(sequences), StreamConfig(query_chunk=32))
    found = discover_from_observer(observer, sequences)
    assert {(o["position"], tuple(o["layers"])) for o in found["occurrences"]} == \
        {(0, (2, 3)), (at, (2, 3))}
    assert [(c["token_id"], c["occurrence"], c["share"], c["kept"]) for c in found["classes"]] == \
        [(None, 0, 1.0, True), (7, 1, 1.0, True)]


def test_discovery_finds_nothing_on_a_random_model():
    model = tiny_llama(layers=3)
    sequences = torch.randint(0, 64, (4, 128), generator=torch.Generator().manual_seed(4)).tolist()
    _, observer = full_pass(loaded(model), torch.tensor(sequences), StreamConfig())
    stats = observer.tensors()
    c = Criteria()
    assert not sink_keys(stats["votes"], stats["far"], c.secondary_query_share, c.secondary_min_far_queries).any()


def test_stream_end_to_end_writes_stream_json(tmp_path):
    model, answer = planted_secondary_sink_model(secondary_id=7)
    data = tmp_path / "ids.jsonl"
    rows = secondary_sink_inputs(answer, 7, n=3, seq_len=48, at=(20,))
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    config = StreamConfig(data=str(data), seq_len=48, budget=12, keep_first=(0, 1), positions=("original", "cache"))
    payload = stream(model, config=config, out=tmp_path)
    saved = json.loads((tmp_path / "stream.json").read_text())
    assert saved["kind"] == "stream" and saved["provenance"]["config"]["budget"] == 12
    names = [(p["name"], p["positions"]) for p in payload["policies"]]
    assert names == [(n, pos) for pos in ("original", "cache") for n in ("window", "first-1", "discovered")]
    discovered = [p for p in payload["policies"] if p["name"] == "discovered"]
    assert all(p["kept"] == 2.0 for p in discovered)  # BOS and the planted token
    assert [d["positions"] for d in payload["sink_dependence"]] == ["original", "cache"]
    for p in payload["policies"]:
        assert p["perplexity_ci"][0] <= p["perplexity"] <= p["perplexity_ci"][1]
    from sinkscope.report import build_report

    report = build_report([tmp_path], tmp_path / "report.html")
    assert [f for f in report.figures if f.startswith("stream--")]
    assert 'id="stream-table-' in (tmp_path / "report.html").read_text()


def test_stream_checks_its_flags():
    with pytest.raises(SinkscopeError, match="--budget must lie"):
        stream(tiny_llama(), config=StreamConfig(seq_len=64, budget=64))
    with pytest.raises(SinkscopeError, match="--positions takes"):
        stream(tiny_llama(), config=StreamConfig(positions=("rotated",)))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_probe_reports_the_planted_secondary_sink_with_padding(padding_side):
    from sinkscope import probe

    model, answer = planted_secondary_sink_model(secondary_id=7)
    sequences = secondary_sink_inputs(answer, 7, n=4, seq_len=48, at=(16,))
    sequences[1] = sequences[1][:40]  # a shorter sequence: the batch is padded
    result = probe(model, sequences, chain=False, secondary_sinks=True, padding_side=padding_side, batch_size=4)
    found = result["secondary_sinks"]
    assert {(o["sequence"], o["position"]) for o in found["occurrences"]} == \
        {(n, p) for n in range(4) for p in (0, 16)}
    assert [(c["token_id"], c["share"]) for c in found["classes"]] == [(None, 1.0), (7, 1.0)]
