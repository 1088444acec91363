"""Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorm); blocks are dense (``mlp_only_layers``) or experts."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="qwen3_moe", experts="mlp.experts"))
