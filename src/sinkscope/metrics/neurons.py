"""Link two (method.md section 3): super neurons and channel-sparse down-projections.

Pure tensor functions on MLP weights (already as (out, in)) and on intermediate activations.
Conventions: I intermediate channels ("neurons"), D hidden dims, T positions.
"""

from __future__ import annotations

import torch

from .stats import excess_kurtosis


def spike_ratios(sink_act: torch.Tensor, other_abs_sum: torch.Tensor, other_count: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How far each channel's activation at the sink token stands above its two scale-free references.

    sink_act: (B, I) activations at each sequence's sink token; other_abs_sum: (B, I) sum of |a| of
    the same channel over the sequence's other tokens; other_count: (B,) how many those are. Returns
    (token_ratio, channel_ratio, channel_mean): token_ratio (B, I) = |a_sink| / mean |a| of the same
    channel at the other tokens; channel_ratio (B, I) = |a_sink| / mean |a| of the *other* channels at
    the sink token (a mean, not a median: ReLU layers are mostly exact zeros); channel_mean (B,) the
    mean |a| over all channels at the sink. A zero reference gives inf for a non-zero activation; a
    sequence with no other token gets token_ratio 0 (nothing to compare against).
    """
    sink = sink_act.float().abs()
    count = other_count.to(other_abs_sum.dtype)[:, None]
    mean_other = (other_abs_sum / count.clamp(min=1)).float()
    token = sink / mean_other
    token = torch.where(sink == 0, 0.0, token).masked_fill(count == 0, 0.0)
    total = sink.sum(-1, keepdim=True)
    rest = ((total - sink) / max(sink.shape[-1] - 1, 1)).clamp_min(0)  # (B, I): mean of the other channels
    channel = torch.where(sink == 0, 0.0, sink / rest)
    return token, channel, total[:, 0] / sink.shape[-1]


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


def column_profile(column: torch.Tensor, top: int) -> dict:
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


def selectivity_by_position(x_sum: torch.Tensor, unit_sum: torch.Tensor, act_sum: torch.Tensor, count: torch.Tensor,
                            gate_row: torch.Tensor | None, up_row: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean selectivity of one neuron by position: cos(x, w_gate), x . w_up and its activation (method.md section 3).

    x_sum, unit_sum: (T, D) sums over sequences of the MLP input x (after its norm) and of x / |x|;
    act_sum: (T,) sums of the neuron's activation; count: (T,) tokens summed; gate_row, up_row: (D,).
    Both scores are linear in those sums, so the means are exact. For a plain fc1/act/fc2 MLP pass
    gate_row=None: the cosine then uses the fc1 row. Returns {"cos_gate", "up_dot", "activation"},
    (T,) float64, NaN where count is 0.
    """
    row = (gate_row if gate_row is not None else up_row).double()
    seen = count.double().where(count > 0, torch.nan)
    cos = unit_sum.double() @ row / torch.linalg.vector_norm(row).clamp_min(torch.finfo(torch.float32).tiny)
    return {"cos_gate": cos / seen, "up_dot": x_sum.double() @ up_row.double() / seen,
            "activation": act_sum.double() / seen}
