"""Sun et al. 2024's intervention: set the massive activations to zero or to their mean.

Their hook (locuslab/massive-activations, ``lib/hook.py`` ``Intervened_Layer``) edits one block's
output: the massive dims at the first token, and at the token holding the layer's largest |x|
when that is another token, are overwritten with 0 ("set_zero") or with constants measured over a
dataset ("set_mean"). Here the constants come from :class:`MassiveMeans`, measured on the same
sequences before the edit; a sequence counts from its first real token, so padding never moves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters import blocks
from ..capture.hooks import block_output_tensor
from ..capture.runner import Sweep
from ..errors import SinkscopeError
from .base import BatchAware, check_layers, n_layers_of


def massive_rows(hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, first token, top-|x| token) of a (B, T, D) block output, real tokens only."""
    B, T, _ = hidden.shape
    rows = torch.arange(B, device=hidden.device)
    if batch is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        first = torch.zeros(B, dtype=torch.long, device=hidden.device)
    else:
        valid, first = batch.valid.to(hidden.device), batch.first.to(hidden.device)
    peak = hidden.detach().abs().amax(-1).masked_fill(~valid, -1)  # (B, T)
    return rows, first, peak.argmax(1)


@dataclass(frozen=True)
class ResetMassive:
    """Overwrite ``dims`` of block ``layer``'s output at the first token and at the top-|x| token.

    mode "zero" writes 0; mode "mean" writes ``first_values`` at the first token and ``other_values``
    at the top token (one value per dim, in the order of ``dims``).

    >>> import torch
    >>> from sinkscope.fixtures import planted_sink_model
    >>> from sinkscope.interventions import ResetMassive, applied
    >>> model, answer = planted_sink_model()  # neuron 5 of layer 1 writes a massive dim 3 at the first token
    >>> ids = torch.tensor(answer.inputs(1, 16))
    >>> seen = []
    >>> hook = model.model.layers[2].register_forward_pre_hook(lambda m, args: seen.append(args[0][0, 0, 3]))
    >>> with torch.no_grad(), applied(model, ResetMassive(layer=1, dims=(3,), mode="zero")):
    ...     _ = model(ids)
    >>> hook.remove()
    >>> float(seen[0])
    0.0
    """

    layer: int
    dims: tuple[int, ...]
    mode: str = "zero"
    first_values: tuple[float, ...] = field(default=(), compare=False)
    other_values: tuple[float, ...] = field(default=(), compare=False)

    def sweep(self, model, adapter) -> Sweep:
        check_layers((self.layer,), n_layers_of(model, adapter))
        hidden = model.config.hidden_size
        bad = [d for d in self.dims if not 0 <= d < hidden]
        if bad or not self.dims:
            raise SinkscopeError(f"massive dims must be given and lie in [0, {hidden - 1}], got {list(self.dims)}")
        if self.mode not in ("zero", "mean"):
            raise SinkscopeError(f"reset mode must be zero or mean, got {self.mode!r}")
        if self.mode == "mean" and not (len(self.first_values) == len(self.other_values) == len(self.dims)):
            raise SinkscopeError("mean reset needs one first-token and one other-token value per dim")
        editor = _MassiveEditor(self)
        return Sweep(forward_hooks=[(blocks(model, adapter)[self.layer], editor.hook)], batch_listeners=[editor])


class _MassiveEditor(BatchAware):
    def __init__(self, spec: ResetMassive):
        self.spec = spec

    def hook(self, module, args, output):
        hidden = block_output_tensor(output).clone()  # (B, T, D)
        spec = self.spec
        rows, first, top = massive_rows(hidden, self.batch)
        dims = torch.tensor(spec.dims, device=hidden.device)
        zeros = torch.zeros(len(spec.dims), dtype=hidden.dtype, device=hidden.device)
        first_v = torch.tensor(spec.first_values, dtype=hidden.dtype, device=hidden.device) if spec.mode == "mean" else zeros
        other_v = torch.tensor(spec.other_values, dtype=hidden.dtype, device=hidden.device) if spec.mode == "mean" else zeros
        elsewhere = top != first  # Sun: the other massive token is edited only when it is not the first
        hidden[rows[elsewhere, None], top[elsewhere, None], dims[None]] = other_v
        hidden[rows[:, None], first[:, None], dims[None]] = first_v
        if isinstance(output, (tuple, list)):
            return (hidden, *output[1:])
        return hidden


class MassiveMeans(BatchAware):
    """Forward hook on one block: mean of ``dims`` at the first token and at the top-|x| token (when elsewhere)."""

    def __init__(self, dims: tuple[int, ...]):
        self.dims = list(dims)
        self.first_sum = torch.zeros(len(dims), dtype=torch.float64)
        self.other_sum = torch.zeros(len(dims), dtype=torch.float64)
        self.first_count = 0
        self.other_count = 0

    def hook(self, module, args, output):
        hidden = block_output_tensor(output)
        rows, first, top = massive_rows(hidden, self.batch)
        values = hidden.detach()[..., self.dims].double()  # (B, T, k)
        elsewhere = top != first
        self.first_sum += values[rows, first].sum(0).cpu()
        self.other_sum += values[rows[elsewhere], top[elsewhere]].sum(0).cpu()
        self.first_count += len(rows)
        self.other_count += int(elsewhere.sum())

    def means(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(first-token means, other-token means); the other-token mean is 0 where no sequence had one."""
        first = self.first_sum / max(self.first_count, 1)
        other = self.other_sum / max(self.other_count, 1)
        return tuple(first.tolist()), tuple(other.tolist())
