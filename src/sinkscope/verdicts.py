"""The sink verdict: is there an attention sink, and where does it set in?

A layer has a sink when the head-mean attention its queries give the first token is, with
confidence over sequences, at least ``criteria.sink_ratio_min`` times what uniform attention would
give it (the sequence's own mask decides that baseline). The onset is the first layer of the first
sustained sink (:func:`~sinkscope.metrics.sink.sustained_onset`). The paper's absolute onset (first
layer with a head-mean score above 0.8) is reported beside it as ``onset_layer_paper``. The chain's
verdict lives with the chain (:mod:`sinkscope.chain.verdict`).
"""

from __future__ import annotations

import torch

from .capture.sink import SinkObserver
from .criteria import Criteria
from .metrics.sink import onset_layer, ratio_interval, sustained_onset
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
        onset = sustained_onset(excess, present, c.onset_fraction, c.onset_min_layers)
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
        "onset_min_layers": c.onset_min_layers,
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
    paper = s["onset_layer_paper"]
    paper_text = (f"layer {paper}" if paper is not None else "no layer") + f" by the paper's {s['onset_threshold_paper']:g}"
    at = lambda k: f"{s['ratio'][k]:.1f}x uniform ({level} CI {s['ratio_ci'][k][0]:.1f}-{s['ratio_ci'][k][1]:.1f})"  # noqa: E731
    return (f"Attention sink on the first token from layer {onset} ({at(onset)}), strongest at layer {peak} "
            f"({at(peak)}), over {s['sequences']} sequences; x uniform is the head-mean attention to the first token "
            f"over what it would get if every visible key got the same (onset {paper_text}).")
