"""Mixtral: Llama's attention (sliding window in the mask) and a mixture-of-experts FFN in every block."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="mixtral", mlp_gate=None, mlp_up=None, mlp_down=None,
                         experts="mlp.experts"))
