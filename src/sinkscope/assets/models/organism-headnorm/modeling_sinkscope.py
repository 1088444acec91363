"""The pretraining model: one llama-style decoder with named attention variants, in one file.

Module names are exactly HF Llama's (``model.layers.N.self_attn.q_proj`` ...), so the ``softmax``
variant exports to a plain ``LlamaForCausalLM`` by copying the state dict, and sinkscope's llama
adapter serves every variant. Attention goes through transformers' attention-function registry,
so ``sinkscope probe`` captures the real attention of every variant.

Variants (``config.attention_variant``); lines that differ from the baseline say so:
  softmax     baseline causal softmax attention (SDPA)
  headnorm    per-head RMSNorm on each head's attention output before o_proj (Li et al. 2026)
  gated       sigmoid gate on each head's attention output, from the normalised layer input (Qiu et al. 2025)
  sigmoid     sigmoid(logit - log T) attention weights, no normalisation (Ramapuram et al. 2024)
  softmax1    one extra virtual key with logit 0 and a zero value (Miller 2023)
  sink_logit  like softmax1 but the extra logit is learned per head
``qk_norm`` (RMSNorm on q and k over head_dim, before rotary) combines with every variant.

Shapes: B batch, T tokens, C hidden size, H query heads, Hkv key/value heads, D head dim.

This file imports nothing from sinkscope but its sibling configuration_sinkscope.py: run folders carry
a copy of both, so they load with ``trust_remote_code=True`` where sinkscope is not installed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_sinkscope import VARIANTS, SinkscopeConfig  # noqa: F401  (VARIANTS: imported from here too)

CALIBRATION_LEN = 64  # Li et al. 2026: HeadNorm gamma is calibrated on random-normal input of T = 64
CALIBRATION_BATCH = 64  # random sequences whose first token gives each head's std


class RMSNorm(nn.Module):
    """x / RMS(x) * weight over the last dimension, computed in float32 (as HF Llama)."""

    def __init__(self, shape: int | tuple[int, ...], eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    """Rotary position embedding: cos/sin tables (B, T, D) from position ids (B, T)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self) -> torch.Tensor:
        """(D/2,) inverse frequencies; recomputed after from_pretrained (buffers are not saved)."""
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by position; cos/sin (B, T, D)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def exact_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                    sink_logit: torch.Tensor | None = None, sigmoid_bias: float | None = None, **kwargs):
    """Our own attention function, used when the configured one ("sdpa", "eager") ignores variant kwargs.

    query (B, H, T, D); key/value (B, Hkv, S, D); attention_mask None (plain causal), bool
    (True = visible) or additive float (B, 1, T, S). Returns (out (B, T, H, D), None).
    ``sink_logit`` (H,): a virtual extra key with that logit and a zero value (softmax1: zeros).
    ``sigmoid_bias``: weights sigmoid(logit + bias), not normalised.
    """
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)  # (B, H, S, D)
    value = value.repeat_interleave(n_rep, dim=1)
    T, S = query.shape[2], key.shape[2]
    if attention_mask is None:
        visible = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)  # (T, S) causal
        bias = None
    elif attention_mask.dtype == torch.bool:
        visible, bias = attention_mask, None
    else:
        visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        bias = attention_mask.float().masked_fill(~visible, 0.0)
    if sigmoid_bias is not None:  # sigmoid: differs from softmax, elementwise weights with no normalisation
        logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling  # (B, H, T, S)
        if bias is not None:
            logits = logits + bias
        weights = torch.sigmoid(logits + sigmoid_bias) * visible
        out = torch.matmul(weights.to(value.dtype), value)  # (B, H, T, D)
        return out.transpose(1, 2).contiguous(), None
    mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(~visible, float("-inf"))
    if bias is not None:
        mask = mask + bias.to(query.dtype)
    if sink_logit is None:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    # softmax1 / sink_logit: differs from softmax, one virtual key with a zero vector (so q . k = 0),
    # a zero value, and the per-head logit s_h added through the float mask; still one SDPA call.
    B, H, _, D = query.shape
    key = torch.cat([key, key.new_zeros(B, H, 1, D)], dim=2)  # (B, H, S + 1, D)
    value = torch.cat([value, value.new_zeros(B, H, 1, value.shape[-1])], dim=2)
    mask = mask if mask.dim() == 4 else mask[None, None]  # (B|1, 1|H, T, S)
    column = sink_logit.to(query.dtype).view(1, H, 1, 1).expand(mask.shape[0], H, T, 1)  # (B|1, H, T, 1)
    mask = torch.cat([mask.expand(mask.shape[0], H, T, S), column], dim=-1)  # (B|1, H, T, S + 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def sdpa_attention(module: nn.Module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                   **kwargs):
    """Fused causal SDPA for the variants that keep the plain softmax; (out (B, T, H, D), None)."""
    n_rep = query.shape[1] // key.shape[1]
    if attention_mask is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling,
                                             dropout_p=dropout, enable_gqa=n_rep > 1)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             dropout_p=dropout, enable_gqa=n_rep > 1)
    return out.transpose(1, 2).contiguous(), None


class SinkscopeAttention(nn.Module):
    def __init__(self, config: SinkscopeConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.variant = config.attention_variant
        C, H, Hkv, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_key_value_heads, self.head_dim = H, Hkv, D
        self.num_key_value_groups = H // Hkv  # read by transformers' eager/sdpa functions
        self.scaling = D ** -0.5
        self.is_causal = True
        self.attention_dropout = 0.0
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, Hkv * D, bias=False)
        self.v_proj = nn.Linear(C, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        if config.qk_norm:  # qk_norm: differs from softmax, RMSNorm of q and k over D before rotary
            self.q_norm = RMSNorm(D, config.rms_norm_eps)
            self.k_norm = RMSNorm(D, config.rms_norm_eps)
        if self.variant == "headnorm":  # headnorm: per-head RMSNorm gamma (H, D), or shared (D,)
            self.head_norm = RMSNorm(D if config.headnorm_shared else (H, D), config.headnorm_eps)
        if self.variant == "gated":  # gated: gate projection from the normalised layer input
            self.gate_proj = nn.Linear(C, H * D if config.gate == "elementwise" else H, bias=True)
        if self.variant == "sink_logit":  # sink_logit: one learned logit per head for a virtual zero-value key
            self.sink_logit = nn.Parameter(torch.zeros(H))

    def forward(self, x: torch.Tensor, position_embeddings, attention_mask=None, **kwargs):
        B, T, _ = x.shape  # x: the normalised layer input (B, T, C)
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.config.qk_norm:  # qk_norm: differs from softmax
            q, k = self.q_norm(q), self.k_norm(k)
        if self.config.rope:
            cos, sin = position_embeddings
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        extra, own = {}, sdpa_attention
        if self.variant == "softmax1":  # softmax1: differs from softmax, an extra logit fixed at 0
            extra, own = {"sink_logit": torch.zeros(self.num_heads, device=q.device)}, exact_attention
        elif self.variant == "sink_logit":  # sink_logit: differs from softmax, the extra logit is learned
            extra, own = {"sink_logit": self.sink_logit}, exact_attention
        elif self.variant == "sigmoid":  # sigmoid: differs from softmax, sigmoid(logit - log T), no normalisation
            extra, own = {"sigmoid_bias": -math.log(T)}, exact_attention
        implementation = self.config._attn_implementation
        if extra and implementation != "sinkscope":
            attention = own  # stock "sdpa"/"eager" would silently ignore the variant's keyword arguments
        elif implementation in (None, "sdpa"):
            attention = sdpa_attention
        else:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, own)
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **extra)
        # out: (B, T, H, D), the per-head attention outputs after value aggregation

        if self.variant == "headnorm":  # headnorm: differs from softmax, o_hat[t, h] = o / RMS(o) * gamma[h]
            out = self.head_norm(out)
        elif self.variant == "gated":  # gated: differs from softmax, out * sigmoid(x W_g + b_g)
            gate = torch.sigmoid(self.gate_proj(x)).view(B, T, self.num_heads, -1)  # (B, T, H, D or 1)
            out = out * gate
        return self.o_proj(out.reshape(B, T, -1)), weights  # (B, T, C)


class SinkscopeMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: SinkscopeConfig):
        super().__init__()
        C, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)


class SinkscopeDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: SinkscopeConfig, layer_idx: int):
        super().__init__()
        self.self_attn = SinkscopeAttention(config, layer_idx)
        self.mlp = SinkscopeMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, position_embeddings, attention_mask=None, **kwargs):
        attn_out, _ = self.self_attn(self.input_layernorm(x), position_embeddings, attention_mask)
        x = x + attn_out
        return x + self.mlp(self.post_attention_layernorm(x))


class SinkscopePreTrainedModel(PreTrainedModel):
    config_class = SinkscopeConfig
    config: SinkscopeConfig
    base_model_prefix = "model"
    _no_split_modules = ["SinkscopeDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True  # lets sinkscope's registered "sinkscope" attention function be set

    def _init_weights(self, module: nn.Module) -> None:
        from transformers import initialization as init

        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, SinkscopeAttention) and hasattr(module, "sink_logit"):
            init.zeros_(module.sink_logit)
        elif isinstance(module, Rotary):
            init.copy_(module.inv_freq, module.frequencies())


class SinkscopeModel(SinkscopePreTrainedModel):
    def __init__(self, config: SinkscopeConfig):
        super().__init__(config)
        config.validate_variant()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SinkscopeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = Rotary(config.head_dim, config.rope_theta)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)[None]  # (1, T)
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)  # None for plain causal under SDPA
        position_embeddings = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, position_embeddings, mask)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x))


class SinkscopeForCausalLM(SinkscopePreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SinkscopeConfig):
        super().__init__(config)
        self.model = SinkscopeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                **kwargs) -> CausalLMOutputWithPast:
        hidden = self.model(input_ids, attention_mask, position_ids, inputs_embeds).last_hidden_state
        logits = self.lm_head(hidden)  # (B, T, vocab)
        loss = None
        if labels is not None:  # next-token loss; labels == input_ids, -100 ignored
            targets = F.pad(labels, (0, 1), value=-100)[:, 1:]  # (B, T) shift the labels, not the logits (no copy)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


@torch.no_grad()
def calibrate_gamma(gamma: torch.Tensor, input_norm: nn.Module, v_proj: nn.Linear, n_heads: int, seed: int = 0) -> None:
    """Set a HeadNorm gamma to the std of each head's first-token attention output (Li et al. 2026).

    The layer sees random-normal input (CALIBRATION_BATCH, CALIBRATION_LEN, C) through its own input
    norm. Under causal attention the first token attends only to itself, so its head output is exactly
    its value vector v_0 (expanded from key/value heads to query heads under GQA). gamma[h, :] = std of
    head h's outputs over batch and D; a shared gamma (D,) takes the std over all heads.
    """
    generator = torch.Generator().manual_seed(seed)
    C = v_proj.in_features
    x = torch.randn(CALIBRATION_BATCH, CALIBRATION_LEN, C, generator=generator)
    x = input_norm(x.to(v_proj.weight.device, v_proj.weight.dtype))
    v = v_proj(x[:, :1]).float()  # (B, 1, Hkv * D), the first token's values
    n_kv = v.shape[-1] // (gamma.shape[-1])
    v = v.view(v.shape[0], n_kv, -1).repeat_interleave(n_heads // n_kv, dim=1)  # (B, H, D)
    if gamma.dim() == 1:  # shared gamma (D,)
        gamma.fill_(v.std().item())
    else:
        gamma.copy_(v.std(dim=(0, 2))[:, None].expand_as(gamma))  # (H, D), one value per head


def build_model(config: SinkscopeConfig, seed: int = 0) -> SinkscopeForCausalLM:
    """A freshly initialised model (seeded); HeadNorm gammas calibrated as in the paper."""
    config.validate_variant()
    torch.manual_seed(seed)
    model = SinkscopeForCausalLM(config)
    if config.attention_variant == "headnorm":  # headnorm: differs from softmax, calibrated gamma at init
        for i, layer in enumerate(model.model.layers):
            calibrate_gamma(layer.self_attn.head_norm.weight, layer.input_layernorm, layer.self_attn.v_proj,
                            config.num_attention_heads, seed=seed + i)
    return model
