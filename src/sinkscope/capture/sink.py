"""Observers that turn each layer's attention into mergeable sink statistics in O(B*H*T) memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..config import QUERY_CHUNK
from ..criteria import Criteria
from ..errors import SinkscopeError
from ..metrics.sink import attention_to_keys, gu_importance, uniform_score_per_sequence
from .attention import AttentionCall, _fused_attention
from .reducers import Tally, scatter_by_position


def check_finite(call: AttentionCall) -> None:
    """Raise naming the layer and head if any real query got a non-finite output or lse."""
    valid = call.batch.valid[:, None, :]  # (B, 1, T)
    # one cheap pass: a row sum is non-finite whenever a value is; locate exactly only then
    bad = ~torch.isfinite(call.output.sum(-1, dtype=torch.float32) + call.lse) & valid  # (B, H, T)
    if bool(bad.any()):
        bad = (~torch.isfinite(call.output).all(-1) | ~torch.isfinite(call.lse)) & valid
    if bool(bad.any()):
        b, h, t = (int(i) for i in bad.nonzero()[0])
        raise SinkscopeError(
            f"non-finite attention in layer {call.layer}, head {h} (sequence {b}, position {t}); "
            "try --dtype float32 or check the model's weights"
        )


class SinkObserver:
    """Attention to a few tracked key positions, per layer, head and query position.

    Tallies (L layers, H heads, P tracked keys, T positions):
      score_sum (L, H, P) / score_count (L, P): attention to key p from real queries that see p and
          at least one other key (the paper's sink score, minus rows that are trivially 1);
      importance_sum (L, H, P) / importance_count (L, P): from every real query that sees p
          (Gu et al.'s importance, used by the sink rate);
      by_position_sum (L, H, P, T) / by_position_count (L, P, T): the same per query position;
      lse_sum (L, H, T) / position_count (T): per-query log-sum-exp by position;
      after_sum (L, H, P) / after_count (L, P): attention to key p from the real queries strictly
          after it (the target-position score used by interventions);
      gu_above (L, H, P) / gu_sequences (L): how many sequences give head h an importance of key p
          above ``gu_eps``, each sequence thresholded on its own (Gu et al.'s sink rate); and
          gu_importance_sum (L, H, P), the sum of those per-sequence importances;
      ratio_sum / ratio_sumsq / ratio_count (L,): over sequences, each sequence's head-mean score of
          the first tracked key over the score uniform attention would give it (the sink's effect size,
          with a confidence interval), and uniform_sum (L,) that uniform score.
    With ``per_sequence``, also keeps each sequence's head-mean "after" score, for confidence intervals.
    """

    def __init__(self, n_layers: int, n_heads: int, max_len: int, positions: Sequence[int] = (0,),
                 per_sequence: bool = False, gu_eps: float = Criteria.sink_rate_eps):
        self.gu_eps = gu_eps
        self.positions = tuple(positions)
        self.per_sequence: list[list[torch.Tensor]] | None = [[] for _ in range(n_layers)] if per_sequence else None
        P = len(self.positions)
        self.tally = Tally()
        tally = self.tally
        tally.zeros("score_sum", n_layers, n_heads, P)
        tally.zeros("score_count", n_layers, P, dtype=torch.int64)
        tally.zeros("importance_sum", n_layers, n_heads, P)
        tally.zeros("importance_count", n_layers, P, dtype=torch.int64)
        tally.zeros("by_position_sum", n_layers, n_heads, P, max_len)
        tally.zeros("by_position_count", n_layers, P, max_len)
        tally.zeros("lse_sum", n_layers, n_heads, max_len)
        tally.zeros("position_count", n_layers, max_len)
        tally.zeros("after_sum", n_layers, n_heads, P)
        tally.zeros("after_count", n_layers, P, dtype=torch.int64)
        tally.zeros("gu_above", n_layers, n_heads, P, dtype=torch.int64)
        tally.zeros("gu_sequences", n_layers, dtype=torch.int64)
        tally.zeros("gu_importance_sum", n_layers, n_heads, P)
        for name in ("ratio_sum", "ratio_sumsq", "ratio_count", "uniform_sum"):
            tally.zeros(name, n_layers)
        self.max_len = max_len

    def observe(self, call: AttentionCall) -> None:
        check_finite(call)
        batch, layer = call.batch, call.layer
        cols = batch.absolute(self.positions)  # (B, P)
        H = call.query.shape[1]
        index = cols[:, None, :, None].expand(-1, H, -1, call.key.shape[-1])
        keys = call.key.gather(2, index)  # (B, H, P, D)
        T = call.query.shape[2]
        visible = call.visible_block(0, T, cols) & batch.valid[:, None, :, None]  # (B, 1|H, T, P)
        attn = attention_to_keys(call.query, keys, call.lse, visible, call.scale, call.softcap,
                                 call.bias_block(0, T, cols), call.sigmoid_bias)  # (B, H, T, P)
        not_alone = (call.visible_counts() > 1)[..., None]  # (B, 1|H, T, 1)
        scored = visible & not_alone
        tally = self.tally
        tally.add("score_sum", (layer,), (attn * scored).sum((0, 2)))
        tally.add("score_count", (layer,), scored[:, 0].sum((0, 1)))
        tally.add("importance_sum", (layer,), attn.sum((0, 2)))
        tally.add("importance_count", (layer,), visible[:, 0].sum((0, 1)))
        # Gu et al. divide by the number of queries at or after the key (T - k), whatever the mask
        at_or_after = (torch.arange(T, device=cols.device)[None, :, None] >= cols[:, None, :]) & batch.valid[:, :, None]
        per_seq = gu_importance(attn, at_or_after.sum(1))  # (B, H, P); attn is already zero on padding
        tally.add("gu_above", (layer,), (per_seq > self.gu_eps).sum(0))
        tally.add("gu_sequences", (layer,), torch.tensor(per_seq.shape[0]))
        tally.add("gu_importance_sum", (layer,), per_seq.sum(0))
        after = visible & (torch.arange(T, device=cols.device)[None, None, :, None] > cols[:, None, None, :])
        after_attn = attn * after  # (B, H, T, P)
        tally.add("after_sum", (layer,), after_attn.sum((0, 2)))
        tally.add("after_count", (layer,), after[:, 0].sum((0, 1)))
        self._add_ratio(call, attn[..., 0], scored[..., 0])
        if self.per_sequence is not None:
            per_seq = after_attn.mean(1).sum(1) / after[:, 0].sum(1).clamp(min=1)  # (B, P) head-mean
            self.per_sequence[layer].append(per_seq.double().cpu())
        rel = call.batch.relative()
        valid = batch.valid
        per_pos = attn.permute(1, 3, 0, 2)  # (H, P, B, T)
        tally.add("by_position_sum", (layer,), scatter_by_position(per_pos, rel, valid, self.max_len))
        tally.add("by_position_count", (layer,),
              scatter_by_position(visible[:, 0].permute(2, 0, 1).double(), rel, valid, self.max_len))
        tally.add("lse_sum", (layer,), scatter_by_position(call.lse.transpose(0, 1), rel, valid, self.max_len))
        tally.add("position_count", (layer,), scatter_by_position(valid.double(), rel, valid, self.max_len))

    def _add_ratio(self, call: AttentionCall, attn: torch.Tensor, scored: torch.Tensor) -> None:
        """attn: (B, H, T) attention to the first tracked key; scored: (B, 1|H, T) the queries that count."""
        rows = scored[:, 0]  # (B, T): the mask is the same for every head
        seen = rows.any(-1)  # a one-token sequence has no query to score
        if not bool(seen.any()):
            return
        score = ((attn * scored).sum(-1) / scored.sum(-1).clamp(min=1)).mean(1).double()  # (B,) head mean
        uniform = uniform_score_per_sequence(rows, call.visible_counts()[:, 0])  # (B,)
        ratio = (score / uniform)[seen]
        tally, layer = self.tally, call.layer
        tally.add("ratio_sum", (layer,), ratio.sum())
        tally.add("ratio_sumsq", (layer,), (ratio * ratio).sum())
        tally.add("ratio_count", (layer,), seen.double().sum())
        tally.add("uniform_sum", (layer,), uniform[seen].sum())

    # ---- reductions (pure arithmetic on the tallies) ----
    def sink_score(self) -> torch.Tensor:
        """(L, H, P) mean attention to each tracked key."""
        return self.tally["score_sum"] / self.tally["score_count"][:, None, :].clamp(min=1)

    def score_after(self) -> torch.Tensor:
        """(L, H, P) mean attention to each tracked key from the queries strictly after it."""
        return self.tally["after_sum"] / self.tally["after_count"][:, None, :].clamp(min=1)

    def per_sequence_after(self, layer: int | None = None) -> torch.Tensor:
        """(N, L, P) each sequence's head-mean attention to each tracked key from the queries after it; (N, P) at
        one ``layer`` (a sweep stopped after it left the later layers empty)."""
        if layer is not None:
            return torch.cat(self.per_sequence[layer])
        return torch.stack([torch.cat(rows) for rows in self.per_sequence], dim=1)

    def importance(self) -> torch.Tensor:
        """(L, H, P) Gu et al.'s importance of each tracked key."""
        return self.tally["importance_sum"] / self.tally["importance_count"][:, None, :].clamp(min=1)

    def sink_share(self) -> torch.Tensor:
        """(L, H, P) share of sequences in which head h sinks on key p (Gu et al., per sequence)."""
        return self.tally["gu_above"].double() / self.tally["gu_sequences"].clamp(min=1)[:, None, None]

    def gu_sink_rate(self) -> torch.Tensor:
        """(P,) Gu et al.'s sink rate in percent: share of (sequence, layer, head) triples that sink on p."""
        return 100.0 * self.sink_share().mean((0, 1))

    def gu_importance_mean(self) -> torch.Tensor:
        """(L, H, P) per-sequence Gu importance averaged over sequences."""
        return self.tally["gu_importance_sum"] / self.tally["gu_sequences"].clamp(min=1)[:, None, None]

    def by_position(self) -> torch.Tensor:
        """(L, H, P, T) mean attention to each tracked key from queries at each position (NaN if none)."""
        return self.tally.per_head_mean("by_position_sum", "by_position_count")

    def lse_by_position(self) -> torch.Tensor:
        """(L, H, T) mean per-query log-sum-exp by position."""
        return self.tally.per_head_mean("lse_sum", "position_count")


class KeyStatsObserver:
    """Opt-in exact T x S pass, chunked over queries so memory stays O(B*H*chunk*S).

    Tallies: key_importance_sum (L, H, T) / key_seen_count (L, T): Gu et al.'s importance of every
    key position; eff_tokens_sum (L, H, T): sum over samples of 1 / sum_j a_tj^2 (the effective
    number of aggregated tokens); with ``full_pattern``, pattern_sum (L, H, T, T) / pattern_count (T, T).
    """

    def __init__(self, n_layers: int, n_heads: int, max_len: int, chunk: int = QUERY_CHUNK, full_pattern: bool = False):
        self.chunk = chunk
        self.full_pattern = full_pattern
        self.max_len = max_len
        self.tally = Tally()
        tally = self.tally
        tally.zeros("key_importance_sum", n_layers, n_heads, max_len)
        tally.zeros("key_seen_count", n_layers, max_len)
        tally.zeros("eff_tokens_sum", n_layers, n_heads, max_len)
        tally.zeros("eff_tokens_count", n_layers, max_len)
        if full_pattern:
            tally.zeros("pattern_sum", n_layers, n_heads, max_len, max_len)
            tally.zeros("pattern_count", n_layers, max_len, max_len)

    def observe(self, call: AttentionCall) -> None:
        batch, layer = call.batch, call.layer
        T = call.query.shape[2]
        rel = call.batch.relative()  # (B, T)
        valid = batch.valid
        tally = self.tally
        for t0 in range(0, T, self.chunk):
            t1 = min(T, t0 + self.chunk)
            q_valid = valid[:, t0:t1]  # (B, C)
            probs = call.probs_block(t0, t1) * q_valid[:, None, :, None]  # (B, H, C, S)
            seen = call.visible_block(t0, t1)[:, 0] & q_valid[:, :, None] & valid[:, None, :]  # (B, C, S)
            # importance: sum over queries into key bins
            tally.add("key_importance_sum", (layer,),
                  scatter_by_position(probs.sum(2).transpose(0, 1), rel, valid, self.max_len))
            tally.add("key_seen_count", (layer,), scatter_by_position(seen.sum(1).double(), rel, valid, self.max_len))
            sumsq = (probs * probs).sum(-1)  # (B, H, C)
            eff = torch.where(q_valid[:, None], 1.0 / sumsq.clamp_min(1e-30), 0.0)
            rel_q = rel[:, t0:t1]
            tally.add("eff_tokens_sum", (layer,),
                      scatter_by_position(eff.transpose(0, 1), rel_q, q_valid, self.max_len))
            tally.add("eff_tokens_count", (layer,), scatter_by_position(q_valid.double(), rel_q, q_valid, self.max_len))
            if self.full_pattern:
                self._add_pattern(layer, probs, seen, rel, t0, t1)

    def _add_pattern(self, layer, probs, seen, rel, t0, t1) -> None:
        for b in range(probs.shape[0]):
            shift = int(-rel[b, 0])  # index of the first real token
            q_lo = max(t0, shift)
            if q_lo >= t1:
                continue
            k_len = self.max_len - shift if shift else probs.shape[-1]
            block = probs[b, :, q_lo - t0:, shift:shift + k_len]  # (H, C', S')
            rows = slice(q_lo - shift, q_lo - shift + block.shape[1])
            self.tally["pattern_sum"][layer, :, rows, : block.shape[2]] += block.double().cpu()
            self.tally["pattern_count"][layer, rows, : block.shape[2]] += seen[b, q_lo - t0:, shift:shift + k_len].double().cpu()

    def key_importance(self) -> torch.Tensor:
        """(L, H, T) mean attention each key position receives from the queries that see it."""
        return self.tally.per_head_mean("key_importance_sum", "key_seen_count")

    def effective_tokens(self) -> torch.Tensor:
        """(L, H, T) mean effective number of aggregated tokens, 1 / sum_j a_tj^2, by query position."""
        return self.tally.per_head_mean("eff_tokens_sum", "eff_tokens_count")

    def pattern(self) -> torch.Tensor:
        """(L, H, T, T) mean attention pattern over samples, aligned at the first real token."""
        return self.tally.per_head_mean("pattern_sum", "pattern_count")


class EffectiveTokensObserver:
    """The effective number of aggregated tokens, 1 / sum_j a_tj^2, by query position, in O(B*H*T).

    For the first ``max_positions`` positions (those of the chain's per-position variance) and the
    last position of the longest sequences, without the T x S pass of
    :class:`KeyStatsObserver`, which gives every position (see
    :func:`squared_weight_sum`). Tallies:
    eff_tokens_sum (L, H, T) / eff_tokens_count (L, T), as in :class:`KeyStatsObserver`.
    """

    def __init__(self, n_layers: int, n_heads: int, max_len: int, max_positions: int, chunk: int = QUERY_CHUNK):
        self.chunk, self.max_len, self.tracked = chunk, max_len, max_positions
        self.tally = tally = Tally()
        tally.zeros("eff_tokens_sum", n_layers, n_heads, max_len)
        tally.zeros("eff_tokens_count", n_layers, max_len)

    def observe(self, call: AttentionCall) -> None:
        valid, rel, T = call.batch.valid, call.batch.relative(), call.query.shape[2]
        lead = squared_weight_sum(call, self.tracked + int(call.batch.first.max()), self.chunk)  # (B, H, R)
        R = lead.shape[-1]
        self._add(call.layer, lead, rel[:, :R], valid[:, :R] & (rel[:, :R] < self.tracked))  # no partial positions
        last = valid[:, T - 1:] & (rel[:, T - 1:] == self.max_len - 1)  # (B, 1): sequences of the longest length
        if R < T and bool(last.any()):
            self._add(call.layer, call.probs_block(T - 1, T).square().sum(-1), rel[:, T - 1:], last)

    def _add(self, layer: int, sumsq: torch.Tensor, rel: torch.Tensor, valid: torch.Tensor) -> None:
        eff = torch.where(valid[:, None], 1.0 / sumsq.clamp_min(1e-30), 0.0)  # (B, H, R)
        self.tally.add("eff_tokens_sum", (layer,), scatter_by_position(eff.transpose(0, 1), rel, valid, self.max_len))
        self.tally.add("eff_tokens_count", (layer,), scatter_by_position(valid.double(), rel, valid, self.max_len))

    def effective_tokens(self) -> torch.Tensor:
        """(L, H, T) mean effective number of aggregated tokens by query position (NaN where not computed)."""
        return self.tally.per_head_mean("eff_tokens_sum", "eff_tokens_count")


def squared_weight_sum(call: AttentionCall, rows: int, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """sum_j a_tj^2 of the queries t < rows over the keys each attends: (B, H, R) float32.

    Causal queries t < rows see only keys < rows, so only that corner is read (R = rows); otherwise
    R = T. Softmax attention that a fused kernel runs (no cap, bias or isolated row) gives
    exp(lse2 - 2 lse) with lse2 = log sum_j exp(2 s_tj), the fused kernel's log-sum-exp at twice the
    logit scale: O(B*H*R) memory. Else the exact weights, ``chunk`` queries at a time.
    """
    T, S = call.query.shape[2], call.key.shape[2]
    if rows < T and call.causal and S == T:
        cut = lambda x: None if x is None else x[:, :, :rows, :rows]  # noqa: E731
        call = replace(call, query=call.query[:, :, :rows], key=call.key[:, :, :rows], value=call.value[:, :, :rows],
                       visible=cut(call.visible), bias=cut(call.bias), lse=call.lse[:, :, :rows])
    fused = None if call.isolated is not None else _fused_attention(call, 2 * call.scale)
    if fused is not None:
        return torch.exp(fused[1] - 2 * call.lse)
    R = call.query.shape[2]
    return torch.cat([call.probs_block(t0, min(R, t0 + chunk)).square().sum(-1) for t0 in range(0, R, chunk)], 2)
