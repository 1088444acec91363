"""Model-family adapters: where each family keeps its attention, MLP and norms."""

from . import (  # noqa: F401  (registers)
    bert, deepseek_v3, gemma, gemma2, gemma3, gpt2, gpt_neox, gpt_oss, llama, mistral, mixtral, olmo2, olmo3, opt, phi3,
    qwen2, qwen3, qwen3_moe, sinkscope, smollm3,
)
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
from .weights import key_weight, mlp_input_module, mlp_weights

__all__ = [
    "Adapter", "adapter_for", "base_model", "block_part", "blocks", "get_path", "head_counts",
    "register_adapter", "supported_model_types", "weight_out_in", "key_weight", "mlp_input_module", "mlp_weights",
]
