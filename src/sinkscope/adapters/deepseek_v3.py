"""DeepSeek-V3: multi-head latent attention (keys and values from a shared latent), dense first blocks, then experts.

There is no k_proj or v_proj: keys and values come out of ``kv_b_proj`` applied to a normalised
latent, and queries are wider (``qk_head_dim``) than values. MoE blocks add shared experts.
"""

from .base import Adapter, register_adapter

register_adapter(Adapter(
    model_type="deepseek_v3", layers="layers", attention="self_attn", o_proj="self_attn.o_proj",
    mlp="mlp", mlp_gate="mlp.gate_proj", mlp_up="mlp.up_proj", mlp_down="mlp.down_proj", experts="mlp.experts",
    shared_expert_down="mlp.shared_experts.down_proj",
    attn_norm="input_layernorm", final_norm="norm",
))
