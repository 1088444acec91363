"""Per-sequence activation peaks as the peers read them, reduced to mergeable tallies.

- :class:`LayerMagnitudeObserver` (Sun et al. 2024): each block's output, per sequence, top-1/2/3
  and median |x| over all its real tokens and dims, kept per sequence (N x L x 4 floats), and
  where the top-1 sits (dim, position).
- :class:`DownProjSpikeObserver` (Yu et al. 2024): per sequence and layer, the largest |x| at the
  down projection's input and output, with its channel; a layer where both spike above Yu's
  threshold holds a super weight at (layer, output channel, input channel).

Each sequence is read on its own real tokens (padding never enters), which is what the peers'
scripts see: they feed one unpadded sequence per forward.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import Adapter
from ..metrics.magnitudes import SUN_STATS, layer_magnitudes, sequence_medians, top_spike
from .attention import BatchInfo
from .hooks import as_tokens, BlockOutputObserver, block_output_tensor, input_output_hooks
from .reducers import Tally


def real_tokens(x: torch.Tensor, batch: BatchInfo, row: int) -> torch.Tensor:
    """(T_b, W) the real tokens of sequence ``row`` of a (B, T, W) activation."""
    return x[row, int(batch.first[row]):int(batch.last[row]) + 1]


class SharedMedians:
    """Each sequence's median |x| of one hidden-state tensor, taken once for the observers that read it.

    Sun's layer magnitudes read block k's output and the disparity observer the residual stream entering
    layer k + 1: the same tensor, and the median is the costliest step of each (about 5 ms per 2,048 x 576
    sequence). The last tensor is held, so no other tensor can take its address while it is remembered.
    """

    def __init__(self):
        self._last: tuple | None = None

    def __call__(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B,) medians of hidden (B, T, D) over the real tokens ``valid`` (B, T)."""
        medians = self.known(hidden, valid)
        if medians is None:
            medians = sequence_medians(hidden, valid)
            self._last = (hidden, hidden._version, valid, medians)
        return medians

    def known(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """The medians if this very tensor (unchanged since) was the last one asked about, else None."""
        last = self._last
        if (last is not None and last[0] is hidden and last[1] == hidden._version
                and last[2].shape == valid.shape and bool((last[2] == valid).all())):
            return last[3]
        return None


class LayerMagnitudeObserver(BlockOutputObserver):
    """Tallies (N sequences, L layers, D dims, T positions): per_sequence (N, L, 4), each sequence's
    four Sun stats in its global slot (so shards of a torchrun job fill disjoint rows and a summed
    reduce gathers them exactly); top1_dim_hits (L, D) and top1_position_hits (L, T): how often the
    top-1 |x| sits at each dim and position (counted from the first real token).

    Sequence k of this process is global sequence ``rank + k * world`` (probe shards ``seqs[rank::world]``).
    """

    def __init__(self, n_layers: int, hidden: int, max_len: int, n_sequences: int, rank: int = 0, world: int = 1,
                 medians: SharedMedians | None = None):
        self.batch: BatchInfo | None = None
        self.medians = medians or SharedMedians()
        self.rank, self.world = rank, world
        self.seen = [0] * n_layers  # sequences this process has passed through each layer
        self.tally = tally = Tally()
        tally.zeros("per_sequence", n_sequences, n_layers, len(SUN_STATS))
        tally.zeros("top1_dim_hits", n_layers, hidden, dtype=torch.int64)
        tally.zeros("top1_position_hits", n_layers, max_len, dtype=torch.int64)

    def observe(self, layer: int, hidden: torch.Tensor) -> None:
        batch, tally = self.batch.to(hidden.device), self.tally
        medians = self.medians(hidden, batch.valid)  # (B,)
        for row in range(hidden.shape[0]):
            x = real_tokens(hidden, batch, row)  # (T_b, D)
            _, token, dim = top_spike(x)
            tally.add("per_sequence", (self.rank + self.world * self.seen[layer], layer),
                      layer_magnitudes(x, medians[row]))
            tally.add("top1_dim_hits", (layer, dim), torch.tensor(1))
            tally.add("top1_position_hits", (layer, token), torch.tensor(1))
            self.seen[layer] += 1

    def mean(self) -> torch.Tensor:
        """(L, 4) Sun's stats averaged over sequences (np.mean over sequences in their plot)."""
        return self.tally["per_sequence"].mean(0)

    def std(self) -> torch.Tensor:
        """(L, 4) sample standard deviation over sequences (NaN with one sequence)."""
        per_seq = self.tally["per_sequence"]
        return per_seq.std(0) if len(per_seq) > 1 else torch.full(per_seq.shape[1:], torch.nan, dtype=per_seq.dtype)


class DownProjSpikeObserver:
    """Tallies (L layers, I intermediate channels, D hidden dims): sequences (L); in_hits (L, I) /
    out_hits (L, D): how often the sequence's largest |input| / |output| sits at each channel;
    in_abs_sum / out_abs_sum (L) and max_in_abs / max_out_abs (L) of those largest values;
    both_spike (L): sequences whose input and output both exceed ``threshold``.
    """

    def __init__(self, n_layers: int, intermediate: int, hidden: int, threshold: float, layers: list[int] | None = None):
        self.threshold = threshold
        self.layers = layers  # blocks with a dense down projection (None: all)
        self.batch: BatchInfo | None = None
        self._pending: dict[int, list[float]] = {}  # layer -> this batch's input peaks, until its output arrives
        self.tally = tally = Tally()
        for name in ("sequences", "in_abs_sum", "out_abs_sum", "max_in_abs", "max_out_abs", "both_spike"):
            tally.zeros(name, n_layers)
        tally.zeros("in_hits", n_layers, intermediate, dtype=torch.int64)
        tally.zeros("out_hits", n_layers, hidden, dtype=torch.int64)

    def hooks(self, model: nn.Module, adapter: Adapter) -> tuple[list, list]:
        return input_output_hooks(model, adapter, "mlp_down", self._pre, self._post, self.layers)

    def _pre(self, layer: int):
        def hook(module, args):
            self._pending[layer] = self._peaks(layer, "in", as_tokens(args[0], self.batch))
        return hook

    def _post(self, layer: int):
        def hook(module, args, output):
            outs = self._peaks(layer, "out", as_tokens(block_output_tensor(output), self.batch))
            ins = self._pending.pop(layer)
            both = sum(abs(i) > self.threshold and abs(o) > self.threshold for i, o in zip(ins, outs))
            self.tally.add("both_spike", (layer,), torch.tensor(float(both)))
            self.tally.add("sequences", (layer,), torch.tensor(float(len(outs))))
        return hook

    def _peaks(self, layer: int, side: str, x: torch.Tensor) -> list[float]:
        batch, tally = self.batch.to(x.device), self.tally
        values = []
        for row in range(x.shape[0]):
            value, _, channel = top_spike(real_tokens(x, batch, row))
            values.append(value)
            tally.add(f"{side}_hits", (layer, channel), torch.tensor(1))
            tally.add(f"{side}_abs_sum", (layer,), torch.tensor(abs(value)))
            tally.add(f"max_{side}_abs", (layer,), torch.tensor(abs(value)))
        return values
