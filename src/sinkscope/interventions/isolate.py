"""Isolate aggregation: token p attends only to itself, so it aggregates like a first token (C4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capture.attention import AttentionCall
from ..capture.runner import Sweep
from ..errors import SinkscopeError
from .base import check_layers, n_layers_of


@dataclass(frozen=True)
class Isolate:
    position: int  # counted from the first real token of each sequence
    layers: tuple[int, ...] | None = None  # None: every layer

    def sweep(self, model, adapter) -> Sweep:
        if self.position < 0:
            raise SinkscopeError(f"--position must be >= 0, got {self.position}")
        layers = set(check_layers(self.layers, n_layers_of(model, adapter)))

        def edit(call: AttentionCall) -> None:
            if call.layer not in layers:
                return
            T = call.query.shape[2]
            B = call.query.shape[0]
            if call.batch is None:
                rows = torch.full((B,), self.position, device=call.query.device)
                fits = torch.full((B,), self.position < T, device=call.query.device)
            else:
                rows = call.batch.first + self.position
                fits = rows <= call.batch.last
            if not bool(fits.all()):
                raise SinkscopeError(f"--position {self.position} is past the end of a sequence; "
                                     "use a smaller position or longer sequences")
            call.isolated = rows

        return Sweep(mask_editors=[edit])
