"""Where things live in a model family: declared as data, one small adapter per family.

An :class:`Adapter` names module paths; it never computes anything. Paths of blocks are relative
to ``model.base_model`` (so the same adapter serves ``LlamaModel`` and ``LlamaForCausalLM``);
paths of parts are relative to one block. ``None`` means the family has no such part.

To support a new family from user code::

    from sinkscope.adapters import Adapter, register_adapter
    register_adapter(Adapter(model_type="my_llama", layers="layers", attention="self_attn",
                             k_proj="self_attn.k_proj", v_proj="self_attn.v_proj", o_proj="self_attn.o_proj",
                             mlp_up="mlp.up_proj", mlp_gate="mlp.gate_proj", mlp_down="mlp.down_proj",
                             attn_norm="input_layernorm", final_norm="norm"))

A part may be missing from some blocks (a mixture-of-experts model whose first blocks are dense):
a path must resolve in at least one block, and the chain says which blocks it could not read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SinkscopeError


@dataclass(frozen=True)
class Adapter:
    model_type: str  # config.model_type this adapter serves
    layers: str  # ModuleList of blocks, from the base model
    attention: str  # module whose forward calls transformers' attention interface, from a block
    o_proj: str  # attention output projection; its input is the per-head outputs after value aggregation
    mlp_down: str | None = None  # dense FFN down projection (fc2); its input holds the "neuron" activations
    mlp_up: str | None = None  # dense FFN up projection (fc1), or the fused gate+up when mlp_gate_up_fused
    mlp_gate: str | None = None  # SwiGLU/GeGLU gate projection; None for plain fc1/act/fc2 MLPs
    mlp: str | None = None  # the whole FFN block, whose output is what it writes (a mixture of experts has no mlp_down)
    attn_out_norm: str | None = None  # sandwich norm on the attention block's output, before the residual add
    mlp_out_norm: str | None = None  # sandwich norm on the FFN block's output, before the residual add
    experts: str | None = None  # mixture-of-experts FFN: its experts module (fused per-expert weight tensors)
    shared_expert_down: str | None = None  # MoE: down projection of the always-on shared experts (DeepSeek)
    k_proj: str | None = None  # separate k/v projections; None when fused into qkv_proj or built from a latent (MLA)
    v_proj: str | None = None
    qkv_proj: str | None = None  # fused q/k/v projection (gpt2 c_attn, neox query_key_value, phi3 qkv_proj)
    qkv_layout: str = "concat"  # fused layout: "concat" = [q|k|v], "per_head" = neox's [h0:q,k,v | h1:q,k,v ...]
    mlp_gate_up_fused: bool = False  # phi3: mlp_up holds [gate | up] in one Linear
    attn_norm: str | None = None  # norm before attention (pre-LN) or after it (post-LN encoders)
    final_norm: str | None = None  # from the base model
    causal: bool = True  # False for bidirectional encoders
    conv1d: bool = False  # gpt2's Conv1D stores weights as (in, out) instead of nn.Linear's (out, in)
    pre_norm: bool = True  # attn_norm reads the residual stream entering the block; False for post-LN encoders
    candidate_sinks: tuple[int, ...] = (0,)  # key positions tracked by default; negative counts from the last real token
    text_model: str | None = None  # multimodal wrapper: its text decoder, from the top-level model, probed on its own


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter, *, replace: bool = False) -> Adapter:
    """Make ``adapter`` available to every sinkscope command for its ``model_type``."""
    if adapter.model_type in _REGISTRY and not replace:
        raise SinkscopeError(f"an adapter for '{adapter.model_type}' is already registered; pass replace=True")
    _REGISTRY[adapter.model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for(model_or_config) -> Adapter:
    """The adapter for a model (or its config), or a clear error listing what is supported."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    raise SinkscopeError(
        f"unsupported architecture '{model_type}'; supported: {', '.join(supported_model_types())}. "
        "Register one with sinkscope.adapters.register_adapter(Adapter(model_type=..., layers=..., ...)); "
        "see docs/adapters.md"
    )


def get_path(root: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def base_model(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def blocks(model: nn.Module, adapter: Adapter) -> nn.ModuleList:
    return get_path(base_model(model), adapter.layers)


def block_part(model: nn.Module, adapter: Adapter, layer: int, part: str) -> nn.Module | None:
    """The module named by adapter field ``part`` (e.g. "o_proj") in block ``layer``."""
    return get_path(blocks(model, adapter)[layer], getattr(adapter, part))


def weight_out_in(module: nn.Module, adapter: Adapter) -> torch.Tensor:
    """A projection's weight as (out_features, in_features), whatever the storage convention."""
    weight = module.weight
    return weight.t() if adapter.conv1d else weight


def head_counts(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) from a config, including grouped- and multi-query."""
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    # qk_head_dim: latent attention (MLA), whose query/key heads are wider than its rotary head_dim
    head_dim = (getattr(config, "qk_head_dim", None) or getattr(config, "head_dim", None)
                or config.hidden_size // n_heads)
    return n_heads, n_kv, head_dim
