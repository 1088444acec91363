"""A transformers ``Cache`` that keeps a few sink tokens plus a recent window, StreamingLLM style.

Positions are re-assigned within the cache, as StreamingLLM does: at every step the cached keys sit at
consecutive positions ending at the current query's, so the model never sees a distance larger than
the budget. The recent window is contiguous in the token stream, so its keys already sit at those
positions: they stay as the attention module hands them (rotated at their ``position_ids``). Only a
kept sink that has left the window needs moving: when it leaves, the cache undoes its rotation once,
exactly, with the model's own rotary embedding, and at each step rotates it to its slot. So a step
re-rotates at most the kept sinks (a few keys), not the whole cache, and does so once for all layers.
The window is a ring of fixed buffers: a decoding step writes one key and one value per layer where
the evicted token's were, since a single query attends every cached key and their order does not
matter to it. Memory is ``budget`` keys and values per layer.
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
from transformers.cache_utils import Cache, CacheLayerMixin

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
        """cos, sin (B, 1, n, D) float32 for positions (B, n)."""
        cos, sin = self.rotary(like.float(), positions)
        return (cos.float() / self.scaling).unsqueeze(1), (sin.float() / self.scaling).unsqueeze(1)

    def apply(self, keys: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """R(p) k (or R(-p) k) in float32 for keys (..., B, H, n, D) at positions (B, n)."""
        return self.rotate(keys.float(), *self.cos_sin(keys, positions), inverse=inverse)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """R(p) x (or R(-p) x) for float32 x (B, H, n, D), with :meth:`cos_sin`'s tables for p."""
        return x * cos + _rotate_half(x) * (-sin if inverse else sin)


class SinkLayer(CacheLayerMixin):
    """One layer's face of a :class:`SinkCache`: transformers asks layers for lengths and mask sizes, and the
    cache keeps every layer's state in shared buffers so that a decoding step's sink work is done once."""

    supports_early_init = False  # buffers are shaped by the first update, shared by all layers

    def __init__(self, cache: SinkCache, layer: int):
        super().__init__()
        self.cache, self.layer = cache, layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.cache._allocate(key_states, value_states)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self.cache.update(key_states, value_states, self.layer, *args, **kwargs)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.get_mask_sizes(query_length, self.layer)

    def get_seq_length(self) -> int:
        return self.cache.length

    def get_max_length(self) -> int:
        return -1


class SinkCache(Cache):
    """KV cache of at most ``budget`` tokens: the first ``keep_first`` (or the stream indices ``keep``) plus
    a recent window, positions re-assigned within the cache. See the module docstring for an example.

    State, shared by the layers so that a decoding step touches the kept sinks once for all of them:
    ``keys`` / ``values`` (L, B, H_kv, budget, D): slots ``[0, W)`` a ring holding token t at slot t % W, rotated at
    its own position; slots ``[W, W + s)`` the kept tokens that left the window, in stream order, rotated to their
    slots for the current step. ``sink_keys`` (L, B, H_kv, K, D) float32: those sinks *before* rotary, so that
    re-rotating a half-precision key adds no rounding beyond the model's own. ``positions`` (B, W): the ring's
    position ids.
    """

    def __init__(self, model, budget: int, keep_first: int = 4, keep: frozenset[int] | None = None):
        kept = frozenset(range(keep_first)) if keep is None else frozenset(keep)
        if len(kept) >= budget:
            raise SinkscopeError(f"budget {budget} leaves no room for a recent window beside {len(kept)} kept tokens; "
                                 "raise the budget or keep fewer tokens")
        self.rotation = Rotation(model)
        self.budget, self.kept, self.window = budget, kept, budget - len(kept)
        n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[SinkLayer(self, layer) for layer in range(n_layers)])
        self.reset()

    def reset(self) -> None:
        self.length = 0  # tokens seen
        self.sink_index: list[int] = []  # stream index of each sink, in slot order
        self.keys = self.values = self.sink_keys = self.positions = None
        for layer in self.layers:
            layer.keys = layer.values = None
            layer.is_initialized = False

    def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if self.keys is not None:
            return
        B, H, _, D = key_states.shape
        L, new = len(self.layers), key_states.new_zeros
        self.keys = new(L, B, H, self.budget, D)
        self.values = value_states.new_zeros(L, B, H, self.budget, value_states.shape[-1])
        self.sink_keys = new(L, B, H, len(self.kept), D, dtype=torch.float32)
        self.positions = torch.zeros(B, self.window, dtype=torch.long, device=key_states.device)
        for layer in self.layers:
            layer.is_initialized = True

    def _kept_leaving(self) -> int | None:
        """The kept token the next step evicts from the window (it becomes a sink there), if any."""
        leaving = self.length - self.window
        return leaving if leaving >= 0 and leaving in self.kept else None

    @property
    def held(self) -> list[int]:
        """Stream indices of the tokens the next one will attend besides itself, in stream order."""
        leaving = self._kept_leaving()
        sinks = self.sink_index + ([] if leaving is None else [leaving])
        return sinks + list(range(max(0, self.length - self.window + 1), self.length))

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        held = len(self.sink_index) + (self._kept_leaving() is not None) + min(self.length, self.window - 1)
        return held + query_length, self.length - held

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        n = key_states.shape[-2]
        if layer_idx == 0:
            self._begin_step(key_states, value_states, (kwargs.get("kwargs") or {}).get("position_ids"))
        if n == 1:
            slot = self._step["start"] % self.window
            self.keys[layer_idx, :, :, slot] = key_states[:, :, 0]
            self.values[layer_idx, :, :, slot] = value_states[:, :, 0]
            end = min(self._step["start"] + 1, self.window) + len(self.sink_index)
            keys, values = self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]
        else:
            keys, values = self._update_chunk(key_states, value_states, layer_idx)
        if layer_idx == len(self.layers) - 1:
            self._end_step()
        layer = self.layers[layer_idx]
        layer.keys, layer.values = keys, values
        return keys, values

    def _begin_step(self, key_states: torch.Tensor, value_states: torch.Tensor, positions) -> None:
        """Once per forward, for all layers: the token leaving the window becomes a sink if kept, and every
        sink is rotated to its slot: consecutive positions ending just before the oldest window key."""
        self._allocate(key_states, value_states)
        B, _, n, _ = key_states.shape
        p, W = self.length, self.window
        if positions is None:  # the model numbered the new tokens from the cache's length
            positions = torch.arange(p, p + n, device=key_states.device)
        positions = positions.to(key_states.device).expand(B, n)
        leaving = self._kept_leaving()
        if leaving is not None:
            slot, s = leaving % W, len(self.sink_index)
            self.sink_keys[:, :, :, s:s + 1] = self.rotation.apply(
                self.keys[:, :, :, slot:slot + 1], self.positions[:, slot:slot + 1], inverse=True)
            self.values[:, :, :, W + s] = self.values[:, :, :, slot]
            self.sink_index.append(leaving)
        s, old = len(self.sink_index), min(p, W - 1)
        if s:
            slots = positions[:, -1:] - (s + old + n - 1) + torch.arange(s, device=positions.device)
            self.keys[:, :, :, W:W + s] = self.rotation.apply(self.sink_keys[:, :, :, :s], slots).to(self.keys.dtype)
        self._step = {"start": p, "n": n, "positions": positions}
        if n == 1:
            self.positions[:, p % W] = positions[:, 0]
        else:  # the window before the chunk in stream order, and which tokens of window + chunk leave after it
            tokens = torch.arange(p - old, p + n)
            leaving = [i for i, t in enumerate(tokens.tolist()) if t < p + n - W and t in self.kept]
            self._step.update(old_slots=tokens[:old] % W, leaving=leaving, tokens=tokens,
                              seq_positions=torch.cat([self.positions[:, tokens[:old] % W], positions], 1))
        self.length = p + n

    def _update_chunk(self, key_states: torch.Tensor, value_states: torch.Tensor, layer: int):
        """Several tokens at once (a prefill): the keys in attention order, sinks first, so the causal mask holds;
        then the chunk's last W tokens enter the ring and kept tokens older than those become sinks."""
        step, W, s = self._step, self.window, len(self.sink_index)
        old = step["old_slots"].to(key_states.device)
        keys = torch.cat([self.keys[layer, :, :, old], key_states], dim=-2)  # (B, H, old + n, D), stream order
        values = torch.cat([self.values[layer, :, :, old], value_states], dim=-2)
        if step["leaving"]:
            rows = torch.tensor(step["leaving"], device=keys.device)
            self.sink_keys[layer, :, :, s:s + len(rows)] = self.rotation.apply(
                keys[:, :, rows], step["seq_positions"][:, rows], inverse=True)
            self.values[layer, :, :, W + s:W + s + len(rows)] = values[:, :, rows]
        entering = step["tokens"][-min(W, len(step["tokens"])):]
        rows = torch.arange(len(step["tokens"]) - len(entering), len(step["tokens"]), device=keys.device)
        self.keys[layer, :, :, entering % W] = keys[:, :, rows]
        self.values[layer, :, :, entering % W] = values[:, :, rows]
        sinks = slice(W, W + s)
        return (torch.cat([self.keys[layer, :, :, sinks], keys], dim=-2),
                torch.cat([self.values[layer, :, :, sinks], values], dim=-2))

    def _end_step(self) -> None:
        step = self._step
        if step["n"] > 1:
            tokens = step["tokens"]
            self.sink_index += [int(tokens[i]) for i in step["leaving"]]
            entering = tokens[-min(self.window, len(tokens)):]
            self.positions[:, entering % self.window] = step["seq_positions"][:, -len(entering):]

    def _per_row(self, edit) -> None:
        """Apply a batch-dimension edit (beam search, num_return_sequences) to every per-row state."""
        if self.keys is not None:
            self.keys, self.values, self.sink_keys = (edit(t.transpose(0, 1)).transpose(0, 1)
                                                      for t in (self.keys, self.values, self.sink_keys))
            self.positions = edit(self.positions)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._per_row(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._per_row(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._per_row(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise SinkscopeError("a SinkCache cannot be cropped (evicted tokens are gone); use a DynamicCache for "
                             "assisted decoding")
