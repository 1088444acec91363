"""Hidden-state norms by position. Pure tensor functions."""

from __future__ import annotations

import torch


def token_norms(hidden: torch.Tensor) -> torch.Tensor:
    """L2 norm of every token's hidden state: (..., T, D) -> (..., T), in float32."""
    return torch.linalg.vector_norm(hidden.float(), dim=-1)


def norm_ratio(mean_norm_by_position: torch.Tensor, sink: int = 0) -> torch.Tensor:
    """Mean norm at the sink position over the mean norm of all other positions.

    mean_norm_by_position: (..., T) -> (...)
    """
    rest = torch.cat([mean_norm_by_position[..., :sink], mean_norm_by_position[..., sink + 1:]], dim=-1)
    return mean_norm_by_position[..., sink] / rest.mean(-1)
