"""Gemma2: sandwich norms, alternating sliding-window layers and attention-logit soft-capping.

The module tree is Llama's; the window arrives in each layer's mask and the cap as ``softcap``.
"""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

# main diff with llama: each block's attention and FFN outputs pass a norm before the residual add
register_adapter(replace(LLAMA, model_type="gemma2", attn_out_norm="post_attention_layernorm",
                         mlp_out_norm="post_feedforward_layernorm"))
