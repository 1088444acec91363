"""KV-cache policies as visibility rules, and their exact simulation in one parallel pass.

A policy with budget B keeps a set of sink keys plus the most recent ``W = B - |sinks|`` tokens.
``keep_first=k`` keeps keys 0..k-1 (StreamingLLM); the discovered policy keeps the token classes that
act as sinks and pay off on calibration text.

With ``original`` positions every token keeps its own position, so the policy is exactly a mask: query
i attends key j iff j <= i and (j is a kept sink or i - j < W).

With ``cache`` positions (StreamingLLM, :class:`~sinkscope.stream.cache.SinkCache`) the cache holds, when
query i arrives, the kept keys older than its window, ``s_i = #{kept j <= i - W}`` of them, then the W
tokens i-W+1..i, at consecutive positions ending at i. Rotary attention sees only distances, so a window
key keeps its true distance i - j, and the kept key of rank r (0-based among the kept) sits at slot r of
``s_i + W``, distance ``W - 1 + s_i - r`` instead of i - j. Keys and values are those each token computed
when it was the query, as in decoding. So one pass reproduces token-by-token decoding exactly: the window
by mask, and each evicted kept key as an extra key whose logit uses its key rotated to position
``i - (W - 1 + s_i - r)`` (:class:`CachePositions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capture.attention import AttentionCall
from ..errors import SinkscopeError
from .cache import Rotation


@dataclass(frozen=True)
class Policy:
    """One cache policy: which keys stay besides the recent window, under a total budget."""

    budget: int  # B: most keys any query may attend (kept sinks + recent window)
    keep_first: int | None  # k first tokens kept; None for the discovered policy (sinks from ``kept``)
    name: str  # label in stream.json and the report ("window", "first-4", "discovered", "full")

    @property
    def discovered(self) -> bool:
        return self.keep_first is None


def window_size(budget: int, n_kept: int) -> int:
    if n_kept >= budget:
        raise SinkscopeError(f"--budget {budget} leaves no room for a recent window beside {n_kept} kept tokens; "
                             "raise --budget or keep fewer tokens")
    return budget - n_kept


def policy_mask(kept: torch.Tensor, budget: int) -> torch.Tensor:
    """(N, T, T) bool visibility of query i to key j under the policy (original positions).

    kept: (N, T) bool, keys that stay in the cache once seen (the first k, or the discovered sinks).
    Each sequence's window is ``budget - kept.sum()`` so every query sees at most ``budget`` keys.
    """
    N, T = kept.shape
    window = budget - kept.sum(1)  # (N,)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i  # (T, T)
    recent = (i - j)[None] < window[:, None, None]  # (N, T, T)
    return causal[None] & (kept[:, None, :] | recent)


def first_tokens(n: int, seq_len: int, k: int) -> torch.Tensor:
    """(n, seq_len) bool: keys 0..k-1 kept."""
    kept = torch.zeros(n, seq_len, dtype=torch.bool)
    kept[:, :k] = True
    return kept


def kept_index(kept: torch.Tensor) -> torch.Tensor:
    """(N, K) long: each sequence's kept keys in stream order, padded with -1 (K = most kept in a sequence)."""
    K = int(kept.sum(1).max()) if kept.numel() else 0
    ranked = torch.where(kept, torch.arange(kept.shape[1]), kept.shape[1]).sort(1).values[:, :K]
    return torch.where(ranked < kept.shape[1], ranked, -1)


class PolicyMask:
    """Mask editor: every attention layer follows the policy in original positions, for the current batch.

    The caller calls :meth:`set` with the batch's kept keys before each forward.
    """

    mask: torch.Tensor | None = None  # (B, T, T) bool, from policy_mask

    def set(self, kept: torch.Tensor, budget: int) -> None:
        self.mask = policy_mask(kept, budget)

    def __call__(self, call: AttentionCall) -> None:
        T, S = call.query.shape[2], call.key.shape[2]
        block = self.mask[:, None, S - T:S, :S].to(call.query.device)  # (B, 1, T, S)
        call.visible = block if call.visible is None else call.visible & block


class CachePositions:
    """Mask editor: every attention layer follows the policy in cache positions (module docstring), exactly.

    The caller calls :meth:`set` with the batch's kept keys before each forward; the pass must start at the
    first token of the stream (no KV cache), with position ids 0..T-1.

    A kept key of rank r held while s_i kept keys are outside query i's window sits at distance
    ``W - 1 + (s_i - r)``, and s_i - r takes only the values 1..K: so each kept key is re-rotated K times per
    layer (not once per query), and the logit of query i is ``R(-i) q_i . R(-(W - 1 + u)) R(-j_r) k_r``, each
    rotation an exact inverse of the model's own or one by a small distance. What depends only on the kept
    keys and T (window mask, which keys each query holds, the rotations) is computed once per forward.
    """

    kept: torch.Tensor | None = None  # (B, K) kept key indices in stream order, -1 padded
    window: torch.Tensor | None = None  # (B,) W = budget - kept per sequence

    def __init__(self, rotation: Rotation):
        self.rotation = rotation
        self._layout: dict | None = None

    def set(self, kept: torch.Tensor, budget: int) -> None:
        self.kept, self.window = kept_index(kept), budget - kept.sum(1)
        self._layout = None

    def __call__(self, call: AttentionCall) -> None:
        if call.softcap is not None or call.bias is not None or call.sigmoid_bias is not None:
            raise SinkscopeError("--positions cache re-positions plain softmax attention only; "
                                 "use --positions original")
        layout = self._layout_for(call)
        call.visible = layout["recent"] if call.visible is None else call.visible & layout["recent"]
        if self.kept.shape[1]:
            call.extra_keys = self._evicted_sinks(call, layout)

    def _layout_for(self, call: AttentionCall) -> dict:
        """The forward's geometry, shared by its layers: computed at the first layer, reused by the others."""
        T, device = call.query.shape[2], call.query.device
        if self._layout is not None and self._layout["T"] == T and self._layout["device"] == device:
            return self._layout
        window, kept = self.window.to(device), self.kept.to(device)
        B, K = kept.shape
        i = torch.arange(T, device=device)
        distance = i[:, None] - i[None, :]  # (T, S) query minus key
        recent = (distance >= 0)[None] & (distance[None] < window[:, None, None])  # (B, T, S)
        index = kept.clamp(min=0)
        evicted = (kept >= 0)[:, None, :] & (index[:, None, :] <= (i[None, :] - window[:, None])[..., None])  # (B,T,K)
        held = evicted.sum(-1, keepdim=True)  # (B, T, 1): s_i
        u = (held - torch.arange(K, device=device)).clamp(1, K) - 1  # (B, T, K): s_i - r - 1 where evicted
        moves = window[:, None] - 1 + torch.arange(1, K + 1, device=device)  # (B, K): the K distances W - 1 + u
        like = call.query[:1, :1, :1].float()
        self._layout = {
            "T": T, "device": device, "recent": recent[:, None], "index": index, "evicted": evicted[:, None],
            "column": (torch.arange(K, device=device) * K + u)[:, None],  # (B, 1, T, K) into the K*K moved keys
            "unrotate_keys": self.rotation.cos_sin(like, index),  # R(-j_r), each kept key's own position
            "unrotate_queries": self.rotation.cos_sin(like, i[None]),  # R(-i)
            "move": self.rotation.cos_sin(like, moves.repeat(1, K)),  # (r, u) -> u
        }
        return self._layout

    def _evicted_sinks(self, call: AttentionCall, layout: dict):
        """Logits (B, H, T, K) and values (B, H, K, Dv) of the kept keys outside each query's window."""
        B, H, T, D = call.query.shape
        K = self.kept.shape[1]
        index = layout["index"]
        rows = torch.arange(B, device=index.device)[:, None]
        keys = call.key.transpose(1, 2)[rows, index].transpose(1, 2)  # (B, H, K, D), rotated at their own index
        values = call.value.transpose(1, 2)[rows, index].transpose(1, 2)  # (B, H, K, Dv)
        pre_rotary = Rotation.rotate(keys.float(), *layout["unrotate_keys"], inverse=True)  # (B, H, K, D)
        moved = Rotation.rotate(pre_rotary.repeat_interleave(K, dim=2), *layout["move"], inverse=True)  # (B,H,K*K,D)
        queries = Rotation.rotate(call.query.float(), *layout["unrotate_queries"], inverse=True)  # (B, H, T, D)
        every = torch.matmul(queries, moved.transpose(-1, -2)) * call.scale  # (B, H, T, K*K): each (r, u)
        logits = every.gather(3, layout["column"].expand(-1, H, -1, -1))  # (B, H, T, K)
        return logits.masked_fill(~layout["evicted"], -torch.inf), values
