"""All chain sections of probe.json from the sweep's all-reduced tallies, and the chain's verdict."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ProbeConfig
from .episodes import (add_sink, all_episodes, attributed_neurons, onset_episode, super_neurons, tracking,
                       trajectories)
from .links import (MAX_SELECTIVITY_NEURONS, reduce_disparity, reduce_neurons, reduce_qk, reduce_variance,
                    selectivity_table)
from .verdict import chain_consistent, chain_verdict, first_position


@dataclass
class ChainResult:
    payload: dict  # sections merged into probe.json
    tables: dict[str, dict]  # Parquet tables: column name -> array or list


def reduce_chain(loaded, observers: dict, config: ProbeConfig, sink_score: torch.Tensor, sink: dict,
                 sequences: list[list[int]]) -> ChainResult:
    """All chain sections from the all-reduced tallies; ``sink_score`` is (L, H) for the first token and
    ``sink`` the probe's sink verdict (:func:`sinkscope.verdicts.reduce_sink`)."""
    model, adapter, c = loaded.model, loaded.adapter, config.criteria
    tokens = observers.get("keys") or observers["effective_tokens"]  # either observer gives the effective tokens
    variance, variance_tables = reduce_variance(observers["values"], tokens)
    variance["first_position"] = first_position(sequences)
    disparity = reduce_disparity(observers["disparity"], c)
    attribution = observers["attribution"].reduce(model)
    episodes = all_episodes(attribution, disparity["massive_at_sink"], c.writer_share)
    add_sink(episodes, sink["ratio"])
    linked = super_neurons(episodes)
    writers = [(n["layer"], n["index"]) for n in linked if n["expert"] is None]
    neurons = (reduce_neurons(observers["neurons"], model, adapter, config.neuron_top_k, c,
                              attributed_neurons(episodes)) if "neurons" in observers
               else {"candidates": [], "note": "no dense FFN: the experts' neurons are read by attribution"})
    chain = {
        "episodes": episodes,
        "trajectories": trajectories(attribution, disparity["massive_dims"]),
        "super_neurons": linked,
        "massive_dims": disparity["massive_dims"],
        "disparity_layer_input": disparity["disparity_layer_input"],
        "onset_layer": sink["onset_layer"],
        "onset_episode": onset_episode(episodes, sink["onset_layer"]),
        "tracking": tracking(episodes, sink["ratio"]),
        "writer_share": c.writer_share,
        "index": "episode inputs are layer inputs: input k is the residual stream entering layer k, which layer k's "
                 "attention reads; a part of layer l writes input l + 1",
    }
    chain["consistent"] = chain_consistent(chain)
    chain["verdict"] = chain_verdict(chain, sink, variance)
    traced = writers or [(n["layer"], n["index"]) for n in neurons["candidates"][:1]]
    sel_table = selectivity_table(observers.get("selectivity"), model, adapter, traced[:MAX_SELECTIVITY_NEURONS])
    qk, qk_table = reduce_qk(observers["queries"], model, adapter, disparity, sink_score, c)
    chain["evidence"] = {
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
