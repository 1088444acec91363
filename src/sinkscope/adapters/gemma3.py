"""Gemma3 (text): QK-norm, sandwich norms, interleaved sliding/full layers with their own rotary bases.

The module tree is Llama's; each layer's window arrives in its mask.
"""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="gemma3_text"))
