"""What ``intervene ablate`` says about an episode: the sink and DomRatio over the layers that read its inputs,
before and after ablating its writers, what wrote the rest of its rise, and the verdict sentence."""

from __future__ import annotations

import torch

from .chain.verdict import part_name

REST_SHOWN = 0.005  # parts writing less than this share of the rise are left out of rest_of_rise (rounding)
KIND_WORDS = {"neuron": "other neurons", "attention": "attention", "mlp": "FFN biases", "norm": "norms"}


def episode_effect(episode: dict, before: dict, after: dict, neurons: tuple) -> dict:
    """The sink over the layers that read the episode's inputs, and the first token's DomRatio at those inputs
    (block outputs start - 1 .. end - 1), before and after; and what wrote the rest of the rise."""
    score_b, score_a = (sweep["sink"].sink_score()[:, :, 0].float().mean(1) for sweep in (before, after))
    layers = list(range(episode["start"], min(episode["end"] + 1, len(score_b))))
    outputs = [k - 1 for k in range(episode["start"], episode["end"] + 1) if 0 < k <= len(score_b)]
    dom_b, dom_a = (sweep["hidden"].sink_dom_ratio() for sweep in (before, after))
    ablated = {tuple(n) for n in neurons}
    named = [w for w in episode["rise"]["writers"] if w["kind"] == "neuron" and
             ((w["layer"], w["index"]) in ablated or (w["layer"], w["expert"], w["index"]) in ablated)]
    rise = episode["rise"]
    rest = dict(rise.get("by_kind", {}))
    rest["neuron"] = rest.get("neuron", 0.0) - sum(w["write"] for w in named)  # the neurons left standing
    return {"index": episode["index"], "dim": episode["dim"], "inputs": [episode["start"], episode["end"]],
            "layers": layers, "sink_score_before": float(score_b[layers].mean()),
            "sink_score_after": float(score_a[layers].mean()),
            "dom_ratio_before": float(dom_b[outputs].mean()) if outputs else None,
            "dom_ratio_after": float(dom_a[outputs].mean()) if outputs else None,
            "ablated_share": sum(w["share"] for w in named),
            "rest_of_rise": {kind: {"write": write, "share": write / rise["change"]} for kind, write in rest.items()
                             if abs(write / rise["change"]) >= REST_SHOWN}}


def ablate_sentence(body: dict, neurons: tuple, dims: tuple, before: torch.Tensor, after: torch.Tensor,
                     nll: bool) -> str:
    top = int(torch.argmax(before))
    head = f"ablating {len(neurons)} neuron(s) and {len(dims)} dim(s)"
    episode = body.get("episode")
    if episode is not None:
        names = ", ".join(part_name({"kind": "neuron", "layer": n[0], "index": n[-1],
                                     "expert": n[1] if len(n) == 3 else None}) for n in neurons)
        first, last = episode["layers"][0], episode["layers"][-1]
        rest = sorted(episode["rest_of_rise"].items(), key=lambda kv: -kv[1]["write"])
        others = ", ".join(f"{KIND_WORDS.get(kind, kind)} {100 * v['share']:+.0f} %" for kind, v in rest)
        head = (f"ablating the writers of episode {episode['index']} (dim {episode['dim']}, inputs "
                f"{episode['inputs'][0]}-{episode['inputs'][1]}: {names}, {100 * episode['ablated_share']:.0f} % of "
                f"its rise{'; the rest: ' + others if others else ''}) moved the head-mean sink score over "
                f"layers {first}-{last} from {episode['sink_score_before']:.3f} to {episode['sink_score_after']:.3f}"
                + (f" and the first token's DomRatio there from {episode['dom_ratio_before']:.1f} to "
                   f"{episode['dom_ratio_after']:.1f}" if episode["dom_ratio_before"] is not None else ""))
    return (f"{head}; peak sink score {before[top]:.3f} -> {after[top]:.3f} at layer {top}; max DomRatio "
            f"{max(body['dom_ratio_before']):.1f} -> {max(body['dom_ratio_after']):.1f}; sink "
            f"{_present(body['sink_before'])} -> {_present(body['sink_after'])}"
            + (f"; perplexity {body['perplexity_before']['perplexity']:.2f} -> "
               f"{body['perplexity_after']['perplexity']:.2f}" if nll else ""))


def _present(sink: dict) -> str:
    peak = sink["peak_layer"]
    ratio = f"{sink['ratio'][peak]:.1f}x uniform at layer {peak}" if peak is not None else "no score"
    return f"{'present' if sink['present'] else 'absent'} ({ratio})"
