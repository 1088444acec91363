"""Which of an adapter's declared parts a loaded model actually has, block by block.

Every module path an adapter declares must resolve on a model of its family (a test checks this
for each family), and the parts a pipeline needs but a model lacks are named, never guessed.
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, base_model, blocks

BASE_PARTS = ("layers", "final_norm")  # paths from the base model; every other path field is from a block
PATH_FIELDS = ("layers", "attention", "o_proj", "mlp_down", "mlp_up", "mlp_gate", "mlp", "attn_out_norm",
               "mlp_out_norm", "experts", "shared_expert_down", "k_proj", "v_proj", "qkv_proj", "attn_norm",
               "final_norm", "text_model")


def declared_paths(adapter: Adapter) -> dict[str, str]:
    """Every module path the adapter declares, by field name."""
    return {name: getattr(adapter, name) for name in PATH_FIELDS if getattr(adapter, name) is not None}


def find(root: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path`` under ``root``, or None where this model has no such part."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def blocks_with(model: nn.Module, adapter: Adapter, part: str) -> list[int]:
    """Indices of the blocks in which adapter field ``part`` resolves (all of them for a base-model part)."""
    path = getattr(adapter, part)
    if path is None:
        return []
    layers = blocks(model, adapter)
    if part in BASE_PARTS:
        return list(range(len(layers))) if find(base_model(model), path) is not None else []
    return [i for i, block in enumerate(layers) if find(block, path) is not None]
