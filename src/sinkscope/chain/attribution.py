"""Exact attribution: who wrote the first token's residual stream, dim by dim (method.md section 8).

The residual stream entering layer k at the first token, h_k, changes between inputs k and k + 1 by
what layer k's attention block and FFN block write there. The FFN's write is the sum over neurons
of a_n x W_down[:, n] (plus the down projection's bias), carried through the family's post-FFN
norm where it has one: an RMS-type norm maps x to q G' * x per token (G' = norm(1), q a scalar),
so each neuron's share of the norm's output is q G' * a_n W_down[:, n], and the shares still add
up. A mixture of experts writes sum_e w_e a_{e,n} W_e[:, n] through its router weights w_e.

Post-LN families (BERT, OPT-350m) normalise the sum of the stream and a block's write: there each
block's write is taken before the norm that follows it, and what the norms change is the ``norm``
part, so the parts still add up to the measured change.

Means over sequences are exact, because a write is linear in the activation: the mean write of
neuron n on dim d is W_down[d, n] x mean(a_n q). One sweep therefore needs only (L, I) sums.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import Adapter, blocks, mlp_weights
from ..adapters.coverage import blocks_with, find
from ..capture.attention import BatchInfo
from ..capture.experts import expert_activations
from ..capture.hooks import as_tokens, block_output_tensor
from ..capture.reducers import Tally


def _first_rows(x: torch.Tensor, batch: BatchInfo) -> torch.Tensor:
    """(B, W) each sequence's first real token of a (B, T, W) activation."""
    x = as_tokens(x, batch)
    return x[torch.arange(x.shape[0], device=x.device), batch.first.to(x.device)]


def norm_gain(norm: nn.Module, width: int) -> torch.Tensor:
    """(D,) G' = norm(1): an RMS-type norm's output is q G' * x with one scalar q per token. Call it before
    any hook sits on ``norm``."""
    weight = next(norm.parameters())
    with torch.no_grad():
        return norm(torch.ones(1, width, dtype=weight.dtype, device=weight.device))[0].float()


def norm_scale(x: torch.Tensor, y: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """(B,) q with y = q G' * x for rows x, y (B, D): exact for RMS-type norms (least squares otherwise)."""
    gx = gain * x.float()
    return (y.float() * gx).sum(-1) / (gx * gx).sum(-1).clamp_min(torch.finfo(torch.float32).tiny)


class AttributionObserver:
    """The first token's residual stream at every layer input, and every block's write there.

    Tallies (K = L + 1 layer inputs, L layers, D dims, I neurons per dense FFN, E experts):
      sequences (); residual_sum / residual_sumsq (K, D); attention_sum / mlp_sum (L, D): the blocks'
      writes at the first token (through their sandwich norms); neuron_sum (L, I): sum of a_n x q
      (q = 1 without a post-FFN norm); expert_sum (L, E, I_e): sum of w_e a_{e,n} x q over the
      first token's routed experts; shared_sum (L, I_s): the always-on shared experts' a_n x q.
    """

    def __init__(self, model: nn.Module, adapter: Adapter):
        self.adapter = adapter
        self.layers = blocks(model, adapter)
        L, D = len(self.layers), model.config.hidden_size
        self.dense = blocks_with(model, adapter, "mlp_down")
        self.moe = blocks_with(model, adapter, "experts")
        self.shared = blocks_with(model, adapter, "shared_expert_down")
        self.batch: BatchInfo | None = None
        self._pending: dict[tuple[int, str], tuple] = {}  # first-token activations awaiting the norm's q
        self._gains: dict[int, torch.Tensor] = {}
        self.tally = tally = Tally()
        tally.zeros("sequences")
        tally.zeros("residual_sum", L + 1, D)
        tally.zeros("residual_sumsq", L + 1, D)
        tally.zeros("attention_sum", L, D)
        tally.zeros("mlp_sum", L, D)
        width = mlp_weights(model, adapter, self.dense[0])["down"].shape[1] if self.dense else 0
        tally.zeros("neuron_sum", L, width)
        if self.moe:
            experts = self.layers[self.moe[0]].get_submodule(adapter.experts)
            width = experts.down_proj.shape[1 if experts.is_transposed else 2]
            tally.zeros("expert_sum", L, experts.num_experts, width)
        if self.shared:
            shared_down = self.layers[self.shared[0]].get_submodule(adapter.shared_expert_down)
            tally.zeros("shared_sum", L, shared_down.in_features)

    # ---- hooks ------------------------------------------------------------------------------------

    def hooks(self) -> tuple[list, list]:
        """(forward pre-hooks, forward hooks) as (module, hook) pairs."""
        a, layers = self.adapter, self.layers
        pre = [(block, self._residual_pre(k)) for k, block in enumerate(layers)]
        post = [(layers[-1], self._residual_post(len(layers)))]
        for layer, block in enumerate(layers):
            attn_out = find(block, a.attn_out_norm) if a.attn_out_norm else None
            post.append((attn_out or find(block, a.o_proj), self._write(layer, "attention_sum")))
            mlp_out = find(block, a.mlp_out_norm) if a.mlp_out_norm else None
            ffn = (find(block, a.mlp) if a.mlp else None) or find(block, a.mlp_down)
            post.append((mlp_out or ffn, self._write(layer, "mlp_sum")))
            if mlp_out is not None:
                self._gains[layer] = norm_gain(mlp_out, self.tally["mlp_sum"].shape[1])
                post.append((mlp_out, self._carry_through_norm(layer)))
            if layer in self.dense:
                pre.append((find(block, a.mlp_down), self._activations(layer, "neuron_sum")))
            if layer in self.shared:
                pre.append((find(block, a.shared_expert_down), self._activations(layer, "shared_sum")))
            if layer in self.moe:
                pre.append((find(block, a.experts), self._routed(layer)))
        return pre, post

    def _residual_pre(self, k: int):
        def hook(module, args):
            self._add_residual(k, args[0])
        return hook

    def _residual_post(self, k: int):
        def hook(module, args, output):
            self._add_residual(k, block_output_tensor(output))
        return hook

    def _add_residual(self, k: int, hidden: torch.Tensor) -> None:
        rows = _first_rows(hidden, self.batch).double()
        if k == 0:
            self.tally.add("sequences", (), torch.tensor(float(len(rows))))
        self.tally.add("residual_sum", (k,), rows.sum(0))
        self.tally.add("residual_sumsq", (k,), (rows * rows).sum(0))

    def _write(self, layer: int, name: str):
        def hook(module, args, output):
            self.tally.add(name, (layer,), _first_rows(block_output_tensor(output), self.batch).double().sum(0))
        return hook

    def _activations(self, layer: int, name: str):
        def hook(module, args):
            self._hold(layer, name, _first_rows(args[0], self.batch).double())
        return hook

    def _routed(self, layer: int):
        def hook(module, args):
            x, index, weights = args[0], args[1], args[2]
            batch = self.batch.to(x.device)
            B, T = batch.valid.shape
            k = index.shape[-1]
            rows = torch.arange(B, device=x.device) * T + batch.first  # the first tokens among the (B*T) rows
            ids, w = index[rows].reshape(-1), weights[rows].reshape(-1, 1)  # (B*k,)
            act = expert_activations(module, x[rows].repeat_interleave(k, 0), ids).double() * w.double()
            self._hold(layer, "expert_sum", act, ids.view(B, k))
        return hook

    def _hold(self, layer: int, name: str, act: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Add now, or once the post-FFN norm's q of this batch is known."""
        if self.adapter.mlp_out_norm is None:
            self._add_activations(layer, name, act, ids)
        else:
            self._pending[(layer, name)] = (act, ids)

    def _carry_through_norm(self, layer: int):
        def hook(module, args, output):
            x, y = _first_rows(args[0], self.batch), _first_rows(block_output_tensor(output), self.batch)
            q = norm_scale(x, y, self._gains[layer]).double()  # (B,)
            for (at, name) in [key for key in self._pending if key[0] == layer]:
                act, ids = self._pending.pop((at, name))
                scale = q if ids is None else q.repeat_interleave(ids.shape[1])
                self._add_activations(layer, name, act * scale[:, None].to(act.device), ids)
        return hook

    def _add_activations(self, layer: int, name: str, act: torch.Tensor, ids: torch.Tensor | None) -> None:
        if ids is None:
            self.tally.add(name, (layer,), act.sum(0))
        else:
            self.tally.tensors[name][layer].index_add_(0, ids.reshape(-1).cpu(), act.cpu())

    # ---- reduction --------------------------------------------------------------------------------

    def reduce(self, model: nn.Module) -> Attribution:
        tally = self.tally
        n = float(tally["sequences"])
        mean = tally["residual_sum"] / n
        var = (tally["residual_sumsq"] / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
        return Attribution(model=model, adapter=self.adapter, mean=mean, std=var.sqrt(),
                           attention=tally["attention_sum"] / n, mlp=tally["mlp_sum"] / n,
                           neuron=tally["neuron_sum"] / n,
                           expert=tally["expert_sum"] / n if "expert_sum" in tally else None,
                           shared=tally["shared_sum"] / n if "shared_sum" in tally else None,
                           gains=self._gains, dense=self.dense, moe=self.moe, shared_layers=self.shared)


class Attribution:
    """Mean first-token trajectories (K, D) and per-layer parts (L, D); neuron writes on demand, per dim."""

    def __init__(self, *, model, adapter, mean, std, attention, mlp, neuron, expert, shared, gains, dense, moe,
                 shared_layers):
        self.model, self.adapter = model, adapter
        self.mean, self.std = mean, std  # (K, D)
        self.attention, self.mlp = attention, mlp  # (L, D)
        self.norm = mean[1:] - mean[:-1] - attention - mlp  # (L, D): what post-LN norms change; ~0 in pre-norm
        self.neuron, self.expert, self.shared = neuron, expert, shared
        self.gains, self.dense, self.moe, self.shared_layers = gains, dense, moe, shared_layers

    def _gain(self, layer: int, dim: int) -> float:
        gain = self.gains.get(layer)
        return 1.0 if gain is None else float(gain[dim])

    def neuron_writes(self, layer: int, dim: int) -> list[tuple[dict, float]]:
        """Every FFN neuron's mean write on ``dim`` in ``layer``: [(identity, write)], dense, expert and shared."""
        out, g = [], self._gain(layer, dim)
        if layer in self.dense:
            down = mlp_weights(self.model, self.adapter, layer)["down"][dim].double().cpu()  # (I,) beside the tallies
            out += [({"kind": "neuron", "layer": layer, "index": n, "expert": None}, w)
                    for n, w in enumerate((self.neuron[layer] * down * g).tolist())]
        if layer in self.moe:
            experts = blocks(self.model, self.adapter)[layer].get_submodule(self.adapter.experts)
            for e in (self.expert[layer].abs().sum(-1) > 0).nonzero()[:, 0].tolist():  # experts the first token used
                down = experts.down_proj[e].detach()  # (I_e, D) when transposed, else (D, I_e)
                column = down[:, dim] if experts.is_transposed else down[dim]
                out += [({"kind": "neuron", "layer": layer, "index": n, "expert": e}, w)
                        for n, w in enumerate((self.expert[layer, e] * column.double().cpu() * g).tolist())]
        if layer in self.shared_layers:
            block = blocks(self.model, self.adapter)[layer]
            down = block.get_submodule(self.adapter.shared_expert_down).weight.detach()[dim].double().cpu()
            out += [({"kind": "neuron", "layer": layer, "index": n, "expert": "shared"}, w)
                    for n, w in enumerate((self.shared[layer] * down * g).tolist())]
        return out

    def parts(self, layer: int, dim: int) -> list[tuple[dict, float]]:
        """Layer ``layer``'s write on ``dim``, split into attention, each neuron, the FFN's remainder (its biases)
        and the norms' change: [(identity, mean write)], adding up to mean[layer + 1, dim] - mean[layer, dim]."""
        neurons = self.neuron_writes(layer, dim)
        rest = float(self.mlp[layer, dim]) - sum(w for _, w in neurons)
        part = lambda kind: {"kind": kind, "layer": layer, "index": None, "expert": None}  # noqa: E731
        return ([(part("attention"), float(self.attention[layer, dim]))] + neurons
                + [(part("mlp"), rest), (part("norm"), float(self.norm[layer, dim]))])

