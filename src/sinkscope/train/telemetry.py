"""Sink telemetry during training: the probe's own measurements on one fixed held-out batch.

Nothing is re-implemented here: sink score, norm ratio, DomRatio, max activation and every block
output's effective rank come from one sweep of :func:`sinkscope.probe`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import CaptureConfig, DataConfig, ProbeConfig
from ..criteria import Criteria


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
                                                data=DataConfig(batch_size=len(ids)),
                                                capture=CaptureConfig(block_effective_rank=True)))
    finally:
        model.train(was_training)
    return {
        "sink_score": result["layer_sink_score"],
        "norm_ratio": result["norm_ratio"],
        "dom_ratio": result["sink_dom_ratio"],
        "max_activation": result["max_abs_activation"],
        "effective_rank": result["block_effective_rank"],
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
