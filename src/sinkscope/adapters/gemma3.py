"""Gemma3 (text): QK-norm, sandwich norms, interleaved sliding/full layers with their own rotary bases.

The module tree is Llama's; each layer's window arrives in its mask. The multimodal ``gemma3``
wraps the same text decoder (``model.language_model``); sinkscope probes that decoder on its own,
with the wrapper's output head, so text inputs see exactly what the full model computes.
"""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

# main diff with llama: gemma2's sandwich norms on each block's attention and FFN outputs
GEMMA3_TEXT = register_adapter(replace(LLAMA, model_type="gemma3_text", attn_out_norm="post_attention_layernorm",
                                       mlp_out_norm="post_feedforward_layernorm"))
# main diff with gemma3_text: the decoder sits under language_model, in a wrapper with a vision tower
register_adapter(replace(GEMMA3_TEXT, model_type="gemma3", layers="language_model.layers",
                         final_norm="language_model.norm", text_model="model.language_model"))
