"""OLMo-2: norms after attention and after the FFN (none before them), QK-norm over all heads.

No norm reads the block's input, so the residual stream is read from block outputs.
"""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

OLMO2 = register_adapter(replace(LLAMA, model_type="olmo2", attn_norm=None, attn_out_norm="post_attention_layernorm",
                                 mlp_out_norm="post_feedforward_layernorm"))
