"""One instrumented sweep of a model over token sequences, shared by probe and intervene.

A :class:`Sweep` lists what to observe (attention observers, forward hooks) and what to change
(mask editors, hooks that return replacements); :func:`run_sweep` applies them only for the
duration of the sweep, under ``no_grad`` and in eval mode, and leaves the model as it found it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..adapters import base_model, blocks
from ..config import QUERY_CHUNK
from ..data import batches
from .attention import BatchInfo, capture_attention
from .hooks import scoped_hooks


@dataclass
class Sweep:
    attention_observers: list = field(default_factory=list)
    mask_editors: list = field(default_factory=list)
    forward_hooks: list = field(default_factory=list)  # (module, hook(module, args, output))
    forward_pre_hooks: list = field(default_factory=list)  # (module, hook(module, args))
    batch_listeners: list = field(default_factory=list)  # objects whose ``.batch`` is set before each forward
    on_logits: Callable[[BatchInfo, torch.Tensor, torch.Tensor], None] | None = None  # (batch, input_ids, logits)
    # the last block whose output anything reads: the forward stops after it (amplify reads one early layer)
    stop_after: int | None = None


class _Stop(Exception):
    """Raised by the hook on block ``Sweep.stop_after``: the rest of the forward feeds nothing."""


def _stop_hook(module, args, output):
    raise _Stop


def pad_id(tokenizer, config) -> int:
    for source in (tokenizer, config):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0  # masked out everywhere, so any valid id will do


def _progress(iterable, total: int, enabled: bool, label: str):
    if not enabled:
        yield from iterable
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in iterable:
            yield item
            bar.advance(task)


def run_sweep(model, adapter, tokenizer, sequences: list[list[int]], sweep: Sweep, *, batch_size: int = 8,
              padding_side: str = "right", query_chunk: int = QUERY_CHUNK, progress: bool = False,
              label: str = "probing") -> None:
    device = next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]  # restored one by one: flags may be mixed
    model.eval()
    # Without a logits reader, run the backbone only: the LM head (V x D per token, ~15-20 % of a small
    # model's forward, and a (B, T, V) tensor) feeds no statistic. Every hooked module lies inside it.
    forward = model if sweep.on_logits is not None else base_model(model)
    takes_positions = "position_ids" in inspect.signature(forward.forward).parameters
    pad = pad_id(tokenizer, model.config)
    n_batches = (len(sequences) + batch_size - 1) // batch_size
    stop = [] if sweep.stop_after is None else [(blocks(model, adapter)[sweep.stop_after], _stop_hook)]
    if stop and sweep.on_logits is not None:
        raise ValueError("a sweep that reads the logits runs every block: stop_after must be None")
    try:
        with torch.no_grad(), \
                capture_attention(model, adapter, sweep.attention_observers, sweep.mask_editors,
                                  query_chunk=query_chunk) as session, \
                scoped_hooks(forward=sweep.forward_hooks + stop, forward_pre=sweep.forward_pre_hooks):
            for input_ids, attention_mask in _progress(batches(sequences, batch_size, pad, padding_side),
                                                       n_batches, progress, label):
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                session.batch = BatchInfo.from_attention_mask(attention_mask)
                for listener in sweep.batch_listeners:
                    listener.batch = session.batch
                inputs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                if takes_positions:  # count from the first real token, so left padding shifts nothing
                    inputs["position_ids"] = (attention_mask.cumsum(1) - 1).clamp(min=0)
                try:
                    output = forward(**inputs)
                except _Stop:  # hooks run in registration order: the observers of the last block saw it
                    continue
                if sweep.on_logits is not None:
                    sweep.on_logits(session.batch, input_ids, output.logits)
    finally:
        for module, training in modes:
            module.training = training
