"""Sink metrics: pure functions on tensors. Nothing here touches a model.

Conventions: B batch, H query heads, T queries, S keys, P tracked key positions, L layers.
Attention probabilities are always computed in float32.
"""

from __future__ import annotations

import math

import torch


def softcap_logits(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma2's attention-logit soft-capping, cap * tanh(logits / cap); identity when cap is None."""
    if softcap is None:
        return logits
    return torch.tanh(logits / softcap) * softcap


def attention_to_keys(query: torch.Tensor, keys: torch.Tensor, lse: torch.Tensor, visible: torch.Tensor,
                      scale: float, softcap: float | None = None, bias: torch.Tensor | None = None,
                      sigmoid_bias: float | None = None) -> torch.Tensor:
    """Exact attention probabilities from every query to a few keys, without the T x S matrix.

    a[b, h, t, p] = exp(logit(q_t, k_p) - lse_t), zero where key p is not visible to query t.
    For sigmoid attention (``sigmoid_bias`` set) a = sigmoid(logit + sigmoid_bias) and lse is unused.

    query:   (B, H, T, D)   after rotary, as the attention function receives it
    keys:    (B, H, P, D)   the tracked keys, already expanded to query heads
    lse:     (B, H, T)      per-query log-sum-exp of the (masked, capped) logits
    visible: (B, 1|H, T, P) bool, whether query t may attend key p
    bias:    (B, 1|H, T, P) float mask values added to the logits (ALiBi-style or soft masks), optional
    returns  (B, H, T, P)   float32
    """
    logits = torch.einsum("bhtd,bhpd->bhtp", query.float(), keys.float()) * scale
    logits = softcap_logits(logits, softcap)
    if bias is not None:
        logits = logits + bias.float()
    if sigmoid_bias is not None:
        probs = torch.sigmoid(logits + sigmoid_bias)
    else:
        probs = torch.exp(logits - lse.float().unsqueeze(-1))
    return torch.where(visible, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))


def sink_score_from_pattern(attn: torch.Tensor, key: int = 0) -> torch.Tensor:
    """Brute-force sink score of ``key`` from full causal patterns (reference implementation).

    attn: (N, H, T, T) attention probabilities of N sequences with no padding.
    returns (H,): attention to ``key`` averaged over samples and over the queries that can see
    a key other than ``key`` (rows t > key for causal patterns; every row but a lone one otherwise).
    """
    n_visible = (attn > 0).sum(-1)  # (N, H, T)
    rows = n_visible > 1
    col = attn[..., key]  # (N, H, T)
    return (col * rows).sum((0, 2)) / rows.sum((0, 2)).clamp(min=1)


def key_importance_from_pattern(attn: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Brute-force Gu et al. importance of every key: mean attention over the queries that can see it.

    attn: (N, H, T, T) with no padding. returns (H, T).
    """
    T = attn.shape[-1]
    if causal:
        seen_by = torch.arange(T, 0, -1, device=attn.device, dtype=attn.dtype)  # key j is seen by T - j queries
    else:
        seen_by = torch.full((T,), float(T), device=attn.device, dtype=attn.dtype)
    return attn.sum(2).mean(0) / seen_by


def gu_importance(attn_to_key: torch.Tensor, n_queries: torch.Tensor) -> torch.Tensor:
    """Gu et al.'s importance of a key in one sequence: its attention column summed over queries / (T - k).

    attn_to_key: (B, H, T, P) attention from every query to P keys, zero for queries that do not count
                 (padding); row k itself is included, as in the reference code.
    n_queries:   (B, P) number of real queries at or after each key (T - k without padding)
    returns      (B, H, P) float32
    """
    return attn_to_key.float().sum(2) / n_queries[:, None, :].clamp(min=1).float()


def sink_rate(importance: torch.Tensor, eps: float) -> float:
    """Share, in percent, of the entries of ``importance`` that exceed eps (strictly).

    Gu et al.'s Sink_k^eps takes importance (N, L, H): one value per sequence, layer and head,
    each thresholded on its own. Given the sample-averaged (L, H) it gives sinkscope's pooled rate.
    """
    return 100.0 * (importance > eps).float().mean().item()


def onset_layer(sink_score_per_layer: torch.Tensor, threshold: float) -> int | None:
    """First (0-based) layer whose head-mean sink score exceeds ``threshold``; None if no layer does.

    sink_score_per_layer: (L,)
    """
    above = (sink_score_per_layer > threshold).nonzero()
    return int(above[0, 0]) if len(above) else None


def uniform_attention_baseline(seq_len: int) -> float:
    """Mean attention a key would get from causal queries t >= 1 if every query attended uniformly.

    The reference level for a sink score: (1/T-1) * sum_{t=1}^{T-1} 1/(t+1).
    """
    if seq_len < 2:
        return 1.0
    return sum(1.0 / (t + 1) for t in range(1, seq_len)) / (seq_len - 1)


def uniform_score_per_sequence(scored: torch.Tensor, visible_counts: torch.Tensor) -> torch.Tensor:
    """Per sequence, the sink score a key would get if every scored query attended uniformly.

    scored: (B, T) bool, the queries whose attention to the key counts; visible_counts: (B, T) keys
    each query sees. Returns (B,) mean of 1 / visible_count over the scored queries (causal, padded
    and bidirectional masks alike; the causal T-token value is :func:`uniform_attention_baseline`).
    """
    share = torch.where(scored, 1.0 / visible_counts.clamp(min=1).double(), 0.0)
    return share.sum(-1) / scored.sum(-1).clamp(min=1)


def ratio_interval(total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor, confidence: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and two-sided normal confidence interval of per-sequence values from their running sums.

    total, total_sq, count: (L,) sums over sequences of x, x^2 and 1. Returns (mean, low, high), each
    (L,); NaN where no sequence was seen, a zero-width interval for a single sequence.
    """
    n = count.double()
    mean = total / n.where(n > 0, torch.nan)
    var = (total_sq / n.where(n > 0, torch.nan) - mean * mean).clamp_min(0) * n / (n - 1).clamp(min=1)
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    half = z * (var / n.clamp(min=1)).sqrt()
    return mean, mean - half, mean + half


def relative_onset(excess: torch.Tensor, present: torch.Tensor, fraction: float) -> int | None:
    """First layer with a sink (``present``) whose excess over uniform reaches ``fraction`` of the peak's.

    excess: (L,) head-mean sink score minus its uniform baseline; present: (L,) bool. None when no
    layer has a sink. The peak is taken over the layers with a sink.
    """
    if not bool(present.any()):
        return None
    peak = float(excess[present].max())
    reached = present & (excess >= min(fraction * peak, peak))  # a peak below uniform (excess < 0) still reaches itself
    return int(reached.nonzero()[0, 0])
