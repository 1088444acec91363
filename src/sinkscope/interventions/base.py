"""What an intervention is: a small frozen object that contributes edits to one sweep.

Each intervention turns into mask editors and hooks (a :class:`~sinkscope.capture.runner.Sweep`);
several compose by concatenation, and nothing is attached outside the sweep or the
:func:`applied` block, so the model is bit-identical afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from ..adapters import Adapter, adapter_for, blocks
from ..capture.attention import BatchInfo, capture_attention
from ..capture.hooks import scoped_hooks
from ..capture.runner import Sweep
from ..errors import SinkscopeError


class Intervention(Protocol):
    def sweep(self, model: nn.Module, adapter: Adapter) -> Sweep: ...


def compose(model: nn.Module, adapter: Adapter, interventions: Sequence[Intervention], base: Sweep | None = None) -> Sweep:
    """One Sweep holding ``base``'s observers and every intervention's edits, applied in order."""
    merged = base or Sweep()
    for item in interventions:
        part = item.sweep(model, adapter)
        merged.mask_editors += part.mask_editors
        merged.forward_hooks += part.forward_hooks
        merged.forward_pre_hooks += part.forward_pre_hooks
        merged.batch_listeners += part.batch_listeners
    return merged


class BatchAware:
    """Mixin for hook owners that need the current batch; the sweep sets ``batch`` before each forward."""

    batch: BatchInfo | None = None

    def target_rows(self, position: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch index, absolute token index) of ``position`` counted from each sequence's first real token."""
        rows = torch.arange(batch_size, device=device)
        if self.batch is None:
            return rows, torch.full((batch_size,), position, device=device)
        return rows, self.batch.first.to(device) + position


def check_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(n_layers))
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise SinkscopeError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    return tuple(layers)


@contextmanager
def applied(model: nn.Module, *interventions: Intervention, attention_mask: torch.Tensor | None = None
            ) -> Iterator[None]:
    """Apply interventions to the model's own forward calls inside the block; removed on exit.

    Positions count from the first real token of each row of ``attention_mask`` (from index 0
    when it is None).

    >>> import torch, transformers
    >>> from sinkscope.interventions import Isolate, applied
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, vocab_size=50)
    >>> model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    >>> ids = torch.arange(12)[None]
    >>> with applied(model, Isolate(position=5)):
    ...     edited = model(ids).logits
    >>> bool((edited[0, :5] - model(ids).logits[0, :5]).abs().max() < 1e-5)  # earlier tokens unaffected
    True
    """
    adapter = adapter_for(model)
    sweep = compose(model, adapter, interventions)
    with capture_attention(model, adapter, (), sweep.mask_editors) as session, \
            scoped_hooks(forward=sweep.forward_hooks, forward_pre=sweep.forward_pre_hooks):
        if attention_mask is not None:
            session.batch = BatchInfo.from_attention_mask(attention_mask)
        for listener in sweep.batch_listeners:
            listener.batch = session.batch
        yield


def n_layers_of(model: nn.Module, adapter: Adapter) -> int:
    return len(blocks(model, adapter))
