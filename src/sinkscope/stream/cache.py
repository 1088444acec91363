"""A transformers ``Cache`` that keeps a few sink tokens plus a recent window, StreamingLLM style.

Positions are re-assigned within the cache: every step, the cached keys are rotated to consecutive
positions ending at the current query's, so the model never sees a distance larger than the budget.
For that the cache stores keys *before* rotary: the attention module hands ``update`` keys already
rotated at their ``position_ids`` (transformers passes them in the update's kwargs), and the cache
undoes that rotation once, exactly, with the model's own rotary embedding. Memory is O(budget) per
layer. Use it in ``model.generate``::

    >>> import torch, transformers
    >>> from sinkscope.stream.cache import SinkCache
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, vocab_size=50)
    >>> model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    >>> cache = SinkCache(model, budget=8, keep_first=2)
    >>> out = model.generate(torch.tensor([[1, 5, 7]]), cache=cache, max_new_tokens=12, min_new_tokens=12,
    ...                      do_sample=False, pad_token_id=0)
    >>> out.shape[1], cache.layers[0].keys.shape[2] <= 8
    (15, True)

Supported: decoder families whose attention applies one rotary embedding (``rotate_half``
convention, over the full head dim, angle linear in the position: rope types default, linear,
llama3, yarn) held as ``model.base_model.rotary_emb``, with no sliding-window layers: llama,
mistral, qwen2, qwen3 and the embedded organisms exported to Llama. Anything else is refused with
a one-line error.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..adapters import base_model, head_counts
from ..errors import SinkscopeError

LINEAR_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # rotation angle = position * fixed frequency


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotation:
    """The model's rotary embedding as exact rotations R(p), without its attention scaling."""

    def __init__(self, model):
        rotary = getattr(base_model(model), "rotary_emb", None)
        config = model.config
        rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        _, _, head_dim = head_counts(config)
        layer_types = getattr(config, "layer_types", None) or ()
        if rotary is None or not hasattr(rotary, "inv_freq"):
            raise SinkscopeError(f"--positions cache needs a rotary model with a KV cache ({config.model_type} has "
                                 "none that sinkscope can re-rotate); use --positions original")
        if rotary.inv_freq.numel() * 2 != head_dim or rope_type not in LINEAR_ROPE_TYPES \
                or any(t != "full_attention" for t in layer_types) or getattr(config, "sliding_window", None):
            raise SinkscopeError(f"--positions cache supports full-dim rotary of types {', '.join(LINEAR_ROPE_TYPES)} "
                                 f"without sliding-window layers; {config.model_type} ({rope_type}) is not one: "
                                 "use --positions original")
        self.rotary = rotary
        self.scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def cos_sin(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, n, D) for positions (B, n)."""
        cos, sin = self.rotary(like, positions)
        return (cos / self.scaling).unsqueeze(1), (sin / self.scaling).unsqueeze(1)

    def apply(self, keys: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """R(p) k (or R(-p) k) in float32 for keys (B, H, n, D) at positions (B, n)."""
        cos, sin = self.cos_sin(keys.float(), positions)
        k = keys.float()
        return k * cos.float() + _rotate_half(k) * (-sin.float() if inverse else sin.float())


class SinkLayer(DynamicLayer):
    """One layer's cache: kept sinks + the last ``window - 1`` tokens, keys stored before rotary.

    ``self.keys`` (B, H_kv, n, D) pre-rotary, in float32 so that un-rotating and re-rotating a
    half-precision key adds no rounding beyond the model's own; ``self.index`` (n,) each entry's
    index in the token stream.
    """

    def __init__(self, rotation: Rotation, window: int, keep: frozenset[int]):
        super().__init__()
        self.rotation, self.window, self.keep = rotation, window, keep
        self._keep = torch.tensor(sorted(keep), dtype=torch.long)
        self.cumulative_length = 0
        self.index = torch.zeros(0, dtype=torch.long)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys = self.keys.float()
        B, _, n, _ = key_states.shape
        positions = (kwargs.get("kwargs") or {}).get("position_ids")
        if positions is None:  # the model numbered the new tokens from the cache's length
            positions = torch.arange(self.cumulative_length, self.cumulative_length + n, device=key_states.device)
        positions = positions.to(key_states.device).expand(B, n)
        pre_rotary = self.rotation.apply(key_states, positions, inverse=True)
        keys = torch.cat([self.keys, pre_rotary], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        new_index = torch.arange(self.cumulative_length, self.cumulative_length + n)
        index = torch.cat([self.index, new_index])
        self.cumulative_length += n
        total = keys.shape[-2]
        # consecutive positions ending at the newest query's: distances are cache slots, as in StreamingLLM
        cache_positions = positions[:, -1:] - (total - 1) + torch.arange(total, device=keys.device)
        rotated = self.rotation.apply(keys, cache_positions).to(key_states.dtype)
        retained = self._retained(index)
        self.keys, self.values, self.index = keys[:, :, retained], values[:, :, retained], index[retained]
        return rotated, values

    def _retained(self, index: torch.Tensor) -> torch.Tensor:
        """Entries the next query may attend: kept sinks and the last ``window - 1`` tokens."""
        newest = self.cumulative_length - 1
        recent = index > newest + 1 - self.window
        return (recent | torch.isin(index, self._keep)).nonzero()[:, 0]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        cached = self.keys.shape[-2] if self.is_initialized else 0
        return cached + query_length, self.cumulative_length - cached

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        raise SinkscopeError("a SinkCache cannot be cropped (evicted tokens are gone); use a DynamicCache for "
                             "assisted decoding")


class SinkCache(Cache):
    """KV cache of at most ``budget`` tokens: the first ``keep_first`` (or the stream indices ``keep``) plus
    a recent window, positions re-assigned within the cache. See the module docstring for an example."""

    def __init__(self, model, budget: int, keep_first: int = 4, keep: frozenset[int] | None = None):
        kept = frozenset(range(keep_first)) if keep is None else frozenset(keep)
        if len(kept) >= budget:
            raise SinkscopeError(f"budget {budget} leaves no room for a recent window beside {len(kept)} kept tokens; "
                                 "raise the budget or keep fewer tokens")
        rotation = Rotation(model)
        self.budget, self.kept = budget, kept
        n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[SinkLayer(rotation, budget - len(kept), kept) for _ in range(n_layers)])
