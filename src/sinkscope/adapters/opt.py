"""OPT: learned absolute positions (offset by 2); the FFN's fc1/fc2 sit directly on the block."""

from .base import Adapter, register_adapter

register_adapter(Adapter(
    model_type="opt", layers="decoder.layers", attention="self_attn",
    k_proj="self_attn.k_proj", v_proj="self_attn.v_proj", o_proj="self_attn.out_proj",
    mlp_up="fc1", mlp_down="fc2",
    attn_norm="self_attn_layer_norm", final_norm="decoder.final_layer_norm",
))
