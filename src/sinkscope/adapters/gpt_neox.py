"""GPT-NeoX / Pythia: per-head interleaved fused qkv and partial rotary."""

from .base import Adapter, register_adapter

register_adapter(Adapter(
    model_type="gpt_neox", layers="layers", attention="attention",
    qkv_proj="attention.query_key_value", qkv_layout="per_head", o_proj="attention.dense",
    mlp_up="mlp.dense_h_to_4h", mlp_down="mlp.dense_4h_to_h",
    attn_norm="input_layernorm", final_norm="final_layer_norm",
))
