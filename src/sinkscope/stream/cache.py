"""A transformers ``Cache`` that keeps a few sink tokens plus a recent window, StreamingLLM style.

Positions are re-assigned within the cache, as StreamingLLM does: at every step the cached keys sit at
consecutive positions ending at the current query's, so the model never sees a distance larger than
the budget. The recent window is contiguous in the token stream, so its keys already sit at those
positions: they stay as the attention module hands them (rotated at their ``position_ids``). Only a
kept sink that has left the window needs moving: when it leaves, the cache undoes its rotation once,
exactly, with the model's own rotary embedding, and at each step rotates it to its slot. So a step
re-rotates at most the kept sinks (a few keys), not the whole cache. Memory is O(budget) per layer.
Use it in ``model.generate``::

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
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (positions, cos, sin)

    def cos_sin(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, n, D) float32 for positions (B, n); every layer of a step asks for the same ones."""
        last = self._last
        if last is not None and last[0].shape == positions.shape and last[0].device == positions.device \
                and torch.equal(last[0], positions):
            return last[1], last[2]
        cos, sin = self.rotary(like.float(), positions)
        cos, sin = (cos.float() / self.scaling).unsqueeze(1), (sin.float() / self.scaling).unsqueeze(1)
        self._last = (positions.clone(), cos, sin)
        return cos, sin

    def apply(self, keys: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """R(p) k (or R(-p) k) in float32 for keys (B, H, n, D) at positions (B, n)."""
        return self.rotate(keys.float(), *self.cos_sin(keys, positions), inverse=inverse)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """R(p) x (or R(-p) x) for float32 x (B, H, n, D), with :meth:`cos_sin`'s tables for p."""
        return x * cos + _rotate_half(x) * (-sin if inverse else sin)


class SinkLayer(DynamicLayer):
    """One layer's cache: the last ``window - 1`` tokens as handed over, plus the kept sinks that left them.

    ``self.keys`` / ``self.values`` (B, H_kv, w, D): the recent tokens, contiguous in the stream and rotated at
    their own ``self.positions`` (B, w); ``self.sink_keys`` (B, H_kv, s, D) float32 *before* rotary (so that
    re-rotating a half-precision key adds no rounding beyond the model's own) and ``self.sink_values``: the kept
    tokens older than the window, in stream order, with their stream indices ``self.sink_index``.
    """

    def __init__(self, rotation: Rotation, window: int, keep: frozenset[int]):
        super().__init__()
        self.rotation, self.window, self.keep = rotation, window, keep
        self.cumulative_length = 0
        self.sink_index: list[int] = []

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        B, H, _, D = key_states.shape
        self.positions = torch.zeros(B, 0, dtype=torch.long, device=self.device)
        self.sink_keys = key_states.new_zeros(B, H, 0, D, dtype=torch.float32)
        self.sink_values = value_states.new_zeros(B, H, 0, value_states.shape[-1])

    @property
    def index(self) -> torch.Tensor:
        """(s + w,) stream index of every cached entry, in the order ``update`` returns them."""
        recent = range(self.cumulative_length - self.keys.shape[-2], self.cumulative_length)
        return torch.tensor([*self.sink_index, *recent], dtype=torch.long)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, _, n, _ = key_states.shape
        positions = (kwargs.get("kwargs") or {}).get("position_ids")
        if positions is None:  # the model numbered the new tokens from the cache's length
            positions = torch.arange(self.cumulative_length, self.cumulative_length + n, device=key_states.device)
        positions = positions.to(key_states.device).expand(B, n)
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.cumulative_length += n
        returned = keys, values
        s = len(self.sink_index)
        if s:  # consecutive positions ending at the newest query's: the sinks take the first s slots
            slots = positions[:, -1:] - (s + keys.shape[-2] - 1) + torch.arange(s, device=keys.device)
            sinks = self.rotation.apply(self.sink_keys, slots).to(keys.dtype)
            returned = torch.cat([sinks, keys], dim=-2), torch.cat([self.sink_values, values], dim=-2)
        self._retain(keys, values)
        return returned

    def _retain(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the last ``window - 1`` tokens (room for the next); a kept token leaving them becomes a sink."""
        leaving = max(0, keys.shape[-2] - (self.window - 1))
        first = self.cumulative_length - keys.shape[-2]
        moved = [i for i in range(first, first + leaving) if i in self.keep]
        if moved:
            rows = torch.tensor([i - first for i in moved], device=keys.device)
            pre_rotary = self.rotation.apply(keys[:, :, rows], self.positions[:, rows], inverse=True)
            self.sink_keys = torch.cat([self.sink_keys, pre_rotary], dim=-2)
            self.sink_values = torch.cat([self.sink_values, values[:, :, rows]], dim=-2)
            self.sink_index += moved
        self.keys, self.values = keys[:, :, leaving:], values[:, :, leaving:]
        self.positions = self.positions[:, leaving:]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        cached = self.keys.shape[-2] + len(self.sink_index) if self.is_initialized else 0
        return cached + query_length, self.cumulative_length - cached

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.sink_index = []
        super().reset()

    def _per_row(self, edit) -> None:
        """Apply a batch-dimension edit (beam search, num_return_sequences) to every per-row state."""
        if self.is_initialized:
            self.keys, self.values, self.positions = edit(self.keys), edit(self.values), edit(self.positions)
            self.sink_keys, self.sink_values = edit(self.sink_keys), edit(self.sink_values)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._per_row(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._per_row(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._per_row(lambda t: t[indices])

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
        rotation = Rotation(model)  # one for all layers: they rotate the same slots at each step
        self.budget, self.kept = budget, kept
        n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[SinkLayer(rotation, budget - len(kept), kept) for _ in range(n_layers)])
