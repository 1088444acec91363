"""The verdicts: is there an attention sink, where does it set in, and does the chain explain it?

A layer has a sink when the head-mean attention its queries give the first token is, with
confidence over sequences, at least ``criteria.sink_ratio_min`` times what uniform attention would
give it (the sequence's own mask decides that baseline). The onset is the first such layer whose
excess over uniform reaches ``criteria.onset_fraction`` of the peak layer's excess. The paper's
absolute onset (first layer with a head-mean score above 0.8) is reported beside it as
``onset_layer_paper``. The chain verdict (:func:`chain_verdict`) puts the sink, the disparity, the
super neurons and C1 into sentences, each decided by :class:`~sinkscope.criteria.Criteria`.
"""

from __future__ import annotations

import torch

from .capture.sink import SinkObserver
from .criteria import Criteria
from .metrics.sink import onset_layer, ratio_interval, relative_onset
from .results import json_float, json_floats


def reduce_sink(sink: SinkObserver, layer_score: torch.Tensor, c: Criteria) -> dict:
    """The ``sink`` section of probe.json; ``layer_score`` is the (L,) head-mean first-token score."""
    tally = sink.tally
    ratio, low, high = ratio_interval(tally["ratio_sum"], tally["ratio_sumsq"], tally["ratio_count"], c.sink_confidence)
    uniform = tally["uniform_sum"] / tally["ratio_count"].clamp(min=1)  # (L,) mean uniform score per sequence
    excess = layer_score.double() - uniform
    onset_paper = onset_layer(layer_score, c.onset_threshold_paper)
    if c.rules == "paper":
        present = layer_score > c.onset_threshold_paper
        onset = onset_paper
    else:
        present = torch.nan_to_num(low, nan=0.0) >= c.sink_ratio_min
        onset = relative_onset(excess, present, c.onset_fraction)
    peak = int(torch.nan_to_num(ratio, nan=-1.0).argmax()) if len(ratio) else None
    section = {
        "present": bool(present.any()),
        "onset_layer": onset,
        "peak_layer": peak,
        "present_by_layer": present.tolist(),
        "ratio": json_floats(ratio),
        "ratio_ci": [[json_float(lo), json_float(hi)] for lo, hi in zip(low.tolist(), high.tolist())],
        "excess": json_floats(excess),
        "uniform_baseline": json_floats(uniform),
        "sequences": int(tally["ratio_count"].max()) if len(ratio) else 0,
        "confidence": c.sink_confidence,
        "ratio_min": c.sink_ratio_min,
        "onset_fraction": c.onset_fraction,
        "rules": c.rules,
        "onset_layer_paper": onset_paper,
        "onset_threshold_paper": c.onset_threshold_paper,
    }
    section["verdict"] = sink_sentence(section)
    return section


def sink_sentence(s: dict) -> str:
    """One sentence a researcher can quote, with the effect size and its interval."""
    level = f"{100 * s['confidence']:g} %"
    if s["rules"] == "paper":
        onset, threshold = s["onset_layer"], s["onset_threshold_paper"]
        if onset is None:
            return f"No attention sink by the paper's rule: no layer's head-mean score exceeds {threshold:g}."
        return f"Attention sink (the paper's rule): the head-mean score first exceeds {threshold:g} at layer {onset}."
    if not s["present"]:
        peak = s["peak_layer"]
        best = (f" (highest: layer {peak}, {s['ratio'][peak]:.2f}x uniform, {level} CI "
                f"{s['ratio_ci'][peak][0]:.2f}-{s['ratio_ci'][peak][1]:.2f})") if peak is not None else ""
        return (f"No attention sink: no layer gives the first token {s['ratio_min']:g}x the attention uniform "
                f"attention would{best}.")
    onset, peak = s["onset_layer"], s["peak_layer"]
    lo, hi = s["ratio_ci"][peak]
    paper = s["onset_layer_paper"]
    paper_text = (f"layer {paper}" if paper is not None else "none") + f" by the paper's {s['onset_threshold_paper']:g}"
    return (f"Attention sink on the first token: it sets in at layer {onset} and peaks at layer {peak} with "
            f"{s['ratio'][peak]:.1f}x the attention uniform attention would give it ({level} CI {lo:.1f}-{hi:.1f} "
            f"over {s['sequences']} sequences; onset {paper_text}).")




# ---- the chain ----------------------------------------------------------------------------------

def chain_consistent(chain: dict) -> bool:
    """Super neuron layer < disparity layer input <= onset layer: the order in which the chain can happen.

    The disparity counts layer *inputs* and the other two count layers, and input k is what layer k reads:
    a neuron in layer l writes the residual stream entering layer l + 1, so its dim can first stand out at
    input l + 1 (hence the strict <), and layer k's attention is the first that can lock onto a dim seen
    at input k (hence <=).
    """
    if not chain["super_neurons"] or chain["disparity_layer_input"] is None or chain["onset_layer"] is None:
        return False
    first = min(n["layer"] for n in chain["super_neurons"])
    return first < chain["disparity_layer_input"] <= chain["onset_layer"]


def first_position(sequences: list[list[int]]) -> dict:
    """Whether position 0 holds the same token in every sequence (then C1 across samples is undefined there)."""
    firsts = {s[0] for s in sequences if s}
    same = len(firsts) == 1 and len(sequences) > 1
    note = (f"position 0 is token {next(iter(firsts))} in every sequence (a BOS token), so its std across samples "
            "is 0 by construction: not evidence against C1. Measure C1 across samples in the paper's setting: "
            "--random-tokens --bos never" if same else None)
    return {"same_token_every_sample": same, "distinct_first_tokens": len(firsts),
            "across_samples_defined": not same, "note": note}


def _variance_sentence(variance: dict) -> str:
    first = variance.get("first_position") or {}
    if first.get("same_token_every_sample"):
        return ("C1 across samples is not measured here: position 0 is the same (BOS) token in every sequence, so "
                "its std across samples is 0 by construction; run with --random-tokens --bos never.")
    ratios = [(row["across_samples"]["first_rest_ratio"], row["layer"]) for row in variance["layers"]
              if row["across_samples"]["first_rest_ratio"] == row["across_samples"]["first_rest_ratio"]]
    if not ratios:
        return ""
    ratio, layer = max(ratios)
    return f"C1: the first token's std across samples is {ratio:.1f}x the rest's at layer {layer} (o_proj input)."


def chain_verdict(chain: dict, neurons: dict, disparity: dict, sink: dict, variance: dict, c: Criteria) -> str:
    jump, found = chain["disparity_layer_input"], chain["super_neurons"]
    parts = [sink["verdict"]]
    if jump is None:
        parts.append("The first token's DomRatio never reaches "
                     f"{c.disparity_contrast:g}x the other tokens' median: no dimension disparity.")
    else:
        k = jump
        parts.append(f"The first token's DomRatio jumps at the input of layer {k} "
                     f"({disparity['sink_dom_ratio'][k]:.1f} vs a median of "
                     f"{disparity['other_dom_ratio_median'][k]:.1f} for other tokens).")
    if found:
        names = "; ".join(f"neuron {n['index']} of layer {n['layer']} writes dim(s) {', '.join(map(str, n['dims']))}"
                          for n in found)
        parts.append(f"Super neuron(s): {names}.")
    elif neurons["candidates"]:
        parts.append(f"{len(neurons['candidates'])} neuron(s) spike at the first token, but none writes a dim that "
                     "dominates it at the next layer input: no super neuron.")
    else:
        parts.append("No neuron spikes at the first token: no super neuron.")
    if chain["consistent"]:
        parts.append("They line up as the paper predicts (neuron layer < disparity layer input <= onset layer).")
    elif found and jump is not None and chain["onset_layer"] is not None:
        parts.append("They do not line up as the paper predicts (neuron layer < disparity layer input <= onset layer).")
    else:
        parts.append("The chain is not established.")
    sentence = _variance_sentence(variance)
    return " ".join(parts + ([sentence] if sentence else []))
