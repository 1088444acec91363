"""SmolLM3: Llama's tree; some layers skip rotary (NoPE), which happens before attention sees q and k."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="smollm3"))
