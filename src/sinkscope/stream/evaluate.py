"""Negative log-likelihood under full attention or a cache policy, and the statistics stream reports on it.

Every policy runs as one parallel forward per batch through sinkscope's attention function
(:class:`~sinkscope.stream.policy.PolicyMask` for original positions, :class:`~sinkscope.stream.policy.CachePositions`
for cache positions). :func:`decode_nll` decodes token by token through a real
:class:`~sinkscope.stream.cache.SinkCache` instead: the reference the parallel cache pass is tested against.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..capture.attention import BatchInfo, capture_attention
from ..errors import SinkscopeError
from ..loading import LoadedModel
from .cache import Rotation, SinkCache
from .config import StreamConfig
from .policy import CachePositions, PolicyMask

BOOTSTRAP_RESAMPLES = 1000  # percentile bootstrap over documents for the 95 % interval
INTERVAL = (0.025, 0.975)  # its percentiles: 95 %, the level of every other interval sinkscope reports


LOSS_CHUNK_BYTES = 16 << 20  # the loss's float32 temporaries per call: small enough for the allocator to reuse


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, T-1) float32 negative log-likelihood of tokens 1..T-1 given their prefix.

    A few rows of one document at a time: their logits are contiguous, which the loss kernel reads several
    times faster than the (N, V, T) view one call needs. And each call's (rows, V) log-probabilities fit in
    ``LOSS_CHUNK_BYTES``: a whole document's (200 MB at SmolLM2's 49,152 words) is fresh memory each time,
    and faulting it in took 0.5-1.5 s of a 7 s pass on SmolLM2, where 85-row calls take 0.09 s.
    """
    _, T, V = logits.shape
    rows = max(1, LOSS_CHUNK_BYTES // (4 * V))
    ids = ids.to(logits.device)
    return torch.stack([torch.cat([F.cross_entropy(row[s:min(s + rows, T - 1)].float(), target[s + 1:s + 1 + rows],
                                                   reduction="none") for s in range(0, T - 1, rows)])
                        for row, target in zip(logits, ids)])


def full_nll(loaded: LoadedModel, ids: torch.Tensor, cfg: StreamConfig, observers=()) -> torch.Tensor:
    """(N, T-1) NLL under full attention; ``observers`` (e.g. the sink discovery) see every attention call."""
    model = loaded.model
    device = next(model.parameters()).device
    nll = []
    with torch.no_grad(), capture_attention(model, loaded.adapter, observers, query_chunk=cfg.query_chunk) as session:
        for batch in ids.split(cfg.batch_size):
            session.batch = BatchInfo.from_attention_mask(torch.ones_like(batch, device=device))
            nll.append(token_nll(model(batch.to(device), use_cache=False).logits.cpu(), batch))
    return torch.cat(nll)


def policy_nll(loaded: LoadedModel, ids: torch.Tensor, kept: torch.Tensor, budget: int, positions: str,
               cfg: StreamConfig) -> torch.Tensor:
    """(N, T-1) NLL with every attention layer following the policy: one forward per batch, exact.

    kept (N, T) bool: the keys each sequence keeps besides its window of ``budget - kept.sum(1)``.
    """
    editor = PolicyMask() if positions == "original" else CachePositions(Rotation(loaded.model))
    device = next(loaded.model.parameters()).device
    nll = []
    with torch.no_grad(), capture_attention(loaded.model, loaded.adapter, mask_editors=[editor],
                                            query_chunk=cfg.query_chunk) as session:
        for start in range(0, len(ids), cfg.batch_size):
            batch = ids[start:start + cfg.batch_size]
            editor.set(kept[start:start + len(batch)], budget)
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


def _bootstrap(per_doc: torch.Tensor, seed: int) -> torch.Tensor:
    """(BOOTSTRAP_RESAMPLES,) mean over documents of per_doc (N,) or of each column pair, documents resampled."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(per_doc), (BOOTSTRAP_RESAMPLES, len(per_doc)), generator=generator)
    return per_doc[draws].mean(1)


def summarize(nll: torch.Tensor, budget: int, seed: int) -> dict:
    """Perplexity, its bootstrap 95 % interval over documents, and the NLL by position."""
    if not bool(torch.isfinite(nll).all()):
        bad = int((~torch.isfinite(nll)).any(1).nonzero()[0, 0])
        raise SinkscopeError(f"non-finite log-likelihood in document {bad}; try --dtype float32 or check the model")
    per_doc = nll.double().mean(1)  # (N,) documents have equal length, so the mean of means is the mean
    boot = _bootstrap(per_doc, seed).exp()
    past = nll[:, budget - 1:]  # targets at positions >= budget: the only ones a policy can change
    return {"perplexity": float(per_doc.mean().exp()),
            "perplexity_ci": [float(boot.quantile(q)) for q in INTERVAL],
            "perplexity_past_budget": float(past.double().mean().exp()),
            "nll_by_position": nll.double().mean(0).tolist()}


def perplexity_ratio(numerator: torch.Tensor, denominator: torch.Tensor, budget: int, seed: int) -> dict:
    """perplexity(numerator) / perplexity(denominator) on the same documents, with a paired bootstrap 95 % CI.

    numerator, denominator (N, T-1) NLL; the same resampled documents enter both means, so the interval
    reflects how consistently one policy beats the other, not how hard the documents are.
    """
    difference = (numerator.double() - denominator.double()).mean(1)  # (N,) per-document log ratio
    boot = _bootstrap(difference, seed).exp()
    past = (numerator[:, budget - 1:].double().mean() - denominator[:, budget - 1:].double().mean()).exp()
    return {"ratio": float(difference.mean().exp()), "ratio_ci": [float(boot.quantile(q)) for q in INTERVAL],
            "ratio_past_budget": float(past)}
