"""Amplify variance at token p: o -> mu + lambda (o - mu) at the attention output projection's input (C5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters import block_part
from ..capture.runner import Sweep
from ..errors import SinkscopeError
from .base import BatchAware, check_layers, n_layers_of


@dataclass(frozen=True)
class Amplify:
    position: int  # counted from the first real token
    lam: float  # lambda; 1 leaves the model unchanged
    layers: tuple[int, ...]  # layers whose o_proj input is edited
    mean: torch.Tensor | None = field(default=None, compare=False)  # (L, H*D) mean value vector; None: norm-only control

    def sweep(self, model, adapter) -> Sweep:
        if not self.lam > 0:
            raise SinkscopeError(f"lambda must be positive, got {self.lam}")
        if self.position < 0:
            raise SinkscopeError(f"--position must be >= 0, got {self.position}")
        layers = check_layers(self.layers, n_layers_of(model, adapter))
        editor = _AmplifyHook(self)
        hooks = [(block_part(model, adapter, layer, "o_proj"), editor.hook(layer)) for layer in layers]
        return Sweep(forward_pre_hooks=hooks, batch_listeners=[editor])


class _AmplifyHook(BatchAware):
    def __init__(self, spec: Amplify):
        self.spec = spec

    def hook(self, layer: int):
        def pre_hook(module, args):
            x = args[0]  # (B, T, H*D): per-head outputs after value aggregation
            b, rows = self.target_rows(self.spec.position, x.shape[0], x.device)
            if bool((rows >= x.shape[1]).any()):
                raise SinkscopeError(f"--position {self.spec.position} is past the end of a sequence")
            x = x.clone()
            o = x[b, rows]  # (B, H*D)
            if self.spec.mean is None:  # the control: scale the norm, keep the direction
                x[b, rows] = o * self.spec.lam
            else:
                mu = self.spec.mean[layer].to(device=x.device, dtype=x.dtype)
                x[b, rows] = mu + self.spec.lam * (o - mu)
            return (x, *args[1:])
        return pre_hook
