"""Forward hooks that live only inside a ``with`` block and are always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..adapters import block_part, blocks


@contextmanager
def scoped_hooks(forward: Iterable[tuple[nn.Module, Callable]] = (),
                 forward_pre: Iterable[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register (module, hook) pairs for the duration of the block.

    Forward hooks get (module, args, output) and may return a replacement output; pre-hooks get
    (module, args) and may return replacement args. Handles are removed even if the block raises.
    """
    handles = []
    try:
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook))
        for module, hook in forward_pre:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def input_output_hooks(model: nn.Module, adapter, part: str, pre: Callable[[int], Callable],
                       post: Callable[[int], Callable], layers: Iterable[int] | None = None) -> tuple[list, list]:
    """(forward pre-hooks, forward hooks) on block part ``part`` of every layer (or of ``layers``, the blocks
    that have it); ``pre(layer)`` and ``post(layer)`` make the hooks, so one observer reads the part's input
    and its output."""
    chosen = range(len(blocks(model, adapter))) if layers is None else layers
    modules = {layer: block_part(model, adapter, layer, part) for layer in chosen}
    return [(m, pre(layer)) for layer, m in modules.items()], [(m, post(layer)) for layer, m in modules.items()]


def as_tokens(x: torch.Tensor, batch) -> torch.Tensor:
    """(B, T, W) view of a hooked activation; some families (OPT) flatten tokens to (B*T, W) in the MLP."""
    return x.view(*batch.valid.shape, -1) if x.dim() == 2 else x


def block_output_tensor(output):
    """A decoder block returns a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


class BlockOutputObserver:
    """Base of the observers that read every block's output: subclasses define ``observe(layer, hidden)``,
    hidden (B, T, D) as the block returned it; the runner sets ``batch`` before every forward."""

    batch = None

    def hooks(self, model: nn.Module, adapter) -> list[tuple[nn.Module, Callable]]:
        return [(block, self._hook(layer)) for layer, block in enumerate(blocks(model, adapter))]

    def _hook(self, layer: int) -> Callable:
        def hook(module, args, output):
            self.observe(layer, block_output_tensor(output))
        return hook
