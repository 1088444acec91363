"""Sink telemetry during training: the probe's own measurements on one fixed held-out batch.

Nothing is re-implemented here: sink score, norm ratio, DomRatio and max activation come from
:func:`sinkscope.probe`, effective rank from :func:`sinkscope.metrics.disparity.effective_rank`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import adapter_for, blocks
from ..capture.hooks import block_output_tensor, scoped_hooks
from ..config import DataConfig, ProbeConfig
from ..criteria import Criteria
from ..metrics.disparity import effective_rank


@torch.no_grad()
def layer_effective_rank(model: nn.Module, ids: torch.Tensor) -> list[float]:
    """(L,) effective rank of each block's (T, C) output, averaged over the sequences of ``ids`` (B, T)."""
    ranks: dict[int, float] = {}

    def hook(layer):
        def record(module, args, output):
            ranks[layer] = effective_rank(block_output_tensor(output)).mean().item()  # (B,) -> mean
        return record

    layers = blocks(model, adapter_for(model))
    with scoped_hooks(forward=[(block, hook(i)) for i, block in enumerate(layers)]):
        model(input_ids=ids)
    return [ranks[i] for i in range(len(layers))]


@torch.no_grad()
def sink_telemetry(model: nn.Module, ids: torch.Tensor, criteria: Criteria | None = None) -> dict:
    """Per-layer sink figures of ``model`` on the (B, T) batch ``ids``; the model is left as it was.

    Keys: sink_score (L,) head-mean attention to the first token, norm_ratio (L,) first-token / rest
    hidden-state norm, dom_ratio (L,) DomRatio of the first token, max_activation (L,) max |h|,
    effective_rank (L,); sink_ratio (L,) the sink score over its uniform baseline, sink_present and
    onset_layer as the probe decides them with ``criteria`` (default: the probe's).
    """
    from ..probe import probe

    was_training = model.training
    model.eval()
    try:
        ids = ids.to(next(model.parameters()).device)
        result = probe(model, ids, config=ProbeConfig(chain=False, criteria=criteria or Criteria(),
                                                data=DataConfig(batch_size=len(ids))))
        ranks = layer_effective_rank(model, ids)
    finally:
        model.train(was_training)
    return {
        "sink_score": result["layer_sink_score"],
        "norm_ratio": result["norm_ratio"],
        "dom_ratio": result["sink_dom_ratio"],
        "max_activation": result["max_abs_activation"],
        "effective_rank": ranks,
        "sink_ratio": result["sink"]["ratio"],
        "sink_present": result["sink"]["present"],
        "onset_layer": result["onset_layer"],
    }


class TensorBoard:
    """Scalars to TensorBoard when it is installed; silently nothing otherwise."""

    def __init__(self, folder):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.writer = None
        else:
            self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    self.writer.add_scalar(f"{key}/layer{i}", v, step)
            elif isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
