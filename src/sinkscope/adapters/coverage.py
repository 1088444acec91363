"""Which of an adapter's declared parts a loaded model actually has, block by block.

Every module path an adapter declares must resolve on a model of its family (a test checks this
for each family), and the parts a pipeline needs but a model lacks are named, never guessed.
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, base_model, blocks

BASE_PARTS = ("layers", "final_norm")  # paths from the base model; every other path field is from a block
PATH_FIELDS = ("layers", "attention", "o_proj", "mlp_down", "mlp_up", "mlp_gate", "experts", "shared_expert_down",
               "k_proj", "v_proj", "qkv_proj", "attn_norm", "final_norm", "text_model")


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


def chain_gaps(model: nn.Module, adapter: Adapter) -> list[str]:
    """Why the chain (super neurons, QK locking) cannot run on this model as it stands; empty when it can."""
    gaps = []
    n_layers = len(blocks(model, adapter))
    dense = set(blocks_with(model, adapter, "mlp_down"))
    if len(dense) < n_layers:
        experts = blocks_with(model, adapter, "experts")
        missing = sorted(set(range(n_layers)) - dense)
        what = (f"a mixture of experts ({adapter.experts}, fused expert weights)" if set(missing) <= set(experts)
                else "not a dense MLP this adapter names")
        gaps.append(f"the FFN of layer(s) {', '.join(map(str, missing))} is {what}; "
                    "the dense chain does not run there; "
                    "the super-neuron finder inside experts reports in expert_neurons")
    if adapter.k_proj is None and adapter.qkv_proj is None:
        gaps.append("keys are built from a shared latent (multi-head latent attention), with no key projection "
                    "to read the sink's key direction from, so QK locking does not apply")
    return gaps
