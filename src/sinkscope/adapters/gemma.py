"""Gemma: Llama's tree with a GeGLU MLP and (1 + weight) RMSNorm."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="gemma"))
