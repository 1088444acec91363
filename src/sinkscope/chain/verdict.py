"""The chain's verdict: is the sink explained by a massive dim that earlier parts wrote, and the story in words.

The chain is consistent when an episode of a massive dim is present at the onset layer's input: by
construction its writers sit in earlier layers (or are the embedding), so the sink can only have
locked onto a direction that existed before it. A sink that sets in before any dim dominates the
first token, or no sink, leaves the chain unexplained.
"""

from __future__ import annotations

SHOWN_WRITERS = 3  # writers (erasers) named per episode in the sentence; probe.json lists them all


def chain_consistent(chain: dict) -> bool:
    """An episode holds the onset layer's input (episode start <= onset <= episode end)."""
    onset = chain["onset_layer"]
    return onset is not None and any(e["start"] <= onset <= e["end"] for e in chain["episodes"])


def first_position(sequences: list[list[int]]) -> dict:
    """Whether position 0 holds the same token in every sequence (then C1 across samples is undefined there)."""
    firsts = {s[0] for s in sequences if s}
    same = len(firsts) == 1 and len(sequences) > 1
    note = (f"position 0 is token {next(iter(firsts))} in every sequence (a BOS token), so its std across samples "
            "is 0 by construction: not evidence against C1. Measure C1 across samples in the paper's setting: "
            "--random-tokens --bos never" if same else None)
    return {"same_token_every_sample": same, "distinct_first_tokens": len(firsts),
            "across_samples_defined": not same, "note": note}


def variance_sentence(variance: dict) -> str:
    first = variance.get("first_position") or {}
    if first.get("same_token_every_sample"):
        return ("C1 across samples is not measured on these data: position 0 is the same (BOS) token in every "
                "sequence, so its std across samples is 0 by construction; run with --random-tokens --bos never.")
    ratios = [(row["across_samples"]["first_rest_ratio"], row["layer"]) for row in variance["layers"]
              if row["across_samples"]["first_rest_ratio"] == row["across_samples"]["first_rest_ratio"]]
    if not ratios:
        return ""
    ratio, layer = max(ratios)
    return f"C1: the first token's std across samples is {ratio:.1f}x the rest's at layer {layer} (o_proj input)."


def part_name(part: dict) -> str:
    """'2:90' for a neuron (layer:index, 'layer:expert:index' inside experts), else the part's kind and layer."""
    if part["kind"] == "embedding":
        return "the embedding"
    if part["kind"] == "neuron":
        expert = "" if part["expert"] is None else f"{part['expert']}:"
        return f"{part['layer']}:{expert}{part['index']}"
    return f"{'attention' if part['kind'] == 'attention' else part['kind']} {part['layer']}"


def _parts_text(parts: list[dict]) -> str:
    shown = ", ".join(f"{part_name(p)} {p['write']:+.4g}" for p in parts[:SHOWN_WRITERS])
    return shown + (f" and {len(parts) - SHOWN_WRITERS} more" if len(parts) > SHOWN_WRITERS else "")


def _layers(parts: list[dict]) -> str:
    """The layers the named parts sit in: 'layer 11', 'layers 1-2'."""
    layers = sorted({p["layer"] for p in parts if p["layer"] is not None})
    if not layers:
        return "no single layer"
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"


def episode_sentence(e: dict) -> str:
    rise, fall = e["rise"], e["fall"]
    span = f"inputs {e['start']}-{e['end']}" if e["end"] > e["start"] else f"input {e['start']}"
    if rise["from"] is None:
        text = f"dim {e['dim']} dominates the first token from the embedding on ({span}, {rise['change']:+.4g})"
    else:
        text = (f"dim {e['dim']} dominates the first token at {span}, written by {_layers(rise['writers'])} "
                f"({rise['change']:+.4g}, {rise['from']} -> {rise['to']}; {_parts_text(rise['writers'])}: "
                f"{100 * rise['explained']:.0f} % of the rise)")
    if fall is not None:
        text += (f", erased by {_layers(fall['erasers'])} ({_parts_text(fall['erasers'])}: "
                 f"{100 * fall['explained']:.0f} % of the fall {fall['change']:+.4g})")
    if e.get("sink_ratio") is not None:
        text += f"; the sink meanwhile: {e['sink_ratio']:.1f}x uniform"
    return text


def chain_verdict(chain: dict, sink: dict, variance: dict) -> str:
    """The sink sentence, then the episodes, how the sink follows them, and whether they explain the onset."""
    parts = [sink["verdict"]]
    episodes = chain["episodes"]
    if not episodes:
        parts.append("No dim dominates the first token at any layer input: no dimension disparity, so no episode "
                     "and no super neuron.")
    else:
        parts.append(f"{len(episodes)} episode(s): " + "; ".join(episode_sentence(e) for e in episodes) + ".")
        track = chain["tracking"]
        if track["sink_ratio_with_episode"] is not None and track["sink_ratio_without_episode"] is not None:
            parts.append(f"The sink follows the massive dims: {track['sink_ratio_with_episode']:.1f}x uniform on "
                         "average in layers whose input carries an episode, "
                         f"{track['sink_ratio_without_episode']:.1f}x in the others (layers {', '.join(map(str, track['layers_without']))}).")
    onset, index = chain["onset_layer"], chain["onset_episode"]
    if chain["consistent"]:
        e = episodes[index]
        parts.append(f"The chain is consistent: the episode at the onset's input (dim {e['dim']}, from input "
                     f"{e['start']}) was written before layer {onset}.")
    elif onset is not None and episodes:
        parts.append(f"The chain does not explain the onset: no dim dominates the first token at the input of "
                     f"layer {onset}, where the sink sets in.")
    else:
        parts.append("The chain is not established.")
    sentence = variance_sentence(variance)
    return " ".join(parts + ([sentence] if sentence else []))
