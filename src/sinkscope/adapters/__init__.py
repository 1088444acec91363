"""Model-family adapters: where each family keeps its attention, MLP and norms."""

from . import bert, gemma, gemma2, gpt2, gpt_neox, llama, mistral, opt, phi3, qwen2, qwen3, sinkscope  # noqa: F401  (registers)
from .base import (
    Adapter,
    adapter_for,
    base_model,
    block_part,
    blocks,
    get_path,
    head_counts,
    register_adapter,
    supported_model_types,
    weight_out_in,
)

__all__ = [
    "Adapter", "adapter_for", "base_model", "block_part", "blocks", "get_path", "head_counts",
    "register_adapter", "supported_model_types", "weight_out_in",
]
