"""Super neurons inside experts: the chain's activation finder for mixture-of-experts FFNs.

probe.json's ``expert_neurons`` lists (layer, expert, neuron) whose activation at the first token
spikes against every routed activation of the other tokens, by the dense finder's rule and
thresholds, with what the router gives that expert at the first token and at the other tokens.
Shared experts (every token, no router) are listed with ``expert: "shared"``.
"""

from __future__ import annotations

from ..adapters import blocks
from ..adapters.coverage import blocks_with
from ..capture.experts import ExpertNeuronObserver, expert_down_column
from .links import COLUMN_DIMS, MAX_CANDIDATES
from ..metrics.neurons import column_profile


def expert_observer(model, adapter, criteria) -> ExpertNeuronObserver | None:
    """The streamed expert finder for a model with mixture-of-experts blocks, else None."""
    if not blocks_with(model, adapter, "experts"):
        return None
    return ExpertNeuronObserver.for_model(model, adapter, criteria.spike_token_ratio, criteria.spike_channel_ratio)


def reduce_experts(observer: ExpertNeuronObserver, model, adapter, criteria) -> dict:
    """``criteria``: the probe's :class:`~sinkscope.criteria.Criteria` (the dense finder's spike rule)."""
    tally = observer.tally
    layers = blocks(model, adapter)
    sequences = tally["sequences"].clamp(min=1)  # (L,)
    persistence = tally["extreme_count"] / sequences[:, None, None]  # (L, E, I)
    sink_mean = tally["sink_abs_sum"] / tally["sink_routed"].clamp(min=1)[..., None]
    other_mean = tally["other_abs_sum"] / tally["other_routed"].clamp(min=1)[..., None]
    weight_sink = tally["sink_weight_sum"] / sequences[:, None]  # (L, E)
    weight_other = tally["other_weight_sum"] / tally["other_tokens"].clamp(min=1)[:, None]
    candidates = []
    for layer, expert, neuron in (persistence >= criteria.spike_persistence).nonzero().tolist():
        experts = layers[layer].get_submodule(adapter.experts)
        candidates.append({
            "layer": layer, "expert": expert, "neuron": neuron,
            "persistence": float(persistence[layer, expert, neuron]),
            "sink_abs_mean": float(sink_mean[layer, expert, neuron]),
            "other_abs_mean": float(other_mean[layer, expert, neuron]),
            "sink_routed_share": float(tally["sink_routed"][layer, expert] / sequences[layer]),
            "router_weight_sink": float(weight_sink[layer, expert]),
            "router_weight_other": float(weight_other[layer, expert]),
            "down_column": column_profile(expert_down_column(experts, expert, neuron), COLUMN_DIMS),
        })
    candidates += _shared_candidates(observer, model, adapter, criteria.spike_persistence)
    candidates.sort(key=lambda c: -c["sink_abs_mean"])
    router = [{"layer": layer, "weight_sink": weight_sink[layer].tolist(), "weight_other": weight_other[layer].tolist()}
              for layer in blocks_with(model, adapter, "experts")]
    return {"candidates": candidates[:MAX_CANDIDATES], "router": router,
            "thresholds": {"token_ratio": criteria.spike_token_ratio, "channel_ratio": criteria.spike_channel_ratio,
                           "persistence": criteria.spike_persistence}}


def _shared_candidates(observer: ExpertNeuronObserver, model, adapter, min_persistence: float) -> list[dict]:
    tally = observer.tally
    sequences = tally["shared_sequences"].clamp(min=1)[:, None]
    persistence = tally["shared_extreme_count"] / sequences  # (L, I_s)
    sink_mean = tally["shared_sink_abs_sum"] / sequences
    other_mean = tally["shared_other_abs_sum"] / tally["shared_other_tokens"].clamp(min=1)[:, None]
    layers = blocks(model, adapter)
    out = []
    for layer, neuron in (persistence >= min_persistence).nonzero().tolist():
        down = layers[layer].get_submodule(adapter.shared_expert_down).weight.detach()  # (D, I_s)
        out.append({"layer": layer, "expert": "shared", "neuron": neuron,
                    "persistence": float(persistence[layer, neuron]), "sink_abs_mean": float(sink_mean[layer, neuron]),
                    "other_abs_mean": float(other_mean[layer, neuron]), "sink_routed_share": 1.0,
                    "router_weight_sink": None, "router_weight_other": None,
                    "down_column": column_profile(down[:, neuron], COLUMN_DIMS)})
    return out
