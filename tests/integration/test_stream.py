import json
import math

import pytest
import torch
import transformers

from sinkscope.config import LoadConfig
from sinkscope.criteria import Criteria
from sinkscope.errors import SinkscopeError
from sinkscope.loading import prepare_model
from sinkscope.stream.cache import SinkCache
from sinkscope.stream.config import StreamConfig
from sinkscope.stream.discover import SinkKeyObserver, discover_from_observer, sink_keys
from sinkscope.stream.evaluate import decode_nll, full_nll, policy_nll, token_nll
from sinkscope.stream.fixture import planted_secondary_sink_model, secondary_sink_inputs
from sinkscope.stream.policy import first_tokens, policy_mask
from sinkscope.stream.run import documents, stream


def tiny_llama(layers=2, seed=0):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                   max_position_embeddings=512)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def loaded(model):
    return prepare_model(model, None, LoadConfig())


def kept_at(n, T, *positions_per_row):
    kept = torch.zeros(n, T, dtype=torch.bool)
    for row, positions in enumerate(positions_per_row):
        kept[row, list(positions)] = True
    return kept


def eager_policy_nll(model, ids, kept, budget):
    """Reference for original positions: eager attention under an additive mask written by a loop over (i, j)."""
    N, T = ids.shape
    mask = torch.full((N, 1, T, T), torch.finfo(torch.float32).min)
    for n in range(N):
        window = budget - int(kept[n].sum())
        for i in range(T):
            for j in range(i + 1):
                if kept[n, j] or i - j < window:
                    mask[n, 0, i, j] = 0.0
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits.double()
    model.set_attn_implementation(previous)
    return -logits[:, :-1].log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]


def decoded_nll(model, ids, kept):
    """Reference for cache positions: each document decoded token by token through a SinkCache."""
    return torch.cat([decode_nll(model, ids[n:n + 1], BUDGET, frozenset(kept[n].nonzero()[:, 0].tolist()))[0]
                      for n in range(len(ids))]).double()


BUDGET = 12


@pytest.mark.parametrize("k", [0, 2])
def test_original_positions_match_a_hand_built_eager_mask(k):
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(1))
    ours = policy_nll(loaded(model), ids, first_tokens(3, 40, k), 10, "original", StreamConfig(batch_size=2))
    reference = eager_policy_nll(model, ids, first_tokens(3, 40, k), 10)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-5)
    full = token_nll(model(ids).logits, ids)
    assert (ours[:, 12:] - full[:, 12:]).abs().max() > 1e-3  # the policy did change something


@pytest.mark.parametrize("keep", [frozenset({0, 1}), frozenset({0, 13})])
def test_cache_positions_match_a_from_scratch_rerun(keep):
    """One layer: a token's key and value depend only on itself and its position, so decoding through
    the cache, and the parallel cache pass, equal re-running the kept tokens from scratch at positions 0..n-1."""
    model = tiny_llama(layers=1)
    T, budget = 36, 8
    window = budget - len(keep)
    ids = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(2))
    decoded, _ = decode_nll(model, ids, budget, keep)
    parallel = policy_nll(loaded(model), ids, kept_at(1, T, keep), budget, "cache", StreamConfig())
    with torch.no_grad():
        for i in range(T - 1):
            kept = sorted({j for j in keep if j <= i} | set(range(max(0, i - window + 1), i + 1)))
            logits = model(ids[:, kept]).logits[:, -1]
            reference = torch.nn.functional.cross_entropy(logits, ids[:, i + 1])
            assert float((decoded[0, i] - reference).abs() / reference.abs()) < 1e-4
            assert float((parallel[0, i] - reference).abs() / reference.abs()) < 1e-4


def test_sink_cache_takes_chunks_of_any_length():
    """One layer, tokens fed in chunks of 1 to more than the window: every query of a chunk sees the kept tokens
    that have left the window, the W - 1 tokens before the chunk and the chunk up to itself, at consecutive
    positions, which equals re-running exactly those tokens from scratch."""
    model = tiny_llama(layers=1)
    budget, keep = 8, frozenset({0, 13, 14})
    window = budget - len(keep)
    ids = torch.randint(0, 64, (1, 70), generator=torch.Generator().manual_seed(4))
    cache, start = SinkCache(model, budget, keep=keep), 0
    with torch.no_grad():
        for n in (3, 1, 1, 12, 1, 2, 9, 1, 1, 20, 1, 3, 15):
            logits = model(ids[:, start:start + n], cache=cache, use_cache=True).logits[0]
            held = sorted({j for j in keep if j <= start - window}) + list(range(max(0, start - window + 1), start))
            for k in range(n):
                reference = model(ids[:, held + list(range(start, start + k + 1))]).logits[0, -1]
                torch.testing.assert_close(logits[k], reference, rtol=1e-4, atol=1e-4)
            start += n
            assert cache.held == sorted({j for j in keep if j <= start - window}) + \
                list(range(max(0, start - window + 1), start))
    assert start == 70


@pytest.mark.parametrize("rows", [
    ({0},) * 3,  # StreamingLLM's first token
    ({0, 1, 2, 3},) * 3,  # first 4: the number held outside the window grows from 1 to 4 (s_i)
    ({0, 9}, {0}, {4, 6, 20}),  # a discovered policy: its own kept keys per document, some after the window
    ({0}, (), {3, 30}),  # a document keeping nothing beside others that keep keys
])
def test_parallel_cache_pass_matches_token_by_token_decoding(rows):
    """Three layers, so keys and values depend on the history each token saw: the one-pass simulation of
    cache positions must equal decoding through the SinkCache step by step, with batches mixing kept sets."""
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 64, (3, 44), generator=torch.Generator().manual_seed(5))
    kept = kept_at(3, 44, *rows)
    parallel = policy_nll(loaded(model), ids, kept, BUDGET, "cache", StreamConfig(batch_size=2))
    torch.testing.assert_close(parallel.double(), decoded_nll(model, ids, kept), rtol=1e-5, atol=1e-5)
    original = policy_nll(loaded(model), ids, kept, BUDGET, "original", StreamConfig())
    assert (parallel - original).abs().max() > 1e-3  # the kept keys' distances did change something


def test_policy_runs_compute_each_document_once_and_equal_a_whole_pass(monkeypatch):
    """A document's NLL depends only on its own kept keys: passes run only documents whose kept keys are new,
    and every answer equals one pass over the whole batch."""
    import sinkscope.stream.run as run

    model = tiny_llama(layers=2)
    ids = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(7))
    ran = []
    monkeypatch.setattr(run, "policy_nll", lambda loaded, ids, *rest: ran.append(len(ids)) or policy_nll(
        loaded, ids, *rest))
    runs = run.PolicyRuns(loaded(model), StreamConfig(budget=BUDGET))
    first = kept_at(3, 40, {0}, {0}, {0})
    some = kept_at(3, 40, {0, 9}, {0}, ())  # document 1 keeps what first-1 keeps; document 2 keeps nothing
    for kept, positions in ((first, "cache"), (some, "cache"), (some, "original"), (kept_at(3, 40), "original")):
        whole = policy_nll(loaded(model), ids, kept, BUDGET, positions, StreamConfig())
        torch.testing.assert_close(runs.nll(ids, kept, positions), whole, rtol=1e-5, atol=1e-6)
    # first-1: 3 new; some (cache): documents 0 and 2; some (original): 0 and 1 (2 keeps nothing: done);
    # the plain window: 0 and 1 (document 2's window is known from the cache pass)
    assert ran == [3, 2, 2, 2]


def test_cache_window_equals_original_window_and_full_when_nothing_is_evicted():
    """Rotary sees only distances: a plain window gives the same distances with either positions."""
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(3))
    cached, _ = decode_nll(model, ids, budget=8, keep=frozenset())
    masked = policy_nll(loaded(model), ids, first_tokens(2, 30, 0), 8, "original", StreamConfig())
    torch.testing.assert_close(cached, masked, rtol=1e-4, atol=1e-5)
    roomy, _ = decode_nll(model, ids, budget=31, keep=frozenset({0}))
    torch.testing.assert_close(roomy, token_nll(model(ids).logits, ids), rtol=1e-4, atol=1e-5)


def test_sink_cache_in_generate_holds_at_most_the_budget():
    model = tiny_llama()
    cache = SinkCache(model, budget=6, keep_first=2)
    out = model.generate(torch.tensor([[1, 5, 7, 9]]), cache=cache, max_new_tokens=20, min_new_tokens=20,
                         do_sample=False, pad_token_id=0)
    assert out.shape[1] == 24
    assert cache.keys.shape[3] == 6  # one fixed buffer of budget keys per layer
    assert all(layer.keys.shape[2] == 6 for layer in cache.layers)  # what the last step attended
    assert cache.held == [0, 1, 20, 21, 22]  # 23 tokens went in; the next one sees these and itself


def test_sink_cache_follows_beam_search():
    model = tiny_llama()
    out = model.generate(torch.tensor([[1, 5, 7, 9]]), cache=SinkCache(model, budget=6, keep_first=2), num_beams=2,
                         num_return_sequences=2, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 16)


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
    with pytest.raises(SinkscopeError, match="--positions original"):
        policy_nll(loaded(gpt2), torch.zeros(1, 16, dtype=torch.long), first_tokens(1, 16, 1), 8, "cache",
                   StreamConfig())


def observe(model, sequences, cfg=None):
    cfg = cfg or StreamConfig(query_chunk=32)
    observer = SinkKeyObserver(len(model.model.layers), cfg.criteria, cfg.query_chunk)
    full_nll(loaded(model), torch.tensor(sequences), cfg, [observer])
    return observer


@pytest.mark.parametrize("lock_logit,seq_len", [(6.0, 64), (12.0, 160)])
def test_discovery_finds_exactly_the_planted_secondary_sink(lock_logit, seq_len):
    model, answer = planted_secondary_sink_model(secondary_id=7, lock_logit=lock_logit)
    at = seq_len // 3
    sequences = secondary_sink_inputs(answer, 7, n=4, seq_len=seq_len, at=(at,))
    found = discover_from_observer(observe(model, sequences), sequences)
    assert {(o["position"], tuple(o["layers"])) for o in found["occurrences"]} == \
        {(0, (2, 3)), (at, (2, 3))}
    assert sorted((c["token_id"] or 0, c["occurrence"], c["share"], c["candidate"]) for c in found["classes"]) == \
        [(0, 0, 1.0, True), (7, 1, 1.0, True)]
    # the attention each class takes, from eager attention weights: head mean, mean over the queries that see it
    model.set_attn_implementation("eager")
    with torch.no_grad():
        weights = model(torch.tensor(sequences), output_attentions=True).attentions
    for c in found["classes"]:
        position = 0 if c["token_id"] is None else at
        for layer, taken in c["attention_by_layer"].items():
            hand = weights[layer].mean(1)[:, position:, position].mean(1).mean()
            assert taken == pytest.approx(float(hand), rel=1e-4)
        assert c["attention_mass"] == pytest.approx(sum(c["attention_by_layer"].values()), rel=1e-6)


def test_discovery_finds_nothing_on_a_random_model():
    model = tiny_llama(layers=3)
    sequences = torch.randint(0, 64, (4, 128), generator=torch.Generator().manual_seed(4)).tolist()
    stats = observe(model, sequences, StreamConfig()).tensors()
    c = Criteria()
    assert not sink_keys(stats["votes"], stats["far"], c.secondary_query_share, c.secondary_min_far_queries).any()


def planted_data(tmp_path, n=6):
    model, answer = planted_secondary_sink_model(secondary_id=7)
    rows = secondary_sink_inputs(answer, 7, n=n, seq_len=48, at=(20,))
    data = tmp_path / "ids.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    return model, data


def test_stream_end_to_end_writes_stream_json(tmp_path):
    model, data = planted_data(tmp_path)
    config = StreamConfig(data=str(data), seq_len=48, budget=12, samples=3, calibration=3, keep_first=(0, 1),
                          positions=("original", "cache"))
    payload = stream(model, config=config, out=tmp_path)
    saved = json.loads((tmp_path / "stream.json").read_text())
    assert saved["kind"] == "stream" and saved["provenance"]["config"]["budget"] == 12
    assert saved["data"]["calibration_split"] == "documents" and saved["data"]["calibration_documents"] == 3
    names = [(p["name"], p["positions"]) for p in payload["policies"]]
    assert names == [(n, pos) for pos in ("original", "cache") for n in ("window", "first-1", "discovered")]
    assert [d["positions"] for d in payload["sink_dependence"]] == ["original", "cache"]
    for p in payload["policies"]:
        assert p["perplexity_ci"][0] <= p["perplexity"] <= p["perplexity_ci"][1]
    for d in payload["sink_dependence"]:
        for key in ("window_over_best_first_k", "discovered_sink_eviction_ratio", "discovered_over_best_first_k"):
            assert d[f"{key}_ci"][0] <= d[key] <= d[f"{key}_ci"][1]
    from sinkscope.report import build_report

    report = build_report([tmp_path], tmp_path / "report.html")
    assert [f for f in report.figures if f.startswith("stream--")]
    assert 'id="stream-table-' in (tmp_path / "report.html").read_text()


def hand_kept(sequences, classes):
    """Kept positions of token classes, by a plain scan: position 0, or the n-th occurrence after it."""
    kept = torch.zeros(len(sequences), len(sequences[0]), dtype=torch.bool)
    for row, ids in enumerate(sequences):
        for c in classes:
            hits = [p for p in range(1, len(ids)) if ids[p] == c["token_id"]]
            if c["token_id"] is None:
                kept[row, 0] = True
            elif len(hits) >= c["occurrence"]:
                kept[row, hits[c["occurrence"] - 1]] = True
    return kept


def reference_nll(model, ids, kept, positions):
    return eager_policy_nll(model, ids, kept, BUDGET) if positions == "original" else decoded_nll(model, ids, kept)


def test_stream_values_and_decisions_match_an_independent_computation(tmp_path):
    """Every perplexity, past-budget perplexity and dependence ratio of stream.json, and every calibration trial
    of the discovered policy, recomputed with eager attention under a hand-built mask (original positions) or
    token-by-token decoding (cache positions)."""
    model, data = planted_data(tmp_path)
    config = StreamConfig(data=str(data), seq_len=48, budget=BUDGET, samples=3, calibration=3, keep_first=(0, 1, 2),
                          positions=("original", "cache"), sink_slots=2)
    payload = stream(model, config=config)
    evaluated, calibration, _ = documents(config, loaded(model))
    ids, calibration_ids = torch.tensor(evaluated), torch.tensor(calibration)
    reference = {}
    for row in payload["policies"]:
        discovered = row["name"] == "discovered"
        kept = hand_kept(evaluated, row["kept_classes"]) if discovered else first_tokens(3, 48, row["keep_first"])
        nll = reference[row["name"], row["positions"]] = reference_nll(model, ids, kept, row["positions"])
        assert row["perplexity"] == pytest.approx(math.exp(float(nll.mean())), rel=1e-4)
        assert row["perplexity_past_budget"] == pytest.approx(math.exp(float(nll[:, BUDGET - 1:].mean())), rel=1e-4)
        assert row["kept"] == pytest.approx(float(kept.sum(1).double().mean()))
    for d in payload["sink_dependence"]:
        pos = d["positions"]
        perplexity = {name: math.exp(float(nll.mean())) for (name, p), nll in reference.items() if p == pos}
        best = min(("first-1", "first-2"), key=perplexity.get)
        assert d["best_first_k"] == best
        assert d["window_over_best_first_k"] == pytest.approx(perplexity["window"] / perplexity[best], rel=1e-4)
        assert d["discovered_sink_eviction_ratio"] == pytest.approx(perplexity["window"] / perplexity["discovered"],
                                                                    rel=1e-4)
        window, top = reference["window", pos], reference[best, pos]
        past = math.exp(float(window[:, BUDGET - 1:].mean() - top[:, BUDGET - 1:].mean()))
        assert d["window_over_best_first_k_past_budget"] == pytest.approx(past, rel=1e-4)
    for row in (r for r in payload["policies"] if r["name"] == "discovered"):
        kept_so_far = []
        for trial in row["calibration"]:
            cls = {"token_id": trial["token_id"], "occurrence": trial["occurrence"]}
            without = reference_nll(model, calibration_ids, hand_kept(calibration, kept_so_far), row["positions"])
            with_it = reference_nll(model, calibration_ids, hand_kept(calibration, [*kept_so_far, cls]),
                                    row["positions"])
            assert trial["perplexity_without"] == pytest.approx(math.exp(float(without.mean())), rel=1e-4)
            assert trial["perplexity_with"] == pytest.approx(math.exp(float(with_it.mean())), rel=1e-4)
            assert trial["entered"] == (trial["perplexity_with"] < trial["perplexity_without"])
            kept_so_far += [cls] if trial["entered"] else []
        assert row["kept_classes"] == kept_so_far


def test_calibration_documents_are_disjoint_from_the_evaluated_ones(tmp_path):
    model, data = planted_data(tmp_path, n=5)
    config = StreamConfig(data=str(data), seq_len=48, samples=3, calibration=2)
    evaluated, calibration, split = documents(config, loaded(model))
    assert split == "documents" and len(evaluated) == 3 and len(calibration) == 2
    rows = [json.loads(line)["input_ids"] for line in data.read_text().splitlines()]
    assert sorted(map(rows.index, evaluated + calibration)) == [0, 1, 2, 3, 4]
    one = tmp_path / "one.jsonl"  # one long document: disjoint windows of it, said so
    one.write_text(json.dumps({"input_ids": sum(rows, [])}) + "\n")
    evaluated, calibration, split = documents(StreamConfig(data=str(one), seq_len=48, samples=3, calibration=2),
                                              loaded(model))
    assert split == "windows" and not {tuple(w) for w in evaluated} & {tuple(w) for w in calibration}
    with pytest.raises(SinkscopeError, match="leave 2 for calibration"):
        documents(StreamConfig(data=str(data), seq_len=48, samples=3, calibration=3), loaded(model))


def test_default_calibration_takes_4096_tokens_where_the_text_has_them(tmp_path):
    model, data = planted_data(tmp_path, n=12)
    assert StreamConfig(seq_len=48).calibration_documents() == (86, 4)  # ceil(4096 / 48), at least 4
    assert StreamConfig(seq_len=2048).calibration_documents() == (4, 4)
    _, calibration, _ = documents(StreamConfig(data=str(data), seq_len=48, samples=3), loaded(model))
    assert len(calibration) == 9  # all that is left beside the evaluated windows
    with pytest.raises(SinkscopeError, match="leave 2 for calibration"):
        documents(StreamConfig(data=str(data), seq_len=48, samples=10), loaded(model))


def test_stream_checks_its_flags():
    with pytest.raises(SinkscopeError, match="--budget must lie"):
        stream(tiny_llama(), config=StreamConfig(seq_len=64, budget=64))
    with pytest.raises(SinkscopeError, match="--positions takes"):
        stream(tiny_llama(), config=StreamConfig(positions=("rotated",)))
    with pytest.raises(SinkscopeError, match="--budget 4 leaves no room"):
        stream(tiny_llama(), config=StreamConfig(seq_len=64, budget=4, sink_slots=4, keep_first=(0,)))


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
