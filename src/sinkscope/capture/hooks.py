"""Forward hooks that live only inside a ``with`` block and are always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn


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


def block_output_tensor(output):
    """A decoder block returns a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output
