"""Ablate super neurons inside experts, by (layer, expert, neuron), to test whether the sink needs them.

A routed expert's neuron is zeroed by removing exactly its contribution from the experts module's
output: for every token routed to that expert, routing weight * activation * down column (the down
projection is linear, so this equals zeroing the activation). A shared expert's neuron ("shared")
is zeroed at its down projection's input, as in a dense FFN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import blocks
from ..adapters.coverage import blocks_with
from ..capture.experts import expert_activations, expert_down_column
from ..capture.runner import Sweep
from ..errors import SinkscopeError
from .ablate import _set_channels
from .base import check_layers, n_layers_of

SHARED = "shared"  # the expert coordinate of an always-on shared expert


@dataclass(frozen=True)
class AblateExpertNeurons:
    """Zero neurons (layer, expert, neuron) of routed experts (expert an index) or shared experts ("shared")."""

    neurons: tuple[tuple[int, int | str, int], ...]

    def sweep(self, model, adapter) -> Sweep:
        check_layers(tuple(layer for layer, _, _ in self.neurons), n_layers_of(model, adapter))
        routed: dict[int, list[tuple[int, int]]] = {}
        shared: dict[int, list[int]] = {}
        for layer, expert, neuron in self.neurons:
            if expert == SHARED:
                shared.setdefault(layer, []).append(self._checked(model, adapter, layer, "shared_expert_down", neuron))
            else:
                routed.setdefault(layer, []).append((expert, self._checked(model, adapter, layer, "experts", neuron,
                                                                           expert)))
        layers = blocks(model, adapter)
        post = [(layers[layer].get_submodule(adapter.experts), _remove_expert_neurons(pairs))
                for layer, pairs in routed.items()]
        pre = [(layers[layer].get_submodule(adapter.shared_expert_down),
                _set_channels(torch.tensor(ns), torch.zeros(len(ns)))) for layer, ns in shared.items()]
        return Sweep(forward_pre_hooks=pre, forward_hooks=post)

    @staticmethod
    def _checked(model, adapter, layer: int, part: str, neuron: int, expert: int | None = None) -> int:
        if layer not in blocks_with(model, adapter, part):
            what = "shared experts" if part == "shared_expert_down" else "routed experts"
            raise SinkscopeError(f"layer {layer} has no {what}; pick a layer listed in probe.json's expert_neurons")
        module = blocks(model, adapter)[layer].get_submodule(getattr(adapter, part))
        if expert is None:
            width = module.in_features
        else:
            if not 0 <= expert < module.num_experts:
                raise SinkscopeError(f"expert {expert} is out of range: layer {layer} has experts "
                                     f"0..{module.num_experts - 1}")
            width = module.down_proj.shape[1 if module.is_transposed else 2]
        if not 0 <= neuron < width:
            raise SinkscopeError(f"neuron {neuron} is out of range: each expert of layer {layer} has neurons "
                                 f"0..{width - 1}")
        return neuron


def _remove_expert_neurons(pairs: list[tuple[int, int]]):
    def hook(module, args, output):
        x, index, weights = args[0], args[1], args[2]  # (N, D), (N, k), (N, k)
        output = output.clone()
        for expert, neuron in pairs:
            token, slot = (index == expert).nonzero(as_tuple=True)
            if len(token) == 0:
                continue
            act = expert_activations(module, x[token], index[token, slot])[:, neuron]  # (S,)
            column = expert_down_column(module, expert, neuron)  # (D,)
            change = (weights[token, slot] * act)[:, None] * column[None].to(act.dtype)
            output.index_add_(0, token, -change.to(output.dtype))
        return output
    return hook
