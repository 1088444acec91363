"""Attention capture through transformers' attention-function registry.

While an :class:`AttentionCapture` is active, the model's attention implementation is switched to
our registered function ``"sinkscope"``. It computes the layer's output with PyTorch's fused SDPA
kernel *and* keeps that kernel's per-query log-sum-exp, so observers get exact attention
probabilities to any key as exp(q . k * scale - lse) in O(B*H*T) memory. Where no fused kernel
applies (soft-capped logits, additive biases), a query-chunked exact pass computes output and lse
together without materialising more than B*H*chunk*S logits.

No forward is monkey-patched, no layer falls back to eager, and leaving the block restores the
model's own implementation, even on error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..adapters import Adapter, blocks, get_path
from ..config import QUERY_CHUNK
from ..errors import SinkscopeError
from ..metrics.sink import softcap_logits
from .batch import BatchInfo
from .columns import blockwise, column_blocks

ATTENTION_NAME = "sinkscope"
# Arguments an attention call may pass that change nothing here: positions are already in q and k,
# a sliding window is already in the mask (eager attention reads it from there too; the parity tests
# check both against eager), and the rest are output or cache switches. Any other argument that is
# not None is refused, never dropped.
NO_EFFECT_ARGUMENTS = frozenset({
    "position_ids", "sliding_window", "use_cache", "cache_position", "output_attentions", "output_hidden_states",
    "output_router_logits", "return_dict",
})
# Learned sink logits under the names models pass them: gpt-oss's ``s_aux``, sinkscope's own ``sink_logit``.
SINK_LOGIT_ARGUMENTS = ("s_aux", "sink_logit")


@dataclass
class AttentionCall:
    """Everything one layer's attention saw, with helpers that respect its mask exactly.

    query (B, H, T, D); key/value (B, H, S, D) already expanded to query heads; lse (B, H, T)
    float32; output (B, H, T, Dv). ``visible`` is None for a plain causal (or, in encoders, full)
    pattern, else a bool (B, 1|H, T, S) mask; ``bias`` holds additive float mask values, if any.
    """

    layer: int
    module: nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    visible: torch.Tensor | None
    bias: torch.Tensor | None
    causal: bool
    scale: float
    softcap: float | None
    batch: BatchInfo | None
    sink_logit: torch.Tensor | None = None  # (H,) logit of a virtual extra key with a zero value (softmax1, learned sink)
    sigmoid_bias: float | None = None  # sigmoid attention: weights sigmoid(logit + bias), no normalisation
    isolated: torch.Tensor | None = None  # (B,) query index that may attend only to itself (-1: none); set by editors
    # keys outside ``key`` with a logit of their own per query: (logits (B, H, T, K) float32, -inf where unseen;
    # values (B, H, K, Dv)); set by editors (stream's sinks re-positioned as in a StreamingLLM cache)
    extra_keys: tuple[torch.Tensor, torch.Tensor] | None = None
    lse: torch.Tensor | None = None  # for sigmoid attention: log of each query's total attention mass
    output: torch.Tensor | None = None

    def visible_block(self, t0: int, t1: int, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Bool visibility of queries t0:t1 to keys ``cols`` (B, P) or to all keys. (B, 1|H, C, P|S)."""
        block = self._mask_block(t0, t1, cols)
        if self.isolated is None:
            return block
        device = self.query.device
        rows = torch.arange(t0, t1, device=device)  # (C,)
        keys = torch.arange(self.key.shape[2], device=device)[None, :].expand(len(self.isolated), -1) \
            if cols is None else cols  # (B, K)
        is_row = rows[None, :] == self.isolated[:, None]  # (B, C)
        only_self = keys[:, None, :] == rows[None, :, None]  # (B, C, K)
        return torch.where(is_row[:, None, :, None], only_self[:, None], block)

    def _mask_block(self, t0: int, t1: int, cols: torch.Tensor | None) -> torch.Tensor:
        B, _, T, _ = self.query.shape
        S = self.key.shape[2]
        device = self.query.device
        if self.visible is not None:
            block = self.visible[:, :, t0:t1]
            if cols is None:
                return block
            index = cols[:, None, None, :].expand(-1, block.shape[1], block.shape[2], -1)
            return block.gather(3, index)
        q_pos = torch.arange(t0, t1, device=device)[:, None] + (S - T)
        k_pos = torch.arange(S, device=device)[None, :] if cols is None else cols[:, None, :]
        if not self.causal:
            shape = (B, 1, t1 - t0, S if cols is None else cols.shape[1])
            return torch.ones(shape, dtype=torch.bool, device=device)
        if cols is None:
            return (k_pos <= q_pos)[None, None].expand(B, 1, -1, -1)
        return (cols[:, None, :] <= q_pos[None])[:, None]

    def bias_block(self, t0: int, t1: int, cols: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.bias is None:
            return None
        block = self.bias[:, :, t0:t1]
        if cols is None:
            return block
        return block.gather(3, cols[:, None, None, :].expand(-1, block.shape[1], block.shape[2], -1))

    def logits_block(self, t0: int, t1: int) -> torch.Tensor:
        """Masked, capped float32 logits of queries t0:t1 against all keys: (B, H, C, S), -inf where hidden."""
        logits = torch.matmul(self.query[:, :, t0:t1].float(), self.key.float().transpose(-1, -2)) * self.scale
        logits = softcap_logits(logits, self.softcap)
        bias = self.bias_block(t0, t1)
        if bias is not None:
            logits = logits + bias.float()
        return logits.masked_fill(~self.visible_block(t0, t1), -math.inf)

    def probs_block(self, t0: int, t1: int) -> torch.Tensor:
        """Exact float32 attention weights of queries t0:t1 to every key: (B, H, C, S); 0 where hidden."""
        logits = self.logits_block(t0, t1)
        if self.sigmoid_bias is not None:
            return torch.sigmoid(logits + self.sigmoid_bias)
        return torch.nan_to_num(torch.exp(logits - self.lse[:, :, t0:t1, None]), nan=0.0)

    def visible_counts(self) -> torch.Tensor:
        """Number of keys each query may attend: (B, 1|H, T) long."""
        counts = self._mask_counts()
        if self.isolated is None:
            return counts
        rows = torch.arange(counts.shape[-1], device=counts.device)
        return torch.where(rows[None, None] == self.isolated[:, None, None], 1, counts)

    def _mask_counts(self) -> torch.Tensor:
        B, _, T, _ = self.query.shape
        S = self.key.shape[2]
        if self.visible is not None:
            return self.visible.sum(-1)
        if not self.causal:
            return torch.full((B, 1, T), S, device=self.query.device)
        counts = torch.arange(1, T + 1, device=self.query.device) + (S - T)
        return counts[None, None].expand(B, 1, T)


class AttentionObserver(Protocol):
    def observe(self, call: AttentionCall) -> None: ...


MaskEditor = Callable[[AttentionCall], None]  # edits call.visible / .isolated / .extra_keys before attention runs


class _Session:
    def __init__(self, layer_of: dict[int, int], observers, mask_editors, query_chunk: int):
        self.layer_of, self.query_chunk = layer_of, query_chunk
        self.observers, self.mask_editors = list(observers), list(mask_editors)
        self.batch: BatchInfo | None = None


_ACTIVE: list[_Session] = []


def _expand_kv(tensor: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return tensor
    B, H_kv, S, D = tensor.shape
    return tensor[:, :, None].expand(B, H_kv, n_rep, S, D).reshape(B, H_kv * n_rep, S, D)


def _split_mask(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Turn a transformers mask (bool, or additive float) into (visible bool, additive bias or None)."""
    if mask is None or mask.dtype == torch.bool:
        return mask, None
    visible = mask > torch.finfo(mask.dtype).min / 2
    bias = mask.masked_fill(~visible, 0)
    return visible, (bias if bool(bias.any()) else None)


def _fused_attention(call: AttentionCall, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Output (B, H, T, Dv) and float32 lse (B, H, T) from a fused SDPA kernel, or None if none applies.

    ``scale`` replaces the call's own logit scale (see :func:`sinkscope.capture.sink.squared_weight_sum`).
    """
    scale = call.scale if scale is None else scale
    if call.softcap is not None or call.bias is not None or call.sigmoid_bias is not None:
        return None
    q, k, v = call.query, call.key, call.value
    if q.device.type == "cpu" and v.shape[-1] != q.shape[-1]:
        return None  # latent attention's narrower values: the CPU kernel needs equal widths
    is_causal = call.visible is None and call.causal and q.shape[2] > 1 and q.shape[2] == k.shape[2]
    if call.visible is None and call.causal and not is_causal and q.shape[2] > 1:
        return None  # causal with a kv offset: let the chunked path apply the offset exactly
    if q.device.type not in ("cpu", "cuda"):
        return None
    # CPU only: CUDA's efficient kernel wants bias widths aligned, which a block's columns need not be
    sparse = call.visible is not None and q.device.type == "cpu" and q.shape[2] == k.shape[2]
    blocks = column_blocks(call.visible) if sparse else None
    try:
        if blocks is not None:  # a sparse pattern (a window): each block of queries against the keys it sees
            out, lse = blockwise(lambda *a: _kernel(*a, False, scale), q, k, v, call.visible, blocks)
        else:
            out, lse = _kernel(q, k, v, call.visible, is_causal, scale)
    except (RuntimeError, NotImplementedError) as err:  # unsupported dtype/head size on this build
        warnings.warn(f"fused SDPA with log-sum-exp unavailable ({str(err).splitlines()[0]}); "
                      "using the exact chunked path", stacklevel=2)
        return None
    return out, lse.float()


def _kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None, is_causal: bool,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU or CUDA fused kernel with its log-sum-exp: (output, lse)."""
    mask = None if visible is None else torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill_(
        ~visible, -math.inf)
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, attn_mask=mask,
                                                                          scale=scale)
    bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], -1, -1)
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, is_causal,
                                                                             scale=scale)
    return out, lse[..., : q.shape[2]]


def _isolate_rows(call: AttentionCall, output: torch.Tensor, lse: torch.Tensor):
    """Patch the fused result where a query attends only to itself: output = its value, lse = its own logit.

    Exact and O(B*H*D): the rest of the pattern is untouched by the edit.
    """
    rows = call.isolated.clamp(min=0)
    has = (call.isolated >= 0).view(-1, 1, 1)  # (B, 1, 1)
    b = torch.arange(len(rows), device=rows.device)
    q = call.query[b, :, rows].float()  # (B, H, D)
    k = call.key[b, :, rows].float()
    own_logit = softcap_logits((q * k).sum(-1) * call.scale, call.softcap)  # (B, H)
    if call.bias is not None:
        own_logit = own_logit + call.bias[b, :, rows, rows].float()
    output, lse = output.clone(), lse.clone()
    output[b, :, rows] = torch.where(has, call.value[b, :, rows], output[b, :, rows])
    lse[b, :, rows] = torch.where(has[..., 0], own_logit, lse[b, :, rows])
    return output, lse


def _chunked_attention(call: AttentionCall, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention in query chunks, mirroring eager (weights in float32, cast, then @ V)."""
    T = call.query.shape[2]
    outs, lses = [], []
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        logits = call.logits_block(t0, t1)
        if call.sigmoid_bias is not None:
            probs = torch.sigmoid(logits + call.sigmoid_bias)
            lse = torch.log(probs.sum(-1))
        else:
            lse = torch.logsumexp(logits, dim=-1)
            probs = torch.nan_to_num(torch.exp(logits - lse[..., None]), nan=0.0)
        outs.append(torch.matmul(probs.to(call.value.dtype), call.value))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _add_virtual_sink(output: torch.Tensor, lse: torch.Tensor, sink_logit: torch.Tensor):
    """Fold a virtual key with logit s_h and a zero value into softmax attention over the real keys.

    Its share of the softmax shrinks every real weight by exp(lse - logaddexp(lse, s_h)).
    """
    sink = sink_logit.float().view(1, -1, 1)  # (1, H, 1)
    total = torch.logaddexp(lse, sink)
    return output * torch.exp(lse - total).unsqueeze(-1).to(output.dtype), total


def _add_extra_keys(output: torch.Tensor, lse: torch.Tensor, logits: torch.Tensor, values: torch.Tensor):
    """Fold keys with their own per-query logits (B, H, T, K) and values (B, H, K, Dv) into softmax attention.

    The merged softmax over both key sets: lse' = logaddexp(lse, logsumexp(logits)); the real keys' output is
    rescaled by exp(lse - lse') and the extra keys add sum_k exp(logit_k - lse') v_k.
    """
    total = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))  # (B, H, T)
    weights = torch.exp(logits - total[..., None])  # (B, H, T, K), 0 where a key is unseen
    merged = output.float() * torch.exp(lse - total)[..., None] + torch.matmul(weights, values.float())
    return merged.to(output.dtype), total


def _sink_logit(module: nn.Module, dropout: float, kwargs: dict) -> torch.Tensor | None:
    """The learned sink logit (H,) if the call passes one; refuses any argument this capture would drop."""
    if dropout:
        raise SinkscopeError(f"{type(module).__name__} asks for attention dropout {dropout}, which sinkscope's "
                             "capture does not apply; put the model in eval mode (model.eval())")
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in NO_EFFECT_ARGUMENTS
                     and k not in SINK_LOGIT_ARGUMENTS and k != "sigmoid_bias")
    if unknown:
        raise SinkscopeError(f"{type(module).__name__} passes attention argument(s) {', '.join(unknown)} that "
                             "sinkscope's capture does not implement; it will not compute attention without them "
                             "(see docs/adapters.md to add support)")
    given = [kwargs[k] for k in SINK_LOGIT_ARGUMENTS if kwargs.get(k) is not None]
    if len(given) > 1:
        raise SinkscopeError(f"{type(module).__name__} passes both {' and '.join(SINK_LOGIT_ARGUMENTS)}; "
                             "pass one learned sink logit")
    return given[0] if given else None


def sinkscope_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        is_causal: bool | None = None, softcap: float | None = None, **kwargs):
    """The attention function registered as ``"sinkscope"`` in transformers' AttentionInterface."""
    sink_logit = _sink_logit(module, dropout, kwargs)
    session = _ACTIVE[-1] if _ACTIVE else None  # None: a model left switched to us still computes exactly
    layer = session.layer_of.get(id(module), -1) if session else -1
    n_rep = query.shape[1] // key.shape[1]
    visible, bias = _split_mask(attention_mask)
    call = AttentionCall(
        layer=layer, module=module, query=query,
        key=_expand_kv(key, n_rep), value=_expand_kv(value, n_rep),
        visible=visible, bias=bias,
        causal=is_causal if is_causal is not None else getattr(module, "is_causal", True),
        scale=scaling if scaling is not None else query.shape[-1] ** -0.5,
        softcap=softcap, batch=session.batch.to(query.device) if session and session.batch else None,
        sink_logit=sink_logit, sigmoid_bias=kwargs.get("sigmoid_bias"),
    )
    for editor in session.mask_editors if session else ():
        editor(call)
    fused = _fused_attention(call)
    if fused is not None and call.isolated is not None:
        fused = _isolate_rows(call, *fused)
    chunk = session.query_chunk if session else QUERY_CHUNK
    call.output, call.lse = fused if fused is not None else _chunked_attention(call, chunk)
    if call.extra_keys is not None:
        call.output, call.lse = _add_extra_keys(call.output, call.lse, *call.extra_keys)
    if call.sink_logit is not None and call.sigmoid_bias is None:
        call.output, call.lse = _add_virtual_sink(call.output, call.lse, call.sink_logit)
    for observer in session.observers if session else ():
        observer.observe(call)
    return call.output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, sinkscope_attention)
# Same mask as SDPA: None for plain causal patterns (so the fused causal kernel runs), else bool.
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def attention_modules(model: nn.Module, adapter: Adapter) -> list[nn.Module]:
    return [get_path(block, adapter.attention) for block in blocks(model, adapter)]


@contextmanager
def capture_attention(model: nn.Module, adapter: Adapter, observers: Sequence[AttentionObserver] = (),
                      mask_editors: Sequence[MaskEditor] = (), query_chunk: int = QUERY_CHUNK) -> Iterator[_Session]:
    """Route every attention layer of ``model`` through sinkscope while the block runs.

    >>> import torch, transformers, sinkscope
    >>> from sinkscope.capture.attention import capture_attention, BatchInfo
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, vocab_size=50)
    >>> model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    >>> class Count:
    ...     calls = 0
    ...     def observe(self, call): self.calls += 1
    >>> counter = Count()
    >>> with capture_attention(model, sinkscope.adapters.adapter_for(model), [counter]) as session:
    ...     session.batch = BatchInfo.from_attention_mask(torch.ones(1, 8))
    ...     _ = model(torch.arange(8)[None])
    >>> counter.calls, model.config._attn_implementation
    (2, 'sdpa')
    """
    previous = model.config._attn_implementation
    layer_of = {id(m): i for i, m in enumerate(attention_modules(model, adapter))}
    session = _Session(layer_of, observers, mask_editors, query_chunk)
    _ACTIVE.append(session)
    try:
        _set_attention(model, ATTENTION_NAME)
        yield session
    finally:
        _ACTIVE.remove(session)
        _set_attention(model, previous)


def _set_attention(model: nn.Module, name: str) -> None:
    """Switch the attention implementation on the model and every sub-config it holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.set_attn_implementation(name)
        except (ValueError, KeyError, AttributeError):
            pass
    for module in model.modules():  # models whose checks refuse a switch still read config._attn_implementation
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", name) != name:
            config._attn_implementation_internal = name
