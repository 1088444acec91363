"""GPT-2: learned absolute positions, fused c_attn, Conv1D weights stored (in, out)."""

from .base import Adapter, register_adapter

register_adapter(Adapter(
    model_type="gpt2", layers="h", attention="attn",
    qkv_proj="attn.c_attn", o_proj="attn.c_proj",
    mlp_up="mlp.c_fc", mlp_down="mlp.c_proj",
    attn_norm="ln_1", final_norm="ln_f", conv1d=True,
))
