"""Gemma2: sandwich norms, alternating sliding-window layers and attention-logit soft-capping.

The module tree is Llama's; the window arrives in each layer's mask and the cap as ``softcap``.
"""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="gemma2"))
