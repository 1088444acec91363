"""Llama and the families that copy its module tree."""

from .base import Adapter, register_adapter

LLAMA = register_adapter(Adapter(
    model_type="llama", layers="layers", attention="self_attn",
    k_proj="self_attn.k_proj", v_proj="self_attn.v_proj", o_proj="self_attn.o_proj",
    mlp="mlp", mlp_gate="mlp.gate_proj", mlp_up="mlp.up_proj", mlp_down="mlp.down_proj",
    attn_norm="input_layernorm", final_norm="norm",
))
