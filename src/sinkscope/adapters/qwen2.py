"""Qwen2: Llama's tree with q/k/v biases (weights' biases need no adapter field)."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="qwen2"))
