"""The chain's links (method.md sections 2-4) reduced from the sweep's tallies: C1 variance, C2 neuron
evidence, C3 disparity and massive dims, QK locking.

Layer and neuron indices are 0-based, as in the model's module lists. Disparity indices count layer
*inputs*: k is the residual stream entering layer k (k = L: the final norm's input), so a neuron in
layer l shows up at k = l + 1, the first layer whose attention can see it. The spike ratios of
``super_neurons.candidates`` are evidence; which neurons are super neurons is decided by attribution
(:mod:`sinkscope.chain.episodes`).
"""

from __future__ import annotations

import math

import torch

from ..adapters import head_counts, key_weight, mlp_weights
from ..adapters.coverage import blocks_with
from ..capture.reducers import few_threads
from ..capture.selectivity import SelectivityObserver
from ..criteria import Criteria
from ..metrics.neurons import column_profile, selectivity_by_position, top_rows
from ..metrics.qk import NULL_POSITIVE_SHARE, cosine, key_rows, locked, top_principal_direction
from ..metrics.stats import histogram_quantile
from ..metrics.variance import std_across_samples, variance_summary
from ..results import json_float, json_floats
from ..tables import long_table
from .observers import DisparityObserver, NeuronObserver, QueryObserver, ValueOutputObserver

# Display limits, not decision rules (those are all in sinkscope.criteria.Criteria).
MAX_CANDIDATES = 16  # neuron candidates listed as evidence, strongest first
MAX_SELECTIVITY_NEURONS = 4  # neurons whose selectivity by position is tabled
COLUMN_DIMS = 5  # down-column dims listed per candidate, largest energy share first
DOWN_OUTPUT_DIMS = 3  # dims per layer in down_output_at_sink (what each MLP writes at the first token)


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
    # (L, Tv) and (L, H, Tv)
    samples_in, samples_heads = std_across_samples(tally["in_sum"], tally["in_sumsq"], count[:, :Tv], H)
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

def reduce_neurons(neurons: NeuronObserver, model, adapter, top_k: int, c: Criteria,
                   attributed: list[tuple[int, int]] = ()) -> dict:
    """The spike finder's candidates, and the same profile for each neuron (layer, index) the attribution names.

    The two differ in how a neuron is found: the finder asks whether it spikes at the first token alone, the
    attribution asks whether it wrote (or erased) a massive dim. A writer that also fires elsewhere fails the
    finder (on SmolLM2, the onset's writers in layer 2), and the report shows both lists in one table.
    """
    tally = neurons.tally
    sequences = tally["sequences"].clamp(min=1)[:, None]  # (L, 1)
    persistence = tally["extreme_count"] / sequences  # (L, I)
    sink_mean_abs = tally["sink_abs_sum"] / sequences
    other_mean_abs = tally["other_abs_sum"] / tally["other_tokens"].clamp(min=1)[:, None]
    channel_mean = tally["sink_channel_mean_sum"] / sequences[:, 0]  # (L,)
    weight = weight_finder(model, adapter, top_k, c.weight_outlier)
    outliers = {row["layer"]: {o["index"] for o in row["outliers"]} for row in weight}

    def profile(layer: int, n: int) -> dict:
        return {
            "layer": layer, "index": n, "persistence": float(persistence[layer, n]),
            "sink_activation": float(tally["sink_sum"][layer, n] / sequences[layer, 0]),
            "sink_abs_mean": float(sink_mean_abs[layer, n]),
            "other_abs_mean": float(other_mean_abs[layer, n]),
            "other_abs_max": float(tally["max_other_abs"][layer, n]),
            "token_ratio": _ratio(sink_mean_abs[layer, n], other_mean_abs[layer, n]),
            "channel_ratio": _ratio(sink_mean_abs[layer, n], channel_mean[layer]),
            "down_column": column_profile(mlp_weights(model, adapter, layer)["down"][:, n], COLUMN_DIMS),
            "weight_outlier": n in outliers[layer],
        }

    layers, index = (persistence >= c.spike_persistence).nonzero(as_tuple=True)
    order = sink_mean_abs[layers, index].argsort(descending=True)[:MAX_CANDIDATES]
    candidates = [profile(int(layers[i]), int(index[i])) for i in order.tolist()]
    out = tally["down_out_sink_abs_sum"] / sequences  # (L, D): what each MLP writes at the first token
    values, dims = out.topk(min(DOWN_OUTPUT_DIMS, out.shape[-1]), dim=-1)
    spikes = [{"layer": layer, "dims": dims[layer].tolist(), "mean_abs": values[layer].tolist()} for layer in range(len(out))]
    return {"candidates": candidates, "attributed": [profile(layer, n) for layer, n in attributed],
            "weight_finder": weight, "down_output_at_sink": spikes,
            "thresholds": {"token_ratio": c.spike_token_ratio, "channel_ratio": c.spike_channel_ratio,
                           "persistence": c.spike_persistence, "weight_outlier": c.weight_outlier}}


def _ratio(value, reference) -> float | None:
    """value / reference, None where the reference is 0 (a channel silent everywhere else)."""
    reference = float(reference)
    return float(value) / reference if reference > 0 else None


def weight_finder(model, adapter, top_k: int, outlier: float) -> list[dict]:
    """Per dense layer, the top-k gate and up (fc1) rows by L2 norm and the rows that stand out in both."""
    out = []
    for layer in blocks_with(model, adapter, "mlp_down"):  # dense FFNs (experts are read by attribution)
        w = mlp_weights(model, adapter, layer)
        up = top_rows(w["up"], top_k)
        gate = top_rows(w["gate"], top_k) if w["gate"] is not None else None
        standing = [r for r in up if r["ratio_to_median"] >= outlier]
        if gate is not None:
            gate_out = {r["index"] for r in gate if r["ratio_to_median"] >= outlier}
            standing = [r for r in standing if r["index"] in gate_out]
        out.append({"layer": layer, "gate": gate, "up": up, "outliers": standing})
    return out


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
    keys_readable = adapter.k_proj is not None or adapter.qkv_proj is not None  # latent attention has no W_K
    L = share.shape[0]
    table = {"layer": [], "head": [], "massive_dim": [], "alignment": [], "alignment_sink_key": [],
             "positive_share": [], "sink_score": []}
    layers = []
    for layer in range(L):
        dims = disparity["massive_at_sink"].get(layer, [])
        dim = dims[0] if dims else None
        align = [math.nan] * n_heads
        if dim is not None and top.shape[-1] == head_dim and keys_readable:
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
               "note": ("no dimension disparity, so no massive key to lock onto" if start is None else None if
                        keys_readable else "keys come from a shared latent (no W_K row to align with): alignment "
                        "is against the mean sink key seen (alignment_sink_key) only"),
               "table": "chain_qk"}
    return section, table
