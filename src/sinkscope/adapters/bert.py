"""BERT: a bidirectional post-LN encoder; [CLS] (first) and [SEP] (last real token) are candidate sinks."""

from .base import Adapter, register_adapter

register_adapter(Adapter(
    model_type="bert", layers="encoder.layer", attention="attention.self",
    k_proj="attention.self.key", v_proj="attention.self.value",
    o_proj="attention.output.dense",
    mlp_up="intermediate.dense", mlp_down="output.dense",
    attn_norm="attention.output.LayerNorm", causal=False, pre_norm=False, candidate_sinks=(0, -1),
))
