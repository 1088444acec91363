"""How much attention each head sends to its learned sink logit rather than to any real key."""

from __future__ import annotations

import torch

from ..metrics.learned_sink import learned_sink_share
from .attention import AttentionCall
from .reducers import Tally


class LearnedSinkObserver:
    """Tallies (L layers, H heads): mass_sum (L, H) over real queries, row 0 included; query_count (L,);
    sink_layers (L,) > 0 where the layer's attention has a learned sink logit.

    Sigmoid attention has no normalisation to take mass from, and softmax without a sink logit
    gives every bit to real keys: both add exactly zero mass.
    """

    def __init__(self, n_layers: int, n_heads: int):
        self.tally = Tally()
        self.tally.zeros("mass_sum", n_layers, n_heads)
        self.tally.zeros("query_count", n_layers, dtype=torch.int64)
        self.tally.zeros("sink_layers", n_layers, dtype=torch.int64)

    def observe(self, call: AttentionCall) -> None:
        valid = call.batch.valid  # (B, T)
        self.tally.add("query_count", (call.layer,), valid.sum())
        if call.sink_logit is None or call.sigmoid_bias is not None:
            return
        share = learned_sink_share(call.sink_logit, call.lse) * valid[:, None, :]  # (B, H, T)
        self.tally.add("mass_sum", (call.layer,), share.sum((0, 2), dtype=torch.float64))
        self.tally.add("sink_layers", (call.layer,), torch.ones((), dtype=torch.int64))

    def mass(self) -> torch.Tensor:
        """(L, H) mean share of a real query's attention that goes to the learned sink."""
        return self.tally["mass_sum"] / self.tally["query_count"][:, None].clamp(min=1)

    def has_learned_sink(self) -> bool:
        return bool((self.tally["sink_layers"] > 0).any())
