"""A small Llama whose attention sink is planted by hand, so every link of the chain is known.

:func:`planted_sink_model` builds a ``LlamaForCausalLM`` (random small weights, as transformers
initialises them) and then sets a few weights by hand:

- the embedding has three reserved dims: ``flag_dim`` is non-zero only for the BOS token, which
  the fixture's inputs always put first; ``constant_dim`` is 1 for every token; ``dim`` (the
  massive dim c) is 0 everywhere. No attention output or down projection writes any of the three,
  except the planted neuron;
- neuron ``neuron`` (n) of layer ``layer`` (l) has gate and up rows along ``flag_dim`` only, so
  its activation is silu(G x_b) * U x_b: large at the first token and exactly 0 at every other;
- its down-projection column writes ``dim`` only, with a weight that makes the first token's
  residual stream from layer l + 1 on hold a massive activation (> 1000 x its median) in dim c;
- in every later layer each head's key projection maps dim c, and its query projection maps
  ``constant_dim``, onto the same direction of the head's lowest-frequency rotary pair (which
  barely rotates over a few hundred positions), so q . k_first is large and positive for every
  query: the heads lock onto the first token and the sink sets in at layer l + 1.

So the finders must return super neuron (l, n) writing c, disparity layer input l + 1 (the
residual stream entering layer l + 1) and onset layer l + 1.

>>> from sinkscope.fixtures import planted_sink_model
>>> model, answer = planted_sink_model(layer=1, neuron=5, dim=3)
>>> answer.layer, answer.neuron, answer.dim, answer.disparity_layer_input, answer.onset_layer
(1, 5, 3, 2, 2)
>>> len(answer.inputs(2, 16)[0]), answer.inputs(2, 16)[0][0] == answer.bos_token_id
(16, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SinkscopeError

GATE_UP_WEIGHT = 4.0  # the planted neuron's gate and up weight on the BOS flag
FLAG_VALUE = 4.0  # the BOS token's value in flag_dim (its RMS-normalised value is about 3.6)
MASSIVE_TARGET = 4000.0  # default first-token |h_c| from layer l + 1 on (Llama-2-7B: ~2500 in dim 2533)


class BosInputs:
    """What a planted model is fed: its BOS first (only BOS sets flag_dim), then random ids (pad 0, BOS 1)."""

    bos_token_id: int
    vocab_size: int

    def inputs(self, n: int, seq_len: int, seed: int = 0) -> list[list[int]]:
        """``n`` sequences of ``seq_len`` ids: BOS, then uniform random ids that are never BOS or pad."""
        generator = torch.Generator().manual_seed(seed)
        body = torch.randint(2, self.vocab_size, (n, seq_len - 1), generator=generator)
        return [[self.bos_token_id] + row for row in body.tolist()]


@dataclass(frozen=True)
class PlantedAnswer(BosInputs):
    """What the chain finders must report for a :func:`planted_sink_model` (0-based indices)."""

    layer: int  # l: the super neuron's layer
    neuron: int  # n: its index among the MLP's intermediate channels
    dim: int  # c: the only hidden dim its down-projection column writes (the massive dim)
    disparity_layer_input: int  # l + 1: the first layer whose input shows the dimension disparity
    onset_layer: int  # l + 1: the first layer whose heads lock onto the first token
    bos_token_id: int
    flag_dim: int
    constant_dim: int
    vocab_size: int


def planted_sink_model(layer: int = 1, neuron: int = 5, dim: int = 3, *, n_layers: int = 4, hidden: int = 64,
                       intermediate: int = 128, n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 16,
                       vocab_size: int = 64, lock_logit: float = 12.0, massive: float = MASSIVE_TARGET, seed: int = 0):
    """A ``LlamaForCausalLM`` (eval mode, float32) with a planted chain, and its :class:`PlantedAnswer`.

    ``lock_logit`` is about the attention logit every later query gives the first token (12 makes
    > 99 % of each row's attention go to it at T = 64); ``massive`` is about the first token's |h_c|
    from layer l + 1 on (the verdicts must not depend on it: they are checked from 20 to 2000).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    flag_dim, constant_dim = hidden - 1, hidden - 2
    if not 0 <= layer < n_layers - 1:
        raise SinkscopeError(f"layer must lie in [0, {n_layers - 2}] so a later layer can lock onto the sink")
    if not 0 <= neuron < intermediate:
        raise SinkscopeError(f"neuron must lie in [0, {intermediate - 1}]")
    if not massive > 0:
        raise SinkscopeError("massive must be positive (the first token's |h_c| after the planted layer)")
    if not 0 <= dim < hidden - 2:
        raise SinkscopeError(f"dim must lie in [0, {hidden - 3}] (the last two dims are reserved)")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                         head_dim=head_dim, max_position_embeddings=1024, bos_token_id=1, pad_token_id=0,
                         eos_token_id=2, tie_word_embeddings=False, rms_norm_eps=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            _plant(model, config, layer, neuron, dim, flag_dim, constant_dim, lock_logit, massive, generator)
    answer = PlantedAnswer(layer=layer, neuron=neuron, dim=dim, disparity_layer_input=layer + 1, onset_layer=layer + 1,
                           bos_token_id=1, flag_dim=flag_dim, constant_dim=constant_dim, vocab_size=vocab_size)
    return model, answer


def _plant(model, config, layer, neuron, dim, flag_dim, constant_dim, lock_logit, massive, generator) -> None:
    reserved = [dim, flag_dim, constant_dim]
    embed = model.model.embed_tokens.weight
    embed.copy_(torch.randn(embed.shape, generator=generator))
    embed[:, reserved] = 0.0
    embed[:, constant_dim] = 1.0
    embed[config.bos_token_id, flag_dim] = FLAG_VALUE
    for block in model.model.layers:  # nothing but the planted neuron writes the reserved dims
        block.self_attn.o_proj.weight[reserved] = 0.0
        block.mlp.down_proj.weight[reserved] = 0.0
    mlp = model.model.layers[layer].mlp
    for proj in (mlp.gate_proj, mlp.up_proj):
        proj.weight[neuron] = 0.0
        proj.weight[neuron, flag_dim] = GATE_UP_WEIGHT
    # activation at the first token ~ silu(G x_b) * G x_b with x_b ~ FLAG_VALUE / rms(embedding)
    x_flag = FLAG_VALUE / float(embed[config.bos_token_id].pow(2).mean().sqrt())
    act = torch.nn.functional.silu(torch.tensor(GATE_UP_WEIGHT * x_flag)) * GATE_UP_WEIGHT * x_flag
    mlp.down_proj.weight[:, neuron] = 0.0
    mlp.down_proj.weight[dim, neuron] = massive / float(act)
    # locking: key of dim c and query of the constant dim share one low-frequency rotary direction per kv head
    n_heads, n_kv, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    half = head_dim // 2
    slow = [half - 1, head_dim - 1, half - 2, head_dim - 2]  # the two slowest rotary pairs (i, i + Dh/2)
    strength = (lock_logit * head_dim ** 0.5 / config.hidden_size ** 0.5) ** 0.5  # q.k * scale ~ lock_logit
    for later in model.model.layers[layer + 1:]:
        attn = later.self_attn
        for g in range(n_kv):
            direction = torch.zeros(head_dim)
            direction[slow] = torch.randn(len(slow), generator=generator).abs() + 0.5
            direction /= direction.norm()
            attn.k_proj.weight[g * head_dim:(g + 1) * head_dim, dim] = strength * direction
            for h in range(g * (n_heads // n_kv), (g + 1) * (n_heads // n_kv)):
                attn.q_proj.weight[h * head_dim:(h + 1) * head_dim, constant_dim] = strength * direction
