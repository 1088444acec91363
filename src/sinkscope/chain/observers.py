"""Observers for the causal chain (method.md sections 2-4), streamed per layer as mergeable tallies.

- :class:`ValueOutputObserver` (link one): the input of every attention output projection (the
  per-head outputs after value aggregation) and its output, by position.
- :class:`NeuronObserver` (link two): the input of every MLP down projection (the intermediate
  "neuron" activations), at the sink token against everything else.
- :class:`DisparityObserver` (link three): the residual stream entering every layer and the norm
  that reads it (index k = input of layer k; k = L is the final norm's input).
- :class:`QueryObserver` (QK locking): per head, second moments of the queries and the sign of
  q . k_sink, from the attention capture.

Positions count from each sequence's first real token. No activation is kept past its hook call.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import Adapter, base_model, block_part, blocks, get_path
from ..metrics.disparity import dominance_ratio, dominant_rows, log_bins, massive_rows
from ..metrics.neurons import spike_ratios
from ..metrics.qk import positive_dot_count
from ..metrics.variance import std_across_dims, std_across_dims_and_heads
from ..capture.attention import AttentionCall, BatchInfo
from ..capture.hooks import as_tokens, block_output_tensor, input_output_hooks
from ..capture.activations import SharedMedians
from ..capture.reducers import Tally, add_rows_by_position, effective_rank_sum, scatter_by_position

DOM_RATIO_BINS = 512  # log-spaced bins over [1, D] for the median DomRatio of the other tokens (mergeable)
RANK_TOKENS = 512  # effective rank over each sequence's first this-many real tokens (an eigvalsh of that size)




def _sink_rows(x: torch.Tensor, batch: BatchInfo) -> torch.Tensor:
    return x[torch.arange(x.shape[0], device=x.device), batch.first]  # (B, ...)


def _other_magnitudes(act: torch.Tensor, batch: BatchInfo, others: torch.Tensor) -> torch.Tensor:
    """(B, T', W) |act| at each sequence's other tokens (``others``), zero elsewhere: one copy of ``act``."""
    if act.shape[1] > 1 and bool(batch.valid.all()):  # unpadded: the other tokens are 1..T-1 of every row
        return act[:, 1:].float().abs()
    return act.float().abs().masked_fill_(~others[..., None], 0)


class _Hooked:
    """Shared runner plumbing: the runner sets ``batch`` before every forward."""

    batch: BatchInfo | None = None


class ValueOutputObserver(_Hooked):
    """Link one: o_proj input (B, T, H*Dh) and output (B, T, D) by position.

    Tallies (L layers, T positions, Tv = min(T, max_positions) positions with per-dim sums):
      count (L, T); in_sum / in_sumsq (L, Tv, H*Dh) and out_sum / out_sumsq (L, Tv, D): sums over
      samples per position and dim (std across samples); in_dim_std_sum (L, T), in_head_dim_std_sum
      (L, H, T), out_dim_std_sum (L, T): sums over samples of each token's std across dims.
    """

    def __init__(self, n_layers: int, n_heads: int, width_in: int, width_out: int, max_len: int, max_positions: int):
        self.n_heads = n_heads
        self.max_len = max_len
        self.tracked = min(max_len, max_positions)
        self.tally = tally = Tally()
        tally.zeros("count", n_layers, max_len)
        for side, width in (("in", width_in), ("out", width_out)):
            tally.zeros(f"{side}_sum", n_layers, self.tracked, width)
            tally.zeros(f"{side}_sumsq", n_layers, self.tracked, width)
            tally.zeros(f"{side}_dim_std_sum", n_layers, max_len)
        tally.zeros("in_head_dim_std_sum", n_layers, n_heads, max_len)

    def hooks(self, model: nn.Module, adapter: Adapter) -> tuple[list, list]:
        """(forward pre-hooks, forward hooks) on every layer's o_proj."""
        return input_output_hooks(model, adapter, "o_proj", self._pre, self._post)

    def _pre(self, layer: int):
        def hook(module, args):
            self.observe(layer, "in", as_tokens(args[0], self.batch))
        return hook

    def _post(self, layer: int):
        def hook(module, args, output):
            self.observe(layer, "out", as_tokens(block_output_tensor(output), self.batch))
        return hook

    def observe(self, layer: int, side: str, x: torch.Tensor) -> None:
        batch, tally = self.batch, self.tally
        rel = batch.relative()
        valid = batch.valid
        if side == "in":
            tally.add("count", (layer,), scatter_by_position(valid.double(), rel, valid, self.max_len))
            dims, heads = std_across_dims_and_heads(x, self.n_heads)  # (B, T), (B, T, H)
            tally.add("in_head_dim_std_sum", (layer,),
                      scatter_by_position(heads.permute(2, 0, 1), rel, valid, self.max_len))
        else:
            dims = std_across_dims(x)
        tally.add(f"{side}_dim_std_sum", (layer,), scatter_by_position(dims, rel, valid, self.max_len))
        add_rows_by_position(tally[f"{side}_sum"][layer], x, batch.first, valid, tally[f"{side}_sumsq"][layer])


class NeuronObserver(_Hooked):
    """Link two: the down projection's input (B, T, I) at the sink token against all other tokens.

    Tallies (L layers, I channels, D hidden dims):
      sequences (L); sink_abs_sum / sink_sum (L, I): |a| and a at the sink token, summed over
      sequences; max_sink_abs (L, I); extreme_count (L, I): sequences in which the channel spikes at
      the sink against the same channel at the other tokens and the other channels at the sink (see
      :func:`~sinkscope.metrics.neurons.spike_ratios`); sink_channel_mean_sum (L): the mean |a| over
      channels at the sink; other_abs_sum (L, I) / other_tokens (L); max_other_abs (L, I);
      down_out_sink_abs_sum (L, D): |down-proj output| at the sink.
    """

    def __init__(self, n_layers: int, n_channels: int, hidden: int, token_ratio: float, channel_ratio: float,
                 layers: list[int] | None = None):
        self.token_ratio, self.channel_ratio = token_ratio, channel_ratio
        self.layers = list(range(n_layers)) if layers is None else layers  # blocks with a dense FFN
        self.tally = tally = Tally()
        tally.zeros("sequences", n_layers)
        tally.zeros("other_tokens", n_layers)
        tally.zeros("sink_channel_mean_sum", n_layers)
        for name in ("sink_abs_sum", "sink_sum", "max_sink_abs", "extreme_count", "other_abs_sum", "max_other_abs"):
            tally.zeros(name, n_layers, n_channels)
        tally.zeros("down_out_sink_abs_sum", n_layers, hidden)

    def hooks(self, model: nn.Module, adapter: Adapter) -> tuple[list, list]:
        """(forward pre-hooks, forward hooks) on every dense layer's down projection."""
        return input_output_hooks(model, adapter, "mlp_down", self._pre, self._post, self.layers)

    def _pre(self, layer: int):
        def hook(module, args):
            self.observe(layer, as_tokens(args[0], self.batch))
        return hook

    def _post(self, layer: int):
        def hook(module, args, output):
            out = _sink_rows(as_tokens(block_output_tensor(output), self.batch), self.batch).double().abs().sum(0)
            self.tally.add("down_out_sink_abs_sum", (layer,), out)
        return hook

    def observe(self, layer: int, act: torch.Tensor) -> None:
        batch, tally = self.batch, self.tally
        B, T, _ = act.shape
        sink = _sink_rows(act, batch).float()  # (B, I)
        others = batch.others()
        mags = _other_magnitudes(act, batch, others)
        other_sum = mags.sum(1).double()  # (B, I); float32 cascade sums: 1e-7 relative, 10x faster than float64
        token, channel, channel_mean = spike_ratios(sink, other_sum, others.sum(1))
        tally.add("sequences", (layer,), torch.tensor(float(B)))
        tally.add("other_tokens", (layer,), others.sum().double())
        tally.add("sink_channel_mean_sum", (layer,), channel_mean.double().sum())
        tally.add("sink_abs_sum", (layer,), sink.abs().double().sum(0))
        tally.add("sink_sum", (layer,), sink.double().sum(0))
        tally.add("max_sink_abs", (layer,), sink.abs().amax(0))
        spikes = (token >= self.token_ratio) & (channel >= self.channel_ratio)
        tally.add("extreme_count", (layer,), spikes.double().sum(0))
        tally.add("other_abs_sum", (layer,), other_sum.sum(0))
        tally.add("max_other_abs", (layer,), mags.flatten(0, 1).amax(0))


class DisparityObserver(_Hooked):
    """Link three: the residual stream entering each layer k (k = L: the final norm's input).

    Index k = 0..L. Pre-norm families: hooks on each block's ``attn_norm`` (its input is the
    residual stream, its output the normalised token) and on ``final_norm``. Post-norm families
    (``adapter.pre_norm`` False) and families with no norm before attention: block k-1's output (the
    first block's input for k = 0) is both. Tallies (K = L + 1):
      sink_count (K); sink_dom_sum / sink_dom_norm_sum (K): sink-token DomRatio at the residual
      stream and at the norm output; other_count, other_dom_sum (K); max_other_dom,
      max_other_dom_norm (K); other_dom_hist / other_dom_norm_hist (K, bins) for the median;
      massive_sink (K, D) sequences with a massive activation at the sink token in dim d;
      massive_other (K, D) other tokens with one; massive_by_position (K, T) (Sun et al.'s absolute
      criteria); dominant_sink / dominant_other (K, D) and dominant_by_position (K, T): the same by the
      scale-free rule (|h_d| / mean_j |h_j| >= contrast x the median DomRatio of the sequence's other
      tokens, see :func:`~sinkscope.metrics.disparity.dominant_mask`); max_sink_abs (K, D);
      sink_normed_sum (K, D) (the mean normalised sink token); erank_sum (K): sequences' effective
      rank of their (T x D) residual matrix.
    """

    def __init__(self, n_layers: int, hidden: int, max_len: int, massive_abs: float, massive_rel: float,
                 contrast: float, effective_rank: bool = True, medians: SharedMedians | None = None):
        self.n_layers, self.max_len = n_layers, max_len
        self.medians = medians  # the layer-magnitude observer's, when the probe runs both
        self.massive_abs, self.massive_rel, self.contrast = massive_abs, massive_rel, contrast
        self.with_rank = effective_rank
        self.edges = log_bins(hidden, DOM_RATIO_BINS)
        K = n_layers + 1
        self.tally = tally = Tally()
        for name in ("sink_count", "sink_dom_sum", "sink_dom_norm_sum", "other_count", "other_dom_sum", "erank_sum"):
            tally.zeros(name, K)
        tally.zeros("max_other_dom", K)
        tally.zeros("max_other_dom_norm", K)
        tally.zeros("other_dom_hist", K, DOM_RATIO_BINS)
        tally.zeros("other_dom_norm_hist", K, DOM_RATIO_BINS)
        for name in ("massive_sink", "massive_other", "dominant_sink", "dominant_other", "max_sink_abs",
                     "sink_normed_sum"):
            tally.zeros(name, K, hidden)
        tally.zeros("massive_by_position", K, max_len)
        tally.zeros("dominant_by_position", K, max_len)

    def hooks(self, model: nn.Module, adapter: Adapter) -> tuple[list, list]:
        """(forward pre-hooks, forward hooks) as (module, hook) pairs."""
        layers = blocks(model, adapter)
        if not adapter.pre_norm or adapter.attn_norm is None:  # input 0 is the first block's input
            outputs = [(block, self._block_hook(k + 1)) for k, block in enumerate(layers)]
            return [(layers[0], self._input_hook(0))], outputs
        hooks = [(block_part(model, adapter, k, "attn_norm"), self._norm_hook(k)) for k in range(len(layers))]
        final = get_path(base_model(model), adapter.final_norm)
        if final is not None:
            hooks.append((final, self._norm_hook(len(layers))))
        return [], hooks

    def _input_hook(self, k: int):
        def hook(module, args):
            self.observe(k, args[0], args[0])
        return hook

    def _norm_hook(self, k: int):
        def hook(module, args, output):
            self.observe(k, args[0], block_output_tensor(output))
        return hook

    def _block_hook(self, k: int):
        def hook(module, args, output):
            hidden = block_output_tensor(output)
            self.observe(k, hidden, hidden)
        return hook

    def observe(self, k: int, residual: torch.Tensor, normed: torch.Tensor) -> None:
        batch, tally = self.batch, self.tally
        B, T, _ = residual.shape
        rows = torch.arange(B, device=residual.device)
        others = batch.others()
        dom, dom_norm = dominance_ratio(residual), dominance_ratio(normed)  # (B, T)
        tally.add("sink_count", (k,), torch.tensor(float(B)))
        tally.add("sink_dom_sum", (k,), dom[rows, batch.first].double().sum())
        tally.add("sink_dom_norm_sum", (k,), dom_norm[rows, batch.first].double().sum())
        tally.add("other_count", (k,), others.sum().double())
        tally.add("other_dom_sum", (k,), dom[others].double().sum())
        if bool(others.any()):
            tally.add("max_other_dom", (k,), dom[others].amax())
            tally.add("max_other_dom_norm", (k,), dom_norm[others].amax())
        tally.add("other_dom_hist", (k,), self._histogram(dom[others]))
        tally.add("other_dom_norm_hist", (k,), self._histogram(dom_norm[others]))
        first = torch.zeros_like(batch.valid)
        first[rows, batch.first] = True  # (B, T)
        # the layer-magnitude observer has taken the medians of this tensor (block k - 1's output) already;
        # otherwise massive_rows takes them for the sequences that need one only
        paper = massive_rows(residual, self.massive_abs, self.massive_rel, batch.valid,
                             self.medians.known(residual, batch.valid) if self.medians else None)
        for prefix, (chosen, chosen_mask) in (("massive", paper),
                                              ("dominant", dominant_rows(residual, dom, others, self.contrast))):
            self._add_rows(k, prefix, chosen, chosen_mask, first, others)
        sink = _sink_rows(residual, batch).float()
        tally.add("max_sink_abs", (k,), sink.abs().amax(0))
        tally.add("sink_normed_sum", (k,), _sink_rows(normed, batch).double().sum(0))
        if self.with_rank:
            tally.add("erank_sum", (k,), effective_rank_sum(residual, batch.valid, RANK_TOKENS))

    def _add_rows(self, k: int, prefix: str, chosen: torch.Tensor, chosen_mask: torch.Tensor, first: torch.Tensor,
                  others: torch.Tensor) -> None:
        """Tally a mask given on its chosen tokens only (chosen (B, T), chosen_mask (N, D)): few rows, no B x T x D."""
        batch, tally = self.batch, self.tally
        real = batch.valid[chosen]
        chosen, chosen_mask = chosen & batch.valid, chosen_mask[real]
        tally.add(f"{prefix}_sink", (k,), chosen_mask[first[chosen]].double().sum(0))
        tally.add(f"{prefix}_other", (k,), chosen_mask[others[chosen]].double().sum(0))
        holds = torch.zeros_like(chosen)
        holds[chosen] = chosen_mask.any(-1)
        tally.add(f"{prefix}_by_position", (k,),
                  scatter_by_position(holds.double(), batch.relative(), batch.valid, self.max_len))

    def _histogram(self, values: torch.Tensor) -> torch.Tensor:
        edges = self.edges.to(values.device)
        index = (torch.searchsorted(edges, values.double().contiguous(), right=True) - 1).clamp(0, len(edges) - 2)
        return torch.bincount(index, minlength=len(edges) - 1).double()


class QueryObserver:
    """QK locking: per layer and head, the queries that see the sink and another key.

    Tallies: q_count (L); q_sum (L, H, Dh); q_outer_sum (L, H, Dh, Dh) for the uncentred second
    moment; positive_count (L, H): queries with q . k_sink > 0 (k_sink: the sequence's own key at
    its sink token, as attention saw it, rotary included); sink_key_sum (L, H, Dh) / sequences (L).
    """

    def __init__(self, n_layers: int, n_heads: int, head_dim: int):
        self.tally = tally = Tally()
        tally.zeros("q_count", n_layers)
        tally.zeros("sequences", n_layers)
        tally.zeros("q_sum", n_layers, n_heads, head_dim)
        tally.zeros("q_outer_sum", n_layers, n_heads, head_dim, head_dim)
        tally.zeros("positive_count", n_layers, n_heads)
        tally.zeros("sink_key_sum", n_layers, n_heads, head_dim)

    def observe(self, call: AttentionCall) -> None:
        batch, layer, tally = call.batch, call.layer, self.tally
        B, H, T, _ = call.query.shape
        rows = torch.arange(B, device=call.query.device)
        rel = batch.relative()
        sees_sink = call.visible_block(0, T, batch.first[:, None])[:, 0, :, 0]  # (B, T): causal, windows, edits
        mask = batch.valid & (rel != 0) & sees_sink  # real queries that see the sink and another key
        q = call.query.float()
        sink_key = call.key[rows, :, batch.first].float()  # (B, H, Dh)
        # float64 products, so that any split of the data into batches or processes sums to the same moments
        qm = q.double() * mask[:, None, :, None]  # (B, H, T, Dh), zero at the queries not counted
        tally.add("q_count", (layer,), mask.sum().double())
        tally.add("q_sum", (layer,), (qm.new_ones(T) @ qm).sum(0))  # a product: 8x a strided sum's speed
        tally.add("q_outer_sum", (layer,), (qm.mT @ qm).sum(0))  # (H, Dh, Dh): a batched product of views
        tally.add("positive_count", (layer,), positive_dot_count(q, sink_key, mask))
        tally.add("sink_key_sum", (layer,), sink_key.double().sum(0))
        tally.add("sequences", (layer,), torch.tensor(float(B)))
