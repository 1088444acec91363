"""Per-position tallies from which any neuron's selectivity (method.md section 3) follows exactly.

Which neurons to trace is only known once the sweep is over, so this observer keeps, for the first
``Tp`` positions of every layer, the sums over sequences of the MLP input x, of x / |x| and of
every channel's activation. cos(x, w) = (x / |x|) . w / |w| and x . w are linear in those sums, so
the mean selectivity of any neuron is a dot product at reduction time, with no second sweep.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import Adapter, block_part, mlp_input_module
from .attention import BatchInfo
from .hooks import as_tokens
from .reducers import Tally, add_rows_by_position


class SelectivityObserver:
    """MLP input and down-projection input by position, for the first ``Tp`` positions.

    Tallies (L layers, Tp = min(T, max_positions), D MLP input width, I channels): count (L, Tp)
    tokens per position; x_sum / unit_sum (L, Tp, D): sums of x and of x / |x|; act_sum (L, Tp, I):
    sums of the down projection's input. Memory is L x Tp x (2D + I) doubles, bounded by
    ``max_positions`` whatever the data (Llama-2-7B at 64 positions: 32 x 64 x 19,200 x 8 B = 315 MB).
    """

    batch: BatchInfo | None = None  # set by the runner before every forward

    def __init__(self, n_layers: int, width: int, n_channels: int, max_len: int, max_positions: int,
                 layers: list[int] | None = None):
        self.tracked = min(max_len, max_positions)
        self.layers = list(range(n_layers)) if layers is None else layers  # blocks with a dense FFN
        self.tally = tally = Tally()
        tally.zeros("count", n_layers, self.tracked)
        tally.zeros("x_sum", n_layers, self.tracked, width)
        tally.zeros("unit_sum", n_layers, self.tracked, width)
        tally.zeros("act_sum", n_layers, self.tracked, n_channels)

    def hooks(self, model: nn.Module, adapter: Adapter) -> tuple[list, list]:
        """(forward pre-hooks, no forward hooks) on every dense layer's first MLP projection and down projection."""
        pre = []
        for layer in self.layers:
            pre.append((mlp_input_module(model, adapter, layer), self._input_hook(layer)))
            pre.append((block_part(model, adapter, layer, "mlp_down"), self._activation_hook(layer)))
        return pre, []

    def _input_hook(self, layer: int):
        def hook(module, args):
            batch = self.batch
            x = as_tokens(args[0], batch)[:, : self.tracked + int(batch.first.max())].float()
            unit = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            tally = self.tally
            count = add_rows_by_position(tally["x_sum"][layer], x, batch.first, batch.valid)
            add_rows_by_position(tally["unit_sum"][layer], unit, batch.first, batch.valid)
            tally.add("count", (layer,), count)
        return hook

    def _activation_hook(self, layer: int):
        def hook(module, args):
            add_rows_by_position(self.tally["act_sum"][layer], as_tokens(args[0], self.batch), self.batch.first,
                                 self.batch.valid)
        return hook
