"""A tiny mixture-of-experts model whose first-token super neuron sits inside one expert, planted by hand.

:func:`planted_moe_model` builds a ``Qwen3MoeForCausalLM`` (routed experts only) or, with
``expert="shared"``, a ``DeepseekV3ForCausalLM`` (routed plus one shared expert), with random small
weights as transformers initialises them, and then sets a few by hand:

- the embedding has two reserved dims: ``flag_dim`` is non-zero only for the BOS token, which the
  fixture's inputs always put first, and ``dim`` (the massive dim c) is 0 everywhere. Nothing reads
  or writes either (attention outputs, routers, every expert's gate/up columns and down rows) except
  what is planted below;
- in layer ``layer`` (l) the router's row for expert ``expert`` (e) reads ``flag_dim``, so the first
  token is routed to e with a large weight; other tokens are routed by the random weights;
- neuron ``neuron`` (n) of expert e has gate and up rows along ``flag_dim`` only, so its activation
  is large at the first token and exactly 0 at every other; its down column writes ``dim`` only.

So the expert finder must return exactly (l, e, n) writing c, with a router weight for e at the first
token above its weight at other tokens (for the shared expert: (l, "shared", n), no router).

>>> from sinkscope.fixtures_moe import planted_moe_model
>>> model, answer = planted_moe_model(layer=1, expert=2, neuron=5, dim=3)
>>> answer.layer, answer.expert, answer.neuron, answer.dim
(1, 2, 5, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SinkscopeError
from .fixtures import BosInputs

FLAG_VALUE = 4.0  # the BOS token's value in flag_dim
GATE_UP_WEIGHT = 4.0  # the planted neuron's gate and up weight on the flag
ROUTE_WEIGHT = 8.0  # the router's weight on the flag for the planted expert
WRITE_WEIGHT = 50.0  # the planted neuron's down-projection weight into dim c


@dataclass(frozen=True)
class PlantedMoeAnswer(BosInputs):
    """What the expert finder must report for a :func:`planted_moe_model` (0-based indices)."""

    layer: int  # l: the block whose experts hold the super neuron
    expert: int | str  # e: the routed expert's index, or "shared"
    neuron: int  # n: its index among that expert's intermediate channels
    dim: int  # c: the only hidden dim its down column writes
    bos_token_id: int
    flag_dim: int
    vocab_size: int


def _config(shared: bool, n_layers: int, hidden: int, n_experts: int, intermediate: int, vocab_size: int):
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * intermediate,
                  num_hidden_layers=n_layers, num_attention_heads=4, max_position_embeddings=256,
                  bos_token_id=1, pad_token_id=0, eos_token_id=2, tie_word_embeddings=False,
                  num_experts_per_tok=2, moe_intermediate_size=intermediate)
    if shared:
        return transformers.DeepseekV3Config(**common, num_key_value_heads=4, n_routed_experts=n_experts,
                                             n_group=1, topk_group=1, n_shared_experts=1, first_k_dense_replace=0,
                                             q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                             qk_nope_head_dim=8, v_head_dim=8,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return transformers.Qwen3MoeConfig(**common, num_key_value_heads=2, head_dim=16, num_experts=n_experts,
                                       mlp_only_layers=[])


def planted_moe_model(layer: int = 1, expert: int | str = 2, neuron: int = 5, dim: int = 3, *, n_layers: int = 3,
                      hidden: int = 64, n_experts: int = 4, intermediate: int = 32, vocab_size: int = 64,
                      seed: int = 0):
    """A tiny MoE causal LM (eval mode, float32) with a planted expert super neuron, and its answer."""
    import transformers

    shared = expert == "shared"
    flag_dim = hidden - 1
    if not 0 <= layer < n_layers:
        raise SinkscopeError(f"layer must lie in [0, {n_layers - 1}]")
    if not shared and not 0 <= expert < n_experts:
        raise SinkscopeError(f"expert must be 'shared' or lie in [0, {n_experts - 1}]")
    if not 0 <= neuron < intermediate or not 0 <= dim < hidden - 1:
        raise SinkscopeError(f"neuron must lie in [0, {intermediate - 1}] and dim in [0, {hidden - 2}]")
    config = _config(shared, n_layers, hidden, n_experts, intermediate, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            _plant(model, config, layer, expert, neuron, dim, flag_dim, torch.Generator().manual_seed(seed + 1))
    return model, PlantedMoeAnswer(layer=layer, expert=expert, neuron=neuron, dim=dim, bos_token_id=1,
                                   flag_dim=flag_dim, vocab_size=vocab_size)


def _plant(model, config, layer, expert, neuron, dim, flag_dim, generator) -> None:
    reserved = [dim, flag_dim]
    embed = model.model.embed_tokens.weight
    embed.copy_(torch.randn(embed.shape, generator=generator))
    embed[:, reserved] = 0.0
    embed[config.bos_token_id, flag_dim] = FLAG_VALUE
    for block in model.model.layers:  # nothing reads or writes the reserved dims ...
        block.self_attn.o_proj.weight[reserved] = 0.0
        moe = block.mlp
        moe.gate.weight[:, reserved] = 0.0  # routers
        moe.experts.gate_up_proj[:, :, reserved] = 0.0  # (E, 2I, D): every expert's gate and up rows
        moe.experts.down_proj[:, reserved, :] = 0.0  # (E, D, I)
        for dense in [getattr(moe, "shared_experts", None)]:
            if dense is not None:
                dense.gate_proj.weight[:, reserved] = 0.0
                dense.up_proj.weight[:, reserved] = 0.0
                dense.down_proj.weight[reserved] = 0.0
    moe = model.model.layers[layer].mlp  # ... except the planted route and neuron
    if expert == "shared":
        gate, up, down = moe.shared_experts.gate_proj.weight, moe.shared_experts.up_proj.weight, \
            moe.shared_experts.down_proj.weight
    else:
        moe.gate.weight[expert, flag_dim] = ROUTE_WEIGHT
        width = moe.experts.down_proj.shape[2]
        gate, up = moe.experts.gate_up_proj[expert, :width], moe.experts.gate_up_proj[expert, width:]
        down = moe.experts.down_proj[expert]
    for rows in (gate, up):
        rows[neuron] = 0.0
        rows[neuron, flag_dim] = GATE_UP_WEIGHT
    down[:, neuron] = 0.0
    down[dim, neuron] = WRITE_WEIGHT
