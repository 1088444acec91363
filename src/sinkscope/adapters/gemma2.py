"""Gemma2: sandwich norms, alternating sliding-window layers and attention-logit soft-capping."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

# main diff with Llama: the FFN's input norm is pre_feedforward_layernorm
register_adapter(replace(LLAMA, model_type="gemma2", mlp_norm="pre_feedforward_layernorm"))
