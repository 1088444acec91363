"""Link two (method.md section 3): super neurons and channel-sparse down-projections.

Pure tensor functions on MLP weights (already as (out, in)) and on intermediate activations.
Conventions: I intermediate channels ("neurons"), D hidden dims, T positions.
"""

from __future__ import annotations

import torch

from .stats import excess_kurtosis


def robust_spike_scores(sink_act: torch.Tensor, other_act: torch.Tensor, other_valid: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """How extreme each channel's activation at the sink token is against everything else.

    sink_act: (B, I) activations at each sequence's sink token; other_act: (B, T, I) activations;
    other_valid: (B, T) bool, the real non-sink tokens. Per sequence, the reference is the median m
    and the MAD of |a| over all channels at all other tokens. Returns (z, ratio), each (B, I):
    z = (|a_sink| - m) / MAD and ratio = |a_sink| / m (guarded against 0 with float32 tiny;
    both 0 for a sequence with no other token).
    """
    tiny = torch.finfo(torch.float32).tiny
    mags = other_act.float().abs().masked_fill(~other_valid[..., None], torch.nan).flatten(1)  # (B, T*I)
    median = mags.nanmedian(-1).values  # (B,)
    mad = (mags - median[:, None]).abs().nanmedian(-1).values
    median = torch.nan_to_num(median, nan=0.0)
    mad = torch.nan_to_num(mad, nan=0.0)
    sink = sink_act.float().abs()
    z = (sink - median[:, None]) / mad.clamp_min(tiny)[:, None]
    ratio = sink / median.clamp_min(tiny)[:, None]
    alone = ~other_valid.any(-1, keepdim=True)  # a one-token sequence has nothing to compare against
    return z.masked_fill(alone, 0.0), ratio.masked_fill(alone, 0.0)


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of every row of an (out, in) weight: one per neuron for gate/up/fc1. (I, D) -> (I,)."""
    return torch.linalg.vector_norm(weight.float(), dim=-1)


def top_rows(weight: torch.Tensor, k: int) -> list[dict]:
    """The k rows with the largest L2 norm, strongest first, with the norm over the median row norm.

    weight: (I, D). Returns [{"index", "norm", "ratio_to_median"}].
    """
    norms = row_norms(weight)
    median = norms.median().clamp_min(torch.finfo(torch.float32).tiny)
    values, index = norms.topk(min(k, len(norms)))
    return [{"index": int(i), "norm": float(v), "ratio_to_median": float(v / median)} for v, i in zip(values, index)]


def column_profile(column: torch.Tensor, top: int = 5) -> dict:
    """How channel-sparse one down-projection column (what neuron n writes) is.

    column: (D,) = down.weight[:, n]. Returns its excess kurtosis and the ``top`` output dims by
    energy share w_d^2 / sum w^2, largest first: {"kurtosis", "dims": [{"dim", "share", "weight"}]}.
    """
    w = column.double()
    energy = w * w
    share = energy / energy.sum().clamp_min(1e-300)
    values, index = share.topk(min(top, len(w)))
    return {"kurtosis": float(excess_kurtosis(w)),
            "dims": [{"dim": int(d), "share": float(s), "weight": float(w[d])} for s, d in zip(values, index)]}


def selectivity(x: torch.Tensor, gate_row: torch.Tensor | None, up_row: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token selectivity of one neuron: cos(x, w_gate) and x . w_up (method.md section 3).

    x: (..., D) the MLP input (after its norm); gate_row, up_row: (D,). For a plain fc1/act/fc2
    MLP pass gate_row=None: the cosine then uses the fc1 row. Returns {"cos_gate", "up_dot"}, (...).
    """
    x = x.float()
    row = (gate_row if gate_row is not None else up_row).float()
    tiny = torch.finfo(torch.float32).tiny
    cos = (x @ row) / (torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(row)).clamp_min(tiny)
    return {"cos_gate": cos, "up_dot": x @ up_row.float()}
