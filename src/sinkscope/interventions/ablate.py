"""Ablate super neurons or massive dimensions, to test whether the sink needs them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters import block_part, blocks, weight_out_in
from ..adapters.coverage import blocks_with
from ..capture.hooks import block_output_tensor
from ..capture.runner import Sweep
from ..errors import SinkscopeError
from .base import BatchAware, check_layers, n_layers_of


@dataclass(frozen=True)
class AblateNeurons:
    """Zero (or set to a mean) FFN intermediate neurons (layer, index).

    target "activation" edits the down projection's input; "column" subtracts the neuron's
    down-projection column's contribution from its output (the same function for mode "zero", kept
    as an independent check). ``means`` maps (layer, index) to the replacement for mode "mean".
    """

    neurons: tuple[tuple[int, int], ...]
    mode: str = "zero"  # "zero" or "mean"
    target: str = "activation"  # "activation" or "column"
    means: dict = field(default_factory=dict, compare=False)

    def sweep(self, model, adapter) -> Sweep:
        n_layers = n_layers_of(model, adapter)
        by_layer: dict[int, list[int]] = {}
        for layer, index in self.neurons:
            check_layers((layer,), n_layers)
            if layer not in blocks_with(model, adapter, "mlp_down"):
                raise SinkscopeError(f"layer {layer} has no dense FFN (its FFN is {adapter.experts or 'unnamed'}); "
                                     "name a neuron inside an expert as LAYER:EXPERT:INDEX")
            width = weight_out_in(block_part(model, adapter, layer, "mlp_down"), adapter).shape[1]
            if not 0 <= index < width:
                raise SinkscopeError(f"neuron {layer}:{index} is out of range: layer {layer} has neurons 0..{width - 1}")
            by_layer.setdefault(layer, []).append(index)
        if self.mode not in ("zero", "mean"):
            raise SinkscopeError(f"ablation mode must be zero or mean, got {self.mode!r}")
        if self.mode == "mean" and self.target == "column":
            raise SinkscopeError("mean ablation edits activations; use --target activation with --mode mean")
        pre, post = [], []
        for layer, indices in by_layer.items():
            down = block_part(model, adapter, layer, "mlp_down")
            index = torch.tensor(indices)
            if self.target == "activation":
                values = torch.tensor([self.means.get((layer, i), 0.0) if self.mode == "mean" else 0.0
                                       for i in indices])
                pre.append((down, _set_channels(index, values)))
            elif self.target == "column":
                post.append((down, _remove_columns(index, weight_out_in(down, adapter))))
            else:
                raise SinkscopeError(f"ablation target must be activation or column, got {self.target!r}")
        return Sweep(forward_pre_hooks=pre, forward_hooks=post)


def _set_channels(index: torch.Tensor, values: torch.Tensor):
    def pre_hook(module, args):
        x = args[0].clone()  # (B, T, I)
        x[..., index.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
        return (x, *args[1:])
    return pre_hook


def _remove_columns(index: torch.Tensor, weight: torch.Tensor):
    def hook(module, args, output):
        x = args[0][..., index.to(args[0].device)]  # (B, T, k)
        columns = weight[:, index.to(weight.device)]  # (D, k)
        return output - x @ columns.t().to(x.dtype)
    return hook


@dataclass(frozen=True)
class AblateDims:
    """Zero residual-stream dims after each chosen block, or set them to their mean over the non-sink tokens."""

    dims: tuple[int, ...]
    layers: tuple[int, ...] | None = None  # None: after every block
    mode: str = "zero"  # "zero" or "mean" (mean over the batch's real tokens other than the first)

    def sweep(self, model, adapter) -> Sweep:
        layers = check_layers(self.layers, n_layers_of(model, adapter))
        hidden = model.config.hidden_size
        for dim in self.dims:
            if not 0 <= dim < hidden:
                raise SinkscopeError(f"dim {dim} is out of range: the hidden size is {hidden}")
        if self.mode not in ("zero", "mean"):
            raise SinkscopeError(f"ablation mode must be zero or mean, got {self.mode!r}")
        editor = _DimEditor(torch.tensor(self.dims), self.mode)
        all_blocks = blocks(model, adapter)
        return Sweep(forward_hooks=[(all_blocks[layer], editor.hook) for layer in layers], batch_listeners=[editor])


class _DimEditor(BatchAware):
    def __init__(self, index: torch.Tensor, mode: str):
        self.index, self.mode = index, mode

    def hook(self, module, args, output):
        hidden = block_output_tensor(output).clone()  # (B, T, D)
        idx = self.index.to(hidden.device)
        if self.mode == "zero":
            hidden[..., idx] = 0
        else:
            others = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            if self.batch is not None:
                others = self.batch.valid.clone()
            b, first = self.target_rows(0, hidden.shape[0], hidden.device)
            others[b, first] = False
            hidden[..., idx] = hidden[..., idx][others].mean(0).to(hidden.dtype)
        if isinstance(output, (tuple, list)):
            return (hidden, *output[1:])
        return hidden
