"""Super neurons inside mixture-of-experts FFNs: (layer, expert, neuron), with the router's weights.

transformers stores each MoE block's experts as fused 3D parameters (``gate_up_proj``,
``down_proj``) with no per-expert Linear to hook, and marks each experts module with its layout
(``has_gate``, ``has_bias``, ``is_transposed`` and its own ``_apply_gate``; see
``transformers.integrations.moe``). A forward pre-hook on the experts module reads the routed tokens,
their experts and routing weights, and recomputes each routed (token, expert) pair's intermediate
activations from those parameters exactly as transformers' batched implementation does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import Adapter, blocks
from ..adapters.coverage import blocks_with
from ..metrics.neurons import spike_ratios
from ..errors import SinkscopeError
from .attention import BatchInfo
from .reducers import Tally


def expert_activations(experts: nn.Module, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """(S, I) intermediate activations (the down projection's input) of token rows x (S, D) in experts ids (S,).

    One matrix product per expert present, as transformers' own loop does: gathering a weight per
    row would hold S copies of an expert's weights.
    """
    out = None
    for expert in expert_ids.unique().tolist():
        rows = expert_ids == expert
        if experts.has_gate:
            weight, bias = experts.gate_up_proj[expert], getattr(experts, "gate_up_proj_bias", None)
        else:
            weight, bias = experts.up_proj[expert], getattr(experts, "up_proj_bias", None)
        h = x[rows] @ (weight if experts.is_transposed else weight.t())  # (S_e, 2I) or (S_e, I)
        if experts.has_bias:
            h = h + bias[expert]
        act = experts._apply_gate(h) if experts.has_gate else experts.act_fn(h)
        if out is None:
            out = act.new_zeros(len(x), act.shape[-1])
        out[rows] = act
    return out


def expert_down_column(experts: nn.Module, expert: int, neuron: int) -> torch.Tensor:
    """(D,) what neuron ``neuron`` of expert ``expert`` writes into the residual stream per unit activation."""
    down = experts.down_proj[expert]
    return (down[neuron] if experts.is_transposed else down[:, neuron]).detach()


def _routing(module: nn.Module, args: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden (N, D), expert indices (N, k), routing weights (N, k)) from an experts forward call."""
    if len(args) < 3:
        raise SinkscopeError(f"{type(module).__name__} is called without positional (hidden, indices, weights); "
                             "sinkscope cannot read its routing")
    return args[0], args[1], args[2]


class ExpertNeuronObserver:
    """Activations of every routed (token, expert, neuron) at the sink token against all other tokens.

    Tallies (L layers, E experts, I neurons per expert): sequences (L); sink_routed (L, E): sequences
    whose sink token went to expert e; sink_abs_sum (L, E, I): |a| there; extreme_count (L, E, I):
    sequences in which it spikes by the dense finder's rule (:func:`~sinkscope.metrics.neurons.spike_ratios`):
    against the same neuron at the sequence's other tokens routed to e (none there: no spike), and
    against the first token's other channels in all its routed experts;
    other_abs_sum (L, E, I) / other_routed (L, E): the same neuron at the other tokens routed to e;
    sink_weight_sum / other_weight_sum (L, E): the router's weight for e (0 where not chosen), summed
    over sink tokens / other tokens; other_tokens (L).
    """

    def __init__(self, n_layers: int, n_experts: int, n_neurons: int, token_ratio: float, channel_ratio: float,
                 n_shared_neurons: int = 0):
        self.token_ratio, self.channel_ratio = token_ratio, channel_ratio
        self.batch: BatchInfo | None = None
        self.tally = tally = Tally()
        for name in ("sequences", "other_tokens"):
            tally.zeros(name, n_layers)
        for name in ("sink_routed", "other_routed", "sink_weight_sum", "other_weight_sum"):
            tally.zeros(name, n_layers, n_experts)
        for name in ("sink_abs_sum", "extreme_count", "other_abs_sum"):
            tally.zeros(name, n_layers, n_experts, n_neurons)
            tally.zeros(f"shared_{name}", n_layers, n_shared_neurons)  # every token's shared experts (DeepSeek)
        tally.zeros("shared_sequences", n_layers)
        tally.zeros("shared_other_tokens", n_layers)

    @classmethod
    def for_model(cls, model: nn.Module, adapter: Adapter, token_ratio: float,
                  channel_ratio: float) -> ExpertNeuronObserver:
        layer = blocks_with(model, adapter, "experts")[0]
        experts = blocks(model, adapter)[layer].get_submodule(adapter.experts)
        width = experts.down_proj.shape[1 if experts.is_transposed else 2]
        shared = blocks_with(model, adapter, "shared_expert_down")
        shared_width = blocks(model, adapter)[shared[0]].get_submodule(adapter.shared_expert_down).in_features \
            if shared else 0
        return cls(len(blocks(model, adapter)), experts.num_experts, width, token_ratio, channel_ratio, shared_width)

    def hooks(self, model: nn.Module, adapter: Adapter) -> list:
        """(module, pre-hook) pairs: every experts module, and every shared expert's down projection."""
        layers = blocks(model, adapter)
        hooks = [(layers[i].get_submodule(adapter.experts), self._hook(i))
                 for i in blocks_with(model, adapter, "experts")]
        return hooks + [(layers[i].get_submodule(adapter.shared_expert_down), self._shared_hook(i))
                        for i in blocks_with(model, adapter, "shared_expert_down")]

    def _hook(self, layer: int):
        def hook(module, args):
            self.observe(layer, module, *_routing(module, args))
        return hook

    def _shared_hook(self, layer: int):
        def hook(module, args):
            self.observe_shared(layer, args[0])
        return hook

    def observe(self, layer: int, experts: nn.Module, x: torch.Tensor, index: torch.Tensor,
                weights: torch.Tensor) -> None:
        batch, tally = self.batch.to(x.device), self.tally  # a --device-map layer may sit on another device
        B, T = batch.valid.shape
        N, k = index.shape
        E = tally["sink_routed"].shape[1]
        act = expert_activations(experts, x.repeat_interleave(k, 0), index.reshape(-1)).float().view(B, T, k, -1)
        rows = torch.arange(B, device=x.device)
        sink_act, sink_experts = act[rows, batch.first], index.view(B, T, k)[rows, batch.first]  # (B, k, I), (B, k)
        others = batch.others()
        routed = index.view(B, T, k)
        other_mean, has_other = [], []
        for slot in range(k):  # the same expert's neuron at the sequence's other tokens routed to it
            there = (routed == sink_experts[:, slot, None, None]) & others[..., None]  # (B, T, k)
            count = there.sum((1, 2))  # (B,)
            total = (act.abs() * there[..., None]).sum((1, 2))  # (B, I)
            other_mean.append(total / count.clamp(min=1)[:, None])
            has_other.append(count > 0)
        token, channel, _ = spike_ratios(sink_act.flatten(1), torch.stack(other_mean, 1).flatten(1),
                                         torch.ones(B, device=x.device))  # (B, k*I) each
        token = token.view(B, k, -1) * torch.stack(has_other, 1)[..., None]
        spikes = ((token >= self.token_ratio) & (channel.view(B, k, -1) >= self.channel_ratio)).double()
        flat_sink = sink_experts.reshape(-1).cpu()
        tally.add("sequences", (layer,), torch.tensor(float(B)))
        tally.add("other_tokens", (layer,), others.sum().double())
        tally.tensors["sink_routed"][layer].index_add_(0, flat_sink, torch.ones(B * k, dtype=torch.float64))
        tally.tensors["sink_abs_sum"][layer].index_add_(0, flat_sink, sink_act.abs().flatten(0, 1).double().cpu())
        tally.tensors["extreme_count"][layer].index_add_(0, flat_sink, spikes.flatten(0, 1).cpu())
        other_slots = others.reshape(-1, 1).expand(-1, k).reshape(-1)  # (N*k,)
        other_ids = index.reshape(-1)[other_slots].cpu()
        tally.tensors["other_routed"][layer].index_add_(0, other_ids, torch.ones(len(other_ids), dtype=torch.float64))
        tally.tensors["other_abs_sum"][layer].index_add_(0, other_ids,
                                                         act.abs().flatten(0, 2)[other_slots].double().cpu())
        dense = torch.zeros(N, E, dtype=torch.float64, device=x.device).scatter_(1, index, weights.double())
        dense = dense.view(B, T, E)
        tally.add("sink_weight_sum", (layer,), dense[rows, batch.first].sum(0))
        tally.add("other_weight_sum", (layer,), (dense * others[..., None]).sum((0, 1)))

    def observe_shared(self, layer: int, act: torch.Tensor) -> None:
        """The shared experts' down-projection input (B, T, I_s): the dense finder's rule, every token routed."""
        batch, tally = self.batch.to(act.device), self.tally
        B = act.shape[0]
        rows = torch.arange(B, device=act.device)
        sink = act[rows, batch.first].float()  # (B, I_s)
        others = batch.others()
        other_sum = (act.float().abs() * others[..., None]).double().sum(1)  # (B, I_s)
        token, channel, _ = spike_ratios(sink, other_sum, others.sum(1))
        tally.add("shared_sequences", (layer,), torch.tensor(float(B)))
        tally.add("shared_other_tokens", (layer,), others.sum().double())
        tally.add("shared_sink_abs_sum", (layer,), sink.abs().double().sum(0))
        tally.add("shared_extreme_count", (layer,),
              ((token >= self.token_ratio) & (channel >= self.channel_ratio)).double().sum(0))
        tally.add("shared_other_abs_sum", (layer,), other_sum.sum(0))
