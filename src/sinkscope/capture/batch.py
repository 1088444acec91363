"""Where the real tokens of a batch are: one small record every observer reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class BatchInfo:
    """Where the real tokens of the current batch are; set by the runner before each forward."""

    valid: torch.Tensor  # (B, T) bool, real (non-pad) tokens
    first: torch.Tensor  # (B,) long, index of the first real token (the default sink)
    last: torch.Tensor  # (B,) long, index of the last real token

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor) -> BatchInfo:
        valid = attention_mask.bool()
        positions = torch.arange(valid.shape[1], device=valid.device)
        first = torch.where(valid, positions, valid.shape[1]).amin(1)
        last = torch.where(valid, positions, -1).amax(1)
        return cls(valid=valid, first=first, last=last)

    def to(self, device: torch.device) -> BatchInfo:
        """The same batch on ``device`` (layers of a --device-map model live on several devices)."""
        if self.valid.device == device:
            return self
        return BatchInfo(valid=self.valid.to(device), first=self.first.to(device), last=self.last.to(device))

    def relative(self) -> torch.Tensor:  # (B, T): positions from each sequence's first real token
        return torch.arange(self.valid.shape[1], device=self.valid.device)[None] - self.first[:, None]

    def others(self) -> torch.Tensor:  # (B, T) bool: real tokens but the first, every first-token rule's reference
        return self.valid & (self.relative() != 0)

    def absolute(self, relative: Sequence[int]) -> torch.Tensor:
        """(B, P) key indices: p >= 0 counts from the first real token, p < 0 back from the last."""
        cols = [self.first + p if p >= 0 else self.last + 1 + p for p in relative]
        return torch.stack(cols, dim=1)
