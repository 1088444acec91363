"""KV-cache policies as visibility rules, and their exact simulation through the attention interface.

A policy with budget B keeps a set of sink keys plus the most recent ``B - |sinks|`` tokens. With
``original`` positions every token keeps its own position, so the policy is exactly a mask: query i
attends key j iff j <= i and (j is a kept sink or i - j < window). ``keep_first=k`` keeps keys 0..k-1
(StreamingLLM); the discovered policy keeps the keys sinkscope found acting as sinks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capture.attention import AttentionCall
from ..errors import SinkscopeError


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


class PolicyMask:
    """Mask editor that makes every attention layer follow one policy mask (N, T, T) for the current batch.

    The caller sets ``mask`` to the batch's rows before each forward.
    """

    def __init__(self, mask: torch.Tensor | None = None):
        self.mask = mask

    def __call__(self, call: AttentionCall) -> None:
        T, S = call.query.shape[2], call.key.shape[2]
        block = self.mask[:, None, S - T:S, :S].to(call.query.device)  # (B, 1, T, S)
        call.visible = block if call.visible is None else call.visible & block
