"""Mistral: Llama's tree; its sliding window arrives in the attention mask."""

from dataclasses import replace

from .base import register_adapter
from .llama import LLAMA

register_adapter(replace(LLAMA, model_type="mistral"))
