"""gpt-oss: a learned sink logit per head (``s_aux``), alternating sliding/full layers, a mixture of experts.

The attention tree is Llama's; every FFN is a router plus fused experts, so there is no dense MLP.
"""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="gpt_oss", mlp_gate=None, mlp_up=None, mlp_down=None,
                         experts="mlp.experts"))
