"""Bridges to plain transformers models: Llama export/import, and HeadNorm added to any llama-family model."""

from __future__ import annotations

from torch import nn

from ..adapters import adapter_for, block_part, blocks, head_counts
from ..errors import SinkscopeError
from .model import RMSNorm, SinkscopeConfig, SinkscopeForCausalLM, calibrate_gamma


def to_llama(model: SinkscopeForCausalLM):
    """The ``softmax`` variant as a plain ``LlamaForCausalLM`` with the same weights (state-dict copy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    if c.attention_variant != "softmax" or c.qk_norm or not c.rope:
        raise SinkscopeError(f"only softmax runs with rotary and without qk_norm export to Llama (this one: "
                             f"{c.attention_variant}{', qk_norm' if c.qk_norm else ''}{', no rope' if not c.rope else ''}); "
                             "save it with save_pretrained instead")
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings, initializer_range=c.initializer_range,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        attention_bias=False, mlp_bias=False, hidden_act="silu",
    )
    llama = LlamaForCausalLM(config)
    missing, unexpected = llama.load_state_dict(model.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SinkscopeError(f"state dicts differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return llama.to(next(model.parameters()).dtype)


def from_llama(llama: nn.Module, variant: str = "softmax", seed: int = 0) -> SinkscopeForCausalLM:
    """Our model with a Llama checkpoint's weights; ``variant="headnorm"`` adds calibrated HeadNorm."""
    c = llama.config
    if c.model_type != "llama" or getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise SinkscopeError(f"from_llama takes a bias-free llama checkpoint, not '{c.model_type}'; "
                             "for other families call sinkscope.train.add_headnorm(model) on the loaded model")
    if variant not in ("softmax", "headnorm"):
        raise SinkscopeError("a Llama checkpoint continues as softmax or headnorm; the other variants change "
                             "the attention the weights were trained with")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise SinkscopeError(f"rope type '{rope.get('rope_type')}' is not supported by sinkscope's model")
    config = SinkscopeConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=getattr(c, "head_dim", None),
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_theta=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        tie_word_embeddings=c.tie_word_embeddings, attention_variant=variant,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    model = SinkscopeForCausalLM(config)
    missing, unexpected = model.load_state_dict(llama.state_dict(), strict=False)
    allowed = {k for k in missing if k.endswith("head_norm.weight") or k == "lm_head.weight"}
    if unexpected or set(missing) - allowed:
        raise SinkscopeError(f"state dicts differ: missing {sorted(set(missing) - allowed)[:3]}, "
                             f"unexpected {unexpected[:3]}")
    if variant == "headnorm":
        for i, layer in enumerate(model.model.layers):
            calibrate_gamma(layer.self_attn.head_norm.weight, layer.input_layernorm, layer.self_attn.v_proj,
                            config.num_attention_heads, seed=seed + i)
    return model.to(next(llama.parameters()).dtype)


def add_headnorm(model: nn.Module, shared: bool = False, eps: float = 1e-6, seed: int = 0) -> nn.Module:
    """Insert calibrated per-head RMSNorm before every o_proj of a loaded llama-family model, in place.

    Each attention module gains a trainable ``head_norm`` (gamma (H, D), or (D,) when ``shared``) and
    a forward pre-hook on its o_proj that normalises each head's output. The model can then be
    continue-pretrained as usual; its state dict carries ``...self_attn.head_norm.weight``.

    >>> import transformers
    >>> from sinkscope.train import add_headnorm
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    >>> model = add_headnorm(transformers.LlamaForCausalLM(cfg))
    >>> tuple(model.model.layers[0].self_attn.head_norm.weight.shape)
    (4, 8)
    """
    adapter = adapter_for(model)
    if adapter.v_proj is None or adapter.attn_norm is None:
        raise SinkscopeError(f"add_headnorm needs separate v_proj and a pre-attention norm; "
                             f"'{adapter.model_type}' has neither")
    n_heads, _, head_dim = head_counts(model.config)
    param = next(model.parameters())
    for layer, block in enumerate(blocks(model, adapter)):
        attention = block_part(model, adapter, layer, "attention")
        if hasattr(attention, "head_norm"):
            raise SinkscopeError(f"layer {layer} already has a head_norm")
        norm = RMSNorm(head_dim if shared else (n_heads, head_dim), eps).to(param.device, param.dtype)
        calibrate_gamma(norm.weight, block_part(model, adapter, layer, "attn_norm"),
                        block_part(model, adapter, layer, "v_proj"), n_heads, seed=seed + layer)
        attention.head_norm = norm
        block_part(model, adapter, layer, "o_proj").register_forward_pre_hook(_head_norm_hook(norm, n_heads))
    return model


def _head_norm_hook(norm: RMSNorm, n_heads: int):
    def hook(module, args):
        (x,) = args  # (B, T, H * D), the concatenated head outputs
        shape = x.shape
        return (norm(x.view(*shape[:-1], n_heads, -1)).reshape(shape),)
    return hook
