"""The configuration of sinkscope's pretraining model (``model_type`` "sinkscope").

Self-contained on purpose: run folders carry a copy of this file and of model.py (as
``configuration_sinkscope.py`` / ``modeling_sinkscope.py``, named in ``auto_map``), so that
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works without sinkscope
installed. It imports only transformers' configuration base class, so sinkscope can register it with
AutoConfig as soon as transformers' auto module loads.
"""

from __future__ import annotations

from transformers import PretrainedConfig

VARIANTS = ("softmax", "headnorm", "gated", "sigmoid", "softmax1", "sink_logit")


class SinkscopeConfig(PretrainedConfig):
    model_type = "sinkscope"

    def __init__(
        self,
        vocab_size: int = 2048,  # BPE vocabulary; small vocabularies make CPU runs fast
        hidden_size: int = 192,  # C, the residual stream width
        intermediate_size: int = 768,  # SwiGLU inner width (the paper uses 4 C)
        num_hidden_layers: int = 6,  # depth; the sink needs a few layers to form (onset is mid-depth)
        num_attention_heads: int = 6,  # H query heads
        num_key_value_heads: int | None = None,  # Hkv < H gives grouped-query attention; None = H
        head_dim: int | None = None,  # D; None = C / H
        max_position_embeddings: int = 512,  # longest sequence; rotary has no table, this is a guard
        rope_theta: float = 10000.0,  # rotary base frequency (Llama 2's)
        rope: bool = True,  # False: no positional encoding (NoPE), so a position is known only through the causal mask
        rms_norm_eps: float = 1e-6,  # RMSNorm epsilon of the block norms
        initializer_range: float = 0.02,  # std of the normal init of every matrix (GPT-2 / Llama)
        tie_word_embeddings: bool = True,  # lm_head shares the embedding matrix (paper setup; fewer params)
        attention_variant: str = "softmax",  # one of VARIANTS
        qk_norm: bool = False,  # RMSNorm on queries and keys per head, combinable with every variant
        headnorm_shared: bool = False,  # headnorm: one gamma (D,) for all heads instead of (H, D)
        headnorm_eps: float = 1e-6,  # headnorm: epsilon of the per-head RMS (paper value)
        gate: str = "elementwise",  # gated: "elementwise" (H*D gates) or "headwise" (H gates)
        bos_token_id: int = 0,  # fixed first token of every training window: where the sink forms
        eos_token_id: int = 1,  # document separator in the training stream
        pad_token_id: int = 2,  # padding for batched analysis
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope = rope
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.attention_variant = attention_variant
        self.qk_norm = qk_norm
        self.headnorm_shared = headnorm_shared
        self.headnorm_eps = headnorm_eps
        self.gate = gate
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def validate_variant(self) -> None:
        """ValueError, not SinkscopeError: this file is copied into run folders and must not import sinkscope."""
        if self.attention_variant not in VARIANTS:
            raise ValueError(f"unknown attention variant '{self.attention_variant}'; choose one of {', '.join(VARIANTS)}")
        if self.gate not in ("elementwise", "headwise"):
            raise ValueError(f"gate must be elementwise or headwise, got '{self.gate}'")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
