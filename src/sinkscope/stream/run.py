"""``sinkscope stream``: perplexity under a KV budget for each cache policy, plus the discovered sinks.

One full-attention pass finds the sinks (and gives the reference perplexity); each policy is then
evaluated either with ``original`` positions (an exact mask, through sinkscope's attention function)
or with ``cache`` positions (token-by-token decoding through :class:`~sinkscope.stream.cache.SinkCache`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import blocks
from ..capture.attention import BatchInfo, capture_attention
from ..data import describe_data, read_documents, special_tokens, windows
from ..errors import SinkscopeError
from ..loading import LoadedModel, prepare_model
from ..results import SCHEMA_VERSION, provenance, write_json
from .cache import SinkCache
from .config import POSITIONS, StreamConfig
from .discover import SinkKeyObserver, describe, discover_from_observer, kept_classes, kept_positions
from .policy import Policy, PolicyMask, first_tokens, policy_mask, window_size

BOOTSTRAP_RESAMPLES = 1000  # percentile bootstrap over documents for the 95 % interval
INTERVAL = (0.025, 0.975)  # its percentiles: 95 %, the level of every other interval sinkscope reports
HELD_OUT_EVERY = 50  # the organisms' training split held out every 50th stdlib document (docs/training.md)


def documents(cfg: StreamConfig, loaded: LoadedModel) -> list[list[int]]:
    """Up to ``cfg.samples`` windows of exactly ``cfg.seq_len`` tokens, chosen by seed."""
    if cfg.data:
        docs = read_documents(cfg.data)
    else:
        from ..train.data import split_documents, stdlib_documents

        docs = [{"text": t} for t in split_documents(stdlib_documents(), HELD_OUT_EVERY)[1]]
    tokenizer = loaded.tokenizer
    prefix, suffix = special_tokens(tokenizer, cfg.bos, getattr(loaded.model.config, "bos_token_id", None))
    found = []
    for doc in docs:
        if "input_ids" in doc:
            ids, pre = [int(i) for i in doc["input_ids"]], []
        elif tokenizer is None:
            raise SinkscopeError("this model folder has no tokenizer; pass --data FILE.jsonl with input_ids")
        else:
            ids, pre = tokenizer(doc["text"], add_special_tokens=False)["input_ids"], prefix
        found += windows(ids, cfg.seq_len, pre, suffix, full_only=True)
    if not found:
        raise SinkscopeError(f"no document has {cfg.seq_len} tokens; pass longer text with --data or lower --seq-len")
    vocab = loaded.model.config.vocab_size
    if any(t < 0 or t >= vocab for w in found for t in w):
        raise SinkscopeError(f"token ids must lie in [0, {vocab}) for this model")
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(found), generator=generator)[: cfg.samples].sort().values
    return [found[i] for i in order.tolist()]


def _check(cfg: StreamConfig) -> None:
    unknown = [p for p in cfg.positions if p not in POSITIONS]
    if unknown or not cfg.positions:
        raise SinkscopeError(f"--positions takes {','.join(POSITIONS)} (comma-separated), got {','.join(cfg.positions)}")
    if not 2 <= cfg.budget < cfg.seq_len:
        raise SinkscopeError(f"--budget must lie in [2, {cfg.seq_len - 1}] (below --seq-len, or nothing is evicted)")
    for k in cfg.keep_first:
        window_size(cfg.budget, k)
        if k < 0:
            raise SinkscopeError(f"--keep-first values must be >= 0, got {k}")


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, T-1) float32 negative log-likelihood of tokens 1..T-1 given their prefix."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")


def full_pass(loaded: LoadedModel, ids: torch.Tensor, cfg: StreamConfig) -> tuple[torch.Tensor, SinkKeyObserver]:
    """Full-attention NLL and the per-sequence sink statistics, in one pass."""
    model = loaded.model
    observer = SinkKeyObserver(len(blocks(model, loaded.adapter)), cfg.criteria, cfg.query_chunk)
    device = next(model.parameters()).device
    nll = []
    with torch.no_grad(), capture_attention(model, loaded.adapter, [observer], query_chunk=cfg.query_chunk) as session:
        for batch in ids.split(cfg.batch_size):
            session.batch = BatchInfo.from_attention_mask(torch.ones_like(batch, device=device))
            nll.append(token_nll(model(batch.to(device), use_cache=False).logits.cpu(), batch))
    return torch.cat(nll), observer


def masked_nll(loaded: LoadedModel, ids: torch.Tensor, kept: torch.Tensor, budget: int,
               cfg: StreamConfig) -> torch.Tensor:
    """(N, T-1) NLL with every attention layer restricted to the policy mask: original positions.

    kept (N, T) bool as in :func:`~sinkscope.stream.policy.policy_mask`; masks are built one batch at a time.
    """
    editor = PolicyMask()
    device = next(loaded.model.parameters()).device
    nll = []
    with torch.no_grad(), capture_attention(loaded.model, loaded.adapter, mask_editors=[editor],
                                            query_chunk=cfg.query_chunk) as session:
        for start in range(0, len(ids), cfg.batch_size):
            batch = ids[start:start + cfg.batch_size]
            editor.mask = policy_mask(kept[start:start + len(batch)], budget).to(device)
            session.batch = BatchInfo.from_attention_mask(torch.ones_like(batch, device=device))
            nll.append(token_nll(loaded.model(batch.to(device), use_cache=False).logits.cpu(), batch))
    return torch.cat(nll)


def decode_nll(model, ids: torch.Tensor, budget: int, keep: frozenset[int]) -> tuple[torch.Tensor, float]:
    """(N, T-1) NLL decoding token by token through a SinkCache, and decoding tokens per second.

    The first ``window`` tokens go in one forward: every query among them sees all its keys under
    the policy, so that prefill is exact.
    """
    device = next(model.parameters()).device
    window = budget - len(keep)
    cache = SinkCache(model, budget, keep=keep)
    ids_device = ids.to(device)
    with torch.no_grad():
        logits = [model(ids_device[:, :window], cache=cache, use_cache=True).logits.float().cpu()]
        if cache.get_seq_length() != window:  # a model that takes the argument but never updates the cache
            raise SinkscopeError(f"{type(model).__name__} does not use a transformers KV cache, so --positions cache "
                                 "cannot run on it; use --positions original")
        start = time.perf_counter()
        for i in range(window, ids.shape[1]):
            logits.append(model(ids_device[:, i:i + 1], cache=cache, use_cache=True).logits.float().cpu())
        seconds = time.perf_counter() - start
    steps = (ids.shape[1] - window) * ids.shape[0]
    return token_nll(torch.cat(logits, 1), ids), steps / max(seconds, 1e-9)


def summarize(nll: torch.Tensor, budget: int, seed: int) -> dict:
    """Perplexity, its bootstrap 95 % interval over documents, and the NLL by position."""
    if not bool(torch.isfinite(nll).all()):
        bad = int((~torch.isfinite(nll)).any(1).nonzero()[0, 0])
        raise SinkscopeError(f"non-finite log-likelihood in document {bad}; try --dtype float32 or check the model")
    per_doc = nll.double().mean(1)  # (N,) documents have equal length, so the mean of means is the mean
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(per_doc), (BOOTSTRAP_RESAMPLES, len(per_doc)), generator=generator)
    boot = per_doc[draws].mean(1).exp()
    past = nll[:, budget - 1:]  # targets at positions >= budget: the only ones a policy can change
    return {"perplexity": float(per_doc.mean().exp()),
            "perplexity_ci": [float(boot.quantile(q)) for q in INTERVAL],
            "perplexity_past_budget": float(past.double().mean().exp()),
            "nll_by_position": nll.double().mean(0).tolist()}


def stream(model, *, tokenizer=None, config: StreamConfig | None = None, out: str | Path | None = None) -> dict:
    """Evaluate every cache policy of ``config`` on long documents; returns the content of stream.json.

    >>> import transformers, sinkscope.stream.run as run
    >>> from sinkscope.stream.config import StreamConfig
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, vocab_size=64)
    >>> model = transformers.AutoModelForCausalLM.from_config(cfg)
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "ids.jsonl").write_text(json.dumps({"input_ids": list(range(64)) * 2}) + "\\n")
    >>> result = run.stream(model, config=StreamConfig(data=str(folder / "ids.jsonl"), seq_len=64, budget=16,
    ...                                                 keep_first=(0, 4), positions=("original", "cache")))
    >>> [(p["name"], p["positions"]) for p in result["policies"]][:2]
    [('window', 'original'), ('first-4', 'original')]
    """
    config = config or StreamConfig()
    _check(config)
    loaded = prepare_model(model, tokenizer, config.load)
    sequences = documents(config, loaded)
    ids = torch.tensor(sequences)
    full_nll, observer = full_pass(loaded, ids, config)
    discovery = discover_from_observer(observer, sequences, loaded.tokenizer)
    discovered_keep = kept_positions(sequences, kept_classes(discovery), config.seq_len)
    policies = [Policy(config.budget, k, "window" if k == 0 else f"first-{k}") for k in config.keep_first]
    if config.discovered:
        if int(discovered_keep.sum(1).max()) >= config.budget:
            raise SinkscopeError(f"the discovered sinks fill --budget {config.budget}; raise it or pass --no-discovered")
        policies.append(Policy(config.budget, None, "discovered"))
    rows = []
    for positions in config.positions:
        for policy in policies:
            kept = discovered_keep if policy.discovered else first_tokens(len(ids), config.seq_len, policy.keep_first)
            rows.append(_evaluate(loaded, ids, policy, kept, positions, config))
    payload = _payload(loaded, config, sequences, rows, summarize(full_nll, config.budget, config.seed), discovery)
    if out is not None:
        write_json(Path(out) / "stream.json", payload)
    return payload


def _evaluate(loaded, ids, policy: Policy, kept: torch.Tensor, positions: str, cfg: StreamConfig) -> dict:
    throughput = None
    if positions == "original":
        nll = masked_nll(loaded, ids, kept, policy.budget, cfg)
    elif policy.discovered:  # each document keeps its own positions, so decode one at a time
        parts = [decode_nll(loaded.model, ids[n:n + 1], policy.budget, frozenset(kept[n].nonzero()[:, 0].tolist()))
                 for n in range(len(ids))]
        nll, throughput = torch.cat([p[0] for p in parts]), sum(p[1] for p in parts) / len(parts)
    else:
        parts = [decode_nll(loaded.model, batch, policy.budget, frozenset(range(policy.keep_first)))
                 for batch in ids.split(cfg.batch_size)]
        nll, throughput = torch.cat([p[0] for p in parts]), sum(p[1] for p in parts) / len(parts)
    n_kept = kept.sum(1).double()
    row = {"name": policy.name, "keep_first": policy.keep_first, "window": float((policy.budget - n_kept).mean()),
           "positions": positions, "kept": float(n_kept.mean()), "budget": policy.budget}
    row.update(summarize(nll, policy.budget, cfg.seed))
    row["decode_tokens_per_second"] = throughput
    return row


def sink_dependence(rows: list[dict]) -> list[dict]:
    """Per positions mode: perplexity cost of evicting the discovered sinks at equal budget (window vs discovered)."""
    result = []
    for positions in dict.fromkeys(r["positions"] for r in rows):
        by_name = {r["name"]: r for r in rows if r["positions"] == positions}
        if "window" in by_name and "discovered" in by_name:
            keep, evict = by_name["discovered"], by_name["window"]
            result.append({"positions": positions, "perplexity_keep": keep["perplexity"],
                           "perplexity_evict": evict["perplexity"],
                           "ratio": evict["perplexity"] / keep["perplexity"],
                           "ratio_past_budget": evict["perplexity_past_budget"] / keep["perplexity_past_budget"]})
    return result


def _payload(loaded, config, sequences, rows, full, discovery) -> dict:
    model_config = loaded.model.config
    parameter = next(loaded.model.parameters())
    max_positions = getattr(model_config, "max_position_embeddings", None)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "stream",
        "provenance": provenance(model=loaded.name, revision=loaded.revision, config=config, seed=config.seed,
                                 dtype=str(parameter.dtype).removeprefix("torch."), device=str(parameter.device),
                                 model_config=model_config.to_dict()),
        "model": {"model_type": model_config.model_type, "max_position_embeddings": max_positions},
        "data": {**describe_data(config.data, random_tokens=False, bos=config.bos, seq_len=config.seq_len,
                                 sequences=sequences, default=("held-out Python standard-library documents", None)),
                 "documents": len(sequences), "source": config.data or "stdlib-heldout"},
        "budget": config.budget,
        "full_perplexity": full["perplexity"],
        "full_perplexity_ci": full["perplexity_ci"],
        "full_perplexity_past_budget": full["perplexity_past_budget"],
        "full_nll_by_position": full["nll_by_position"],
        "full_fits": max_positions is None or config.seq_len <= max_positions,
        "policies": rows,
        "sink_dependence": sink_dependence(rows),
        "discovered_sinks": discovery,
        "summary": describe(discovery),
    }
