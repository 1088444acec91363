"""Qwen3: Llama's tree plus per-head q/k RMSNorm inside attention (already applied to what we capture)."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="qwen3"))
