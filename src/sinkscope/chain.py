"""The causal chain of method.md sections 2-4, measured and linked with no coordinates given.

variance discrepancy (C1) -> super neurons (C2) -> dimension disparity (C3) -> QK locking -> sink.

:func:`chain_observers` builds the streamed observers ``probe`` adds to its sweep when
``config.chain`` is on; :func:`reduce_chain` turns their (all-reduced) tallies into the ``variance``,
``super_neurons``, ``disparity``, ``qk_locking`` and ``chain`` sections of probe.json plus Parquet
tables. Layer and neuron indices are 0-based, as in the model's module lists. Disparity indices
count layer *inputs*: k is the residual stream entering layer k (k = L: the final norm's input), so
a neuron in layer l shows up at k = l + 1, the first layer whose attention can see it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .adapters import block_part, blocks, head_counts, key_weight, mlp_weights, weight_out_in
from .capture.chain import DisparityObserver, NeuronObserver, QueryObserver, ValueOutputObserver
from .capture.reducers import few_threads
from .capture.selectivity import SelectivityObserver
from .capture.runner import Sweep
from .config import ProbeConfig
from .criteria import Criteria
from .results import json_float, json_floats
from .tables import long_table
from .verdicts import chain_consistent, chain_verdict, first_position
from .errors import SinkscopeError
from .metrics.neurons import column_profile, selectivity_by_position, top_rows
from .metrics.qk import NULL_POSITIVE_SHARE, cosine, key_rows, locked, top_principal_direction
from .metrics.stats import histogram_quantile
from .metrics.variance import std_across_samples, variance_summary

# Display limits, not decision rules (those are all in sinkscope.criteria.Criteria).
MAX_CANDIDATES = 16  # neuron candidates listed as evidence, strongest first
MAX_SELECTIVITY_NEURONS = 4  # neurons whose selectivity by position is tabled
# Down-column dims listed per candidate, largest energy share first; link_neurons looks no further. A column
# whose massive dim ranks below this is spread over many dims, not a super neuron's (> 0.9 on one dim).
COLUMN_DIMS = 5
DOWN_OUTPUT_DIMS = 3  # dims per layer in down_output_at_sink (what each MLP writes at the first token)


def chain_observers(model, adapter, config: ProbeConfig, max_len: int) -> dict:
    """The streamed chain observers, keyed by name; each has a ``.tally``."""
    check_chain_config(config)
    c = config.criteria
    n_layers = len(blocks(model, adapter))
    n_heads, _, head_dim = head_counts(model.config)
    hidden = model.config.hidden_size
    width_in = _in_features(block_part(model, adapter, 0, "o_proj"), adapter)
    channels = mlp_weights(model, adapter, 0)["down"].shape[1]
    observers = {
        "values": ValueOutputObserver(n_layers, n_heads, width_in, hidden, max_len, config.variance_positions),
        "neurons": NeuronObserver(n_layers, channels, hidden, c.spike_token_ratio, c.spike_channel_ratio),
        "disparity": DisparityObserver(n_layers, hidden, max_len, c.massive_abs_paper, c.massive_rel_paper,
                                       c.disparity_contrast),
        "queries": QueryObserver(n_layers, n_heads, head_dim),
    }
    if config.selectivity_positions:  # the MLP input is a normalised residual-stream token: width = hidden
        observers["selectivity"] = SelectivityObserver(n_layers, hidden, channels, max_len, config.selectivity_positions)
    return observers


def check_chain_config(config: ProbeConfig) -> None:
    """Refuse chain settings that cannot mean anything, naming the flag to change."""
    if config.variance_positions < 1:
        raise SinkscopeError("--variance-positions must be at least 1")
    if config.neuron_top_k < 1:
        raise SinkscopeError("--neuron-top-k must be at least 1")
    if config.selectivity_positions < 0:
        raise SinkscopeError("--selectivity-positions must be 0 (no trace) or more")
    check_criteria(config.criteria)


def check_criteria(c: Criteria) -> None:
    """Refuse criteria that cannot mean anything, naming the flag to change."""
    for name in ("sink_ratio_min", "spike_token_ratio", "spike_channel_ratio", "weight_outlier",
                 "disparity_contrast", "massive_abs_paper", "massive_rel_paper", "lock_alignment_z"):
        if not getattr(c, name) >= 0:
            raise SinkscopeError(f"--{name.replace('_', '-')} must be non-negative")
    for name in ("sink_confidence", "onset_fraction", "spike_persistence", "dim_share_min", "massive_persistence",
                 "lock_positive_share"):
        if not 0 <= getattr(c, name) <= 1 or (name == "sink_confidence" and not 0 < c.sink_confidence < 1):
            raise SinkscopeError(f"--{name.replace('_', '-')} must lie in [0, 1] (a share)")


def _in_features(module, adapter) -> int:
    return weight_out_in(module, adapter).shape[1]


def extend_sweep(sweep: Sweep, observers: dict, model, adapter) -> Sweep:
    """Add the chain observers' hooks to a probe sweep (in place) and return it."""
    for name in ("values", "neurons", "selectivity"):
        if name in observers:  # selectivity is optional (--selectivity-positions 0)
            pre, post = observers[name].hooks(model, adapter)
            sweep.forward_pre_hooks += pre
            sweep.forward_hooks += post
            sweep.batch_listeners.append(observers[name])
    sweep.forward_hooks += observers["disparity"].hooks(model, adapter)
    sweep.batch_listeners.append(observers["disparity"])
    sweep.attention_observers.append(observers["queries"])
    return sweep


@dataclass
class ChainResult:
    payload: dict  # sections merged into probe.json
    tables: dict[str, dict[str, list]]  # Parquet tables


def reduce_chain(loaded, observers: dict, config: ProbeConfig, sink_score: torch.Tensor, sink: dict,
                 sequences: list[list[int]]) -> ChainResult:
    """All chain sections from the all-reduced tallies; ``sink_score`` is (L, H) for the first token and
    ``sink`` the probe's sink verdict (:func:`sinkscope.verdicts.reduce_sink`)."""
    model, adapter, c = loaded.model, loaded.adapter, config.criteria
    onset = sink["onset_layer"]
    tokens = observers.get("keys") or observers["effective_tokens"]  # either observer gives the effective tokens
    variance, variance_tables = reduce_variance(observers["values"], tokens)
    variance["first_position"] = first_position(sequences)
    disparity = reduce_disparity(observers["disparity"], c)
    neurons = reduce_neurons(observers["neurons"], model, adapter, config.neuron_top_k, c)
    massive = disparity["massive_dims"]
    linked = link_neurons(neurons["candidates"], disparity, c.dim_share_min)
    traced = linked or neurons["candidates"][:1]
    sel_table = selectivity_table(observers.get("selectivity"), model, adapter,
                                  [(n["layer"], n["index"]) for n in traced[:MAX_SELECTIVITY_NEURONS]])
    qk, qk_table = reduce_qk(observers["queries"], model, adapter, disparity, sink_score, c)
    chain = {
        "super_neurons": [{"layer": n["layer"], "index": n["index"], "dims": n["writes_massive"]} for n in linked],
        "massive_dims": massive,
        "disparity_layer_input": disparity["disparity_layer_input"],
        "onset_layer": onset,
    }
    chain["consistent"] = chain_consistent(chain)
    chain["verdict"] = chain_verdict(chain, neurons, disparity, sink, variance, c)
    chain["evidence"] = {
        "neurons": linked,
        "finders_agree": bool(linked) and all(n["weight_outlier"] for n in linked),
        "disparity": {k: disparity[k] for k in ("sink_dom_ratio", "other_dom_ratio_median", "contrast")},
        "sink_ratio": sink["ratio"],
        "locked_heads": qk.get("locked_heads", []),
    }
    payload = {"variance": variance, "super_neurons": neurons, "disparity": disparity, "qk_locking": qk,
               "chain": chain}
    tables = {**variance_tables, "chain_qk": qk_table}
    if sel_table["neuron"]:
        tables["chain_neuron_selectivity"] = sel_table
    return ChainResult(payload, tables)


def selectivity_table(obs: SelectivityObserver | None, model, adapter, neurons: list[tuple[int, int]]) -> dict:
    """Long table of each traced neuron's mean selectivity by position, from the sweep's own tallies."""
    rows = []
    for i, (layer, n) in enumerate(neurons if obs is not None else []):
        tally, w = obs.tally, mlp_weights(model, adapter, layer)
        count = tally["count"][layer]
        sel = selectivity_by_position(tally["x_sum"][layer], tally["unit_sum"][layer], tally["act_sum"][layer, :, n],
                                      count, None if w["gate"] is None else w["gate"][n], w["up"][n])
        rows += [{"neuron": i, "layer": layer, "index": n, "position": p, **{k: float(v[p]) for k, v in sel.items()}}
                 for p in (count > 0).nonzero()[:, 0].tolist()]
    names = ("neuron", "layer", "index", "position", "cos_gate", "up_dot", "activation")
    return {name: [row[name] for row in rows] for name in names}


# ---- C1 -----------------------------------------------------------------------------------------

def reduce_variance(values: ValueOutputObserver, keys) -> tuple[dict, dict]:
    tally = values.tally
    L, T = tally["count"].shape
    Tv, H = values.tracked, values.n_heads
    count = tally["count"]
    seen = count.where(count > 0, torch.nan)
    samples_in = std_across_samples(tally["in_sum"], tally["in_sumsq"], count[:, :Tv])  # (L, Tv)
    samples_heads = std_across_samples(tally["in_sum"], tally["in_sumsq"], count[:, :Tv], H)  # (L, H, Tv)
    samples_out = std_across_samples(tally["out_sum"], tally["out_sumsq"], count[:, :Tv])
    dims_in, dims_out = tally["in_dim_std_sum"] / seen, tally["out_dim_std_sum"] / seen  # (L, T)
    dims_heads = tally["in_head_dim_std_sum"] / seen[:, None]  # (L, H, T)
    eff = keys.effective_tokens().double() if keys is not None else torch.full((L, H, T), torch.nan)
    mean_eff = eff.nanmean(1)  # (L, T) over heads
    layers = [{"layer": layer, "std_first": json_float(samples_in[layer, 0]),
               "across_samples": variance_summary(samples_in[layer], samples_out[layer]),
               "across_dims": variance_summary(dims_in[layer], dims_out[layer]),
               "effective_tokens_first_last": [json_float(mean_eff[layer, 0]),
                                               json_float(mean_eff[layer, _last(count[layer])])]}
              for layer in range(L)]
    pad = lambda x: torch.cat([x, torch.full((*x.shape[:-1], T - x.shape[-1]), torch.nan, dtype=x.dtype)], -1)  # noqa: E731
    keep = count > 0  # (L, T)
    per_pos = long_table(("layer", "position"), keep, {
        "std_across_samples": pad(samples_in), "std_across_dims": dims_in, "std_across_samples_after": pad(samples_out),
        "std_across_dims_after": dims_out, "effective_tokens": mean_eff})
    per_head = long_table(("layer", "head", "position"), keep[:, None].expand(-1, H, -1), {
        "std_across_samples": pad(samples_heads), "std_across_dims": dims_heads, "effective_tokens": eff})
    section = {"positions_tracked": Tv, "layers": layers,
               "tables": ["chain_variance_by_position", "chain_variance_by_head"]}
    return section, {"chain_variance_by_position": per_pos, "chain_variance_by_head": per_head}


def _last(count_row: torch.Tensor) -> int:
    seen = (count_row > 0).nonzero()
    return int(seen[-1, 0]) if len(seen) else 0



# ---- C2 -----------------------------------------------------------------------------------------

def reduce_neurons(neurons: NeuronObserver, model, adapter, top_k: int, c: Criteria) -> dict:
    tally = neurons.tally
    sequences = tally["sequences"].clamp(min=1)[:, None]  # (L, 1)
    persistence = tally["extreme_count"] / sequences  # (L, I)
    sink_mean_abs = tally["sink_abs_sum"] / sequences
    other_mean_abs = tally["other_abs_sum"] / tally["other_tokens"].clamp(min=1)[:, None]
    channel_mean = tally["sink_channel_mean_sum"] / sequences[:, 0]  # (L,)
    weight = weight_finder(model, adapter, top_k, c.weight_outlier)
    layers, index = (persistence >= c.spike_persistence).nonzero(as_tuple=True)
    order = sink_mean_abs[layers, index].argsort(descending=True)[:MAX_CANDIDATES]
    candidates = []
    for i in order.tolist():
        layer, n = int(layers[i]), int(index[i])
        down = mlp_weights(model, adapter, layer)["down"]
        outliers = {row["index"] for row in weight[layer]["outliers"]}
        candidates.append({
            "layer": layer, "index": n, "persistence": float(persistence[layer, n]),
            "sink_activation": float(tally["sink_sum"][layer, n] / sequences[layer, 0]),
            "sink_abs_mean": float(sink_mean_abs[layer, n]),
            "other_abs_mean": float(other_mean_abs[layer, n]),
            "other_abs_max": float(tally["max_other_abs"][layer, n]),
            "token_ratio": _ratio(sink_mean_abs[layer, n], other_mean_abs[layer, n]),
            "channel_ratio": _ratio(sink_mean_abs[layer, n], channel_mean[layer]),
            "down_column": column_profile(down[:, n], COLUMN_DIMS),
            "weight_outlier": n in outliers,
        })
    out = tally["down_out_sink_abs_sum"] / sequences  # (L, D): what each MLP writes at the first token
    values, dims = out.topk(min(DOWN_OUTPUT_DIMS, out.shape[-1]), dim=-1)
    spikes = [{"layer": layer, "dims": dims[layer].tolist(), "mean_abs": values[layer].tolist()} for layer in range(len(out))]
    return {"candidates": candidates, "weight_finder": weight, "down_output_at_sink": spikes,
            "thresholds": {"token_ratio": c.spike_token_ratio, "channel_ratio": c.spike_channel_ratio,
                           "persistence": c.spike_persistence, "weight_outlier": c.weight_outlier}}


def _ratio(value, reference) -> float | None:
    """value / reference, None where the reference is 0 (a channel silent everywhere else)."""
    reference = float(reference)
    return float(value) / reference if reference > 0 else None


def weight_finder(model, adapter, top_k: int, outlier: float) -> list[dict]:
    """Per layer, the top-k gate and up (fc1) rows by L2 norm and the rows that stand out in both."""
    out = []
    for layer in range(len(blocks(model, adapter))):
        w = mlp_weights(model, adapter, layer)
        up = top_rows(w["up"], top_k)
        gate = top_rows(w["gate"], top_k) if w["gate"] is not None else None
        standing = [r for r in up if r["ratio_to_median"] >= outlier]
        if gate is not None:
            gate_out = {r["index"] for r in gate if r["ratio_to_median"] >= outlier}
            standing = [r for r in standing if r["index"] in gate_out]
        out.append({"layer": layer, "gate": gate, "up": up, "outliers": standing})
    return out


def link_neurons(candidates: list[dict], disparity: dict, share_min: float) -> list[dict]:
    """Candidates whose column writes a dim that dominates the first token right after their layer.

    "Dominates" is the scale-free massive rule of :func:`reduce_disparity` (the dim alone lifts the
    token's DomRatio above the other tokens'), whatever the dim's absolute size.
    """
    by_layer = disparity["massive_at_sink"]  # {k: [dims]}
    linked = []
    for cand in candidates:
        seen = set(by_layer.get(cand["layer"] + 1, []))
        dims = [d["dim"] for d in cand["down_column"]["dims"] if d["share"] >= share_min and d["dim"] in seen]
        if dims:
            linked.append({**cand, "writes_massive": dims})
    return linked


# ---- C3 -----------------------------------------------------------------------------------------

def reduce_disparity(obs: DisparityObserver, c: Criteria) -> dict:
    """Disparity layer and massive dims by the scale-free rules; Sun et al.'s criteria under ``*_paper``."""
    tally = obs.tally
    n_seq = tally["sink_count"].where(tally["sink_count"] > 0, torch.nan)  # NaN: a layer input never observed
    sink_dom = tally["sink_dom_sum"] / n_seq
    other_median = histogram_quantile(tally["other_dom_hist"], obs.edges, 0.5)
    other_median_norm = histogram_quantile(tally["other_dom_norm_hist"], obs.edges, 0.5)
    contrast = sink_dom / other_median.clamp_min(1.0)  # DomRatio >= 1; a median read off the first bin may fall below
    seen = tally["sink_count"] > 0
    jumps = ((contrast >= c.disparity_contrast) & seen).nonzero()
    paper = _massive(tally, "massive", c.massive_persistence)
    chosen = paper if c.rules == "paper" else _massive(tally, "dominant", c.massive_persistence)
    other_count = tally["other_count"].clamp(min=1)
    return {
        "index": "layer input: k is the residual stream entering layer k; k = n_layers is the final norm's input",
        "sink_dom_ratio": json_floats(sink_dom),
        "sink_dom_ratio_norm": json_floats(tally["sink_dom_norm_sum"] / n_seq),
        "other_dom_ratio_median": json_floats(other_median),
        "other_dom_ratio_norm_median": json_floats(other_median_norm),
        "other_dom_ratio_mean": json_floats(tally["other_dom_sum"] / other_count),
        "other_dom_ratio_max": json_floats(tally["max_other_dom"].where(tally["other_count"] > 0, torch.nan)),
        "other_dom_ratio_norm_max": json_floats(tally["max_other_dom_norm"].where(tally["other_count"] > 0, torch.nan)),
        "contrast": json_floats(contrast),
        "contrast_threshold": c.disparity_contrast,
        "disparity_layer_input": int(jumps[0, 0]) if len(jumps) else None,
        "massive": chosen["entries"],
        "massive_criteria": ({"rule": "paper: Sun et al. 2024's absolute criteria (massive_criteria_paper)"}
                             if c.rules == "paper" else
                             {"rule": "|h_d| / mean_j |h_j| >= contrast x the median DomRatio of the sequence's other "
                              "tokens", "contrast": c.disparity_contrast, "persistence": c.massive_persistence}),
        "massive_at_sink": chosen["at_sink"],
        "massive_dims": chosen["dims"],
        "massive_tokens_by_position":
            tally["massive_by_position" if c.rules == "paper" else "dominant_by_position"].tolist(),
        "massive_paper": paper["entries"],
        "massive_criteria_paper": {"abs": c.massive_abs_paper, "rel": c.massive_rel_paper,
                                   "persistence": c.massive_persistence},
        "massive_at_sink_paper": paper["at_sink"],
        "massive_dims_paper": paper["dims"],
        "massive_tokens_by_position_paper": tally["massive_by_position"].tolist(),
        "effective_rank": json_floats(tally["erank_sum"] / n_seq),
        "sink_normed_mean": (tally["sink_normed_sum"] / n_seq[:, None]),  # (K, D) tensor, dropped before JSON
    }


def _massive(tally, prefix: str, persistence: float) -> dict:
    """Massive dims from the ``{prefix}_sink`` / ``{prefix}_other`` tallies: at the first token in at least
    ``persistence`` of the sequences, strongest first; ``dims`` ordered by the layer input they appear at."""
    share = tally[f"{prefix}_sink"] / tally["sink_count"].clamp(min=1)[:, None]  # (K, D)
    at_sink, entries, first_seen = {}, [], {}
    for k in range(share.shape[0]):
        dims = (share[k] >= persistence).nonzero()[:, 0].tolist()
        dims.sort(key=lambda d: -float(tally["max_sink_abs"][k, d]))
        if dims:
            at_sink[k] = dims
        for d in dims:
            first_seen.setdefault(d, (k, -float(tally["max_sink_abs"][k, d])))
            entries.append({"layer": k, "token": "first", "dim": d, "share": float(share[k, d]),
                            "max_abs": float(tally["max_sink_abs"][k, d])})
        for d in (tally[f"{prefix}_other"][k] > 0).nonzero()[:, 0].tolist():
            entries.append({"layer": k, "token": "other", "dim": d, "count": int(tally[f"{prefix}_other"][k, d])})
    return {"entries": entries, "at_sink": at_sink, "dims": sorted(first_seen, key=lambda d: first_seen[d])}



# ---- QK locking ---------------------------------------------------------------------------------

def reduce_qk(obs: QueryObserver, model, adapter, disparity: dict, sink_score: torch.Tensor, c: Criteria
              ) -> tuple[dict, dict]:
    tally = obs.tally
    n_heads, n_kv, head_dim = head_counts(model.config)
    count = tally["q_count"].clamp(min=1)  # (L,)
    mean = tally["q_sum"] / count[:, None, None]
    with few_threads():
        top = top_principal_direction(tally["q_outer_sum"] / count[:, None, None, None], mean)  # (L, H, Dh)
    sink_key = tally["sink_key_sum"] / tally["sequences"].clamp(min=1)[:, None, None]  # mean key at the first token
    share = tally["positive_count"] / count[:, None]  # (L, H)
    observed = cosine(top, sink_key)  # (L, H) against the mean sink key actually seen
    normed = disparity.pop("sink_normed_mean")
    start = disparity["disparity_layer_input"]
    L = share.shape[0]
    table = {"layer": [], "head": [], "massive_dim": [], "alignment": [], "alignment_sink_key": [],
             "positive_share": [], "sink_score": []}
    layers = []
    for layer in range(L):
        dims = disparity["massive_at_sink"].get(layer, [])
        dim = dims[0] if dims else None
        align = [math.nan] * n_heads
        if dim is not None and top.shape[-1] == head_dim:
            column = key_rows(key_weight(model, adapter, layer, n_heads, n_kv, head_dim), n_kv, head_dim, n_heads)[..., dim]
            column = column * torch.sign(normed[layer, dim]).to(column.dtype)
            align = cosine(top[layer], column.to(top.device)).tolist()
        for head in range(n_heads):
            for name, value in (("layer", layer), ("head", head), ("massive_dim", dim),
                                ("alignment", json_float(align[head])),
                                ("alignment_sink_key", json_float(observed[layer, head])),
                                ("positive_share", float(share[layer, head])), ("sink_score", float(sink_score[layer, head]))):
                table[name].append(value)
        if start is not None and layer >= start:
            layers.append({"layer": layer, "massive_dim": dim, "alignment": [json_float(a) for a in align],
                           "alignment_sink_key": json_floats(observed[layer]), "positive_share": share[layer].tolist(),
                           "sink_score": sink_score[layer].tolist()})
    min_align = c.lock_alignment_z / math.sqrt(head_dim)  # a random direction's cosine has std ~1/sqrt(Dh)
    locked_heads = [{"layer": row["layer"], "head": h} for row in layers for h in range(n_heads)
                    if locked(row["positive_share"][h], row["alignment"][h], head_dim, c.lock_positive_share,
                              c.lock_alignment_z)]
    section = {"from_layer": start, "layers": layers, "locked_heads": locked_heads,
               "lock_criteria": {"positive_share": c.lock_positive_share, "alignment": min_align,
                                 "null_positive_share": NULL_POSITIVE_SHARE,
                                 "null_alignment_std": 1 / math.sqrt(head_dim)},
               "note": None if start is not None else "no dimension disparity, so no massive key to lock onto",
               "table": "chain_qk"}
    return section, table
