"""Where the weights the chain reads live: the adapter's paths plus each family's storage convention.

Gated / fused gate_up / plain fc1-fc2 MLPs, and separate / fused / per-head-fused qkv projections,
all come back as detached (out, in) matrices, so reductions never need to know the family.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, block_part, weight_out_in


def mlp_weights(model: nn.Module, adapter: Adapter, layer: int) -> dict[str, torch.Tensor | None]:
    """{"gate": (I, D) or None, "up": (I, D), "down": (D, I)} of one layer's MLP, detached."""
    up = weight_out_in(block_part(model, adapter, layer, "mlp_up"), adapter).detach()
    gate = None
    if adapter.mlp_gate_up_fused:  # phi3: rows are [gate | up]
        gate, up = up.chunk(2, dim=0)
    elif adapter.mlp_gate is not None:
        gate = weight_out_in(block_part(model, adapter, layer, "mlp_gate"), adapter).detach()
    down = weight_out_in(block_part(model, adapter, layer, "mlp_down"), adapter).detach()
    return {"gate": gate, "up": up, "down": down}


def mlp_input_module(model: nn.Module, adapter: Adapter, layer: int) -> nn.Module:
    """The first MLP projection; its input is the (normalised) MLP input x."""
    part = "mlp_gate" if adapter.mlp_gate is not None else "mlp_up"
    return block_part(model, adapter, layer, part)


def key_weight(model: nn.Module, adapter: Adapter, layer: int, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    """One layer's key projection as (n_kv * Dh, D), split out of a fused qkv where needed."""
    if adapter.k_proj is not None:
        return weight_out_in(block_part(model, adapter, layer, "k_proj"), adapter).detach()
    qkv = weight_out_in(block_part(model, adapter, layer, "qkv_proj"), adapter).detach()
    D = qkv.shape[-1]
    if adapter.qkv_layout == "per_head":  # neox: per head [q | k | v], each Dh rows
        return qkv.reshape(n_heads, 3, head_dim, D)[:, 1].reshape(n_heads * head_dim, D)
    q_rows, k_rows = n_heads * head_dim, n_kv * head_dim
    return qkv[q_rows:q_rows + k_rows]
