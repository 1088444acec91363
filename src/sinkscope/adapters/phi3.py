"""Phi-3: fused qkv and fused gate+up projections, partial rotary in some variants."""

from .base import Adapter, register_adapter

register_adapter(Adapter(
    model_type="phi3", layers="layers", attention="self_attn",
    qkv_proj="self_attn.qkv_proj", o_proj="self_attn.o_proj",
    mlp_up="mlp.gate_up_proj", mlp_gate_up_fused=True, mlp_down="mlp.down_proj",
    attn_norm="input_layernorm", final_norm="norm",
))
