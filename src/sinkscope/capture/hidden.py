"""Residual-stream statistics from block outputs, streamed per layer (no activation cache)."""

from __future__ import annotations


import torch

from ..errors import SinkscopeError
from ..metrics.disparity import dominance_ratio
from ..metrics.norms import token_norms
from .attention import BatchInfo
from .hooks import BlockOutputObserver
from .reducers import Tally, effective_rank_sum, scatter_by_position


class HiddenObserver(BlockOutputObserver):
    """Per layer (block output) and position: L2 norm; per layer: tracked tokens' DomRatio and max |x|.

    Tallies: norm_sum (L, T) / count (L, T); dom_ratio_sum (L, P) / dom_count (L) for the tracked
    positions (counted from the first real token; the first is the sink); max_abs (L) over real tokens;
    with ``effective_rank``, erank_sum (L): each sequence's effective rank of its (T, D) block output.
    """

    def __init__(self, n_layers: int, max_len: int, positions: tuple[int, ...] = (0,), effective_rank: bool = False):
        self.max_len = max_len
        self.positions = positions
        self.with_rank = effective_rank
        self.batch: BatchInfo | None = None
        self.tally = tally = Tally()
        tally.zeros("norm_sum", n_layers, max_len)
        tally.zeros("count", n_layers, max_len)
        tally.zeros("dom_ratio_sum", n_layers, len(positions))
        tally.zeros("dom_count", n_layers)
        tally.zeros("max_abs", n_layers)
        tally.zeros("erank_sum", n_layers)

    def observe(self, layer: int, hidden: torch.Tensor) -> None:
        batch = self.batch.to(hidden.device)
        valid = batch.valid
        norms = token_norms(hidden)  # (B, T) float32, non-finite wherever a hidden value is
        finite = torch.isfinite(norms) | ~valid
        if not bool(finite.all()):  # confirm value by value (a norm can also overflow)
            finite = torch.isfinite(hidden).all(-1) | ~valid
        if not bool(finite.all()):
            b, pos = (int(i) for i in (~finite).nonzero()[0])
            raise SinkscopeError(f"non-finite hidden state after layer {layer} (sequence {b}, position {pos}); "
                                 "try --dtype float32 or check the model's weights")
        rel = batch.relative()
        tally = self.tally
        tally.add("norm_sum", (layer,), scatter_by_position(norms, rel, valid, self.max_len))
        tally.add("count", (layer,), scatter_by_position(valid.double(), rel, valid, self.max_len))
        cols = batch.absolute(self.positions)  # (B, P)
        tracked = hidden.gather(1, cols[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, P, D)
        tally.add("dom_ratio_sum", (layer,), dominance_ratio(tracked).sum(0))
        tally.add("dom_count", (layer,), torch.tensor(float(hidden.shape[0])))
        max_abs = torch.maximum(hidden.amax(-1), -hidden.amin(-1)).float()  # (B, T); 7x an inf-norm's speed on CPU
        tally.add("max_abs", (layer,), max_abs.masked_fill(~valid, 0).amax())
        if self.with_rank:
            tally.add("erank_sum", (layer,), effective_rank_sum(hidden, valid))

    def norm_by_position(self) -> torch.Tensor:
        """(L, T) mean L2 norm of the block output by position (NaN where no token was seen)."""
        count = self.tally["count"]
        return self.tally["norm_sum"] / count.where(count > 0, torch.nan)

    def dom_ratio(self) -> torch.Tensor:
        """(L, P) mean DomRatio of each tracked token's hidden state."""
        return self.tally["dom_ratio_sum"] / self.tally["dom_count"].clamp(min=1)[:, None]

    def effective_rank(self) -> torch.Tensor:
        """(L,) mean effective rank of the sequences' block outputs (zeros unless ``effective_rank``)."""
        return self.tally["erank_sum"] / self.tally["dom_count"].clamp(min=1)

    def sink_dom_ratio(self) -> torch.Tensor:
        """(L,) mean DomRatio of the first tracked token (the sink) hidden state."""
        return self.dom_ratio()[:, 0]
