"""Episodes of a massive dim: where it dominates the first token, who wrote it there, who erased it.

An episode of dim d is a maximal run of layer inputs at which d dominates the first token (the
scale-free massive rule of :func:`sinkscope.chain.links.reduce_disparity`). Its rise runs from the
lowest point before it (the embedding's value, or the low after the dim's previous episode) to its
first input; its writers are the fewest parts of those layers (attention, single neurons, an FFN's
biases, the norms) whose writes make up ``Criteria.writer_share`` of the rise. Its fall runs from its
peak to the lowest point after it, and its erasers are found the same way. A dim that dominates at
input 0 is the embedding's, with no neuron needed.
"""

from __future__ import annotations

from .attribution import Attribution


def runs(inputs: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers in sorted ``inputs``, as (first, last) pairs."""
    out: list[tuple[int, int]] = []
    for k in inputs:
        if out and k == out[-1][1] + 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out


def fewest_making_up(parts: list[tuple[dict, float]], total: float, share: float) -> tuple[list[dict], float]:
    """The fewest parts, largest write first, whose writes reach ``share`` of ``total`` (> 0), and the share
    they make up. Writes are signed along the change, so a part writing against it never counts."""
    chosen, made = [], 0.0
    for ident, write in sorted(parts, key=lambda p: -p[1]):
        if write <= 0 or made >= share * total:
            break
        made += write
        chosen.append({**ident, "write": write, "share": write / total})
    return chosen, made / total


def _window_parts(att: Attribution, dim: int, first: int, last: int, sign: float) -> list[tuple[dict, float]]:
    """Every part of layers first..last-1 on ``dim``, its write signed along ``sign``."""
    return [(ident, sign * write) for layer in range(first, last) for ident, write in att.parts(layer, dim)]


def _change(att: Attribution, dim: int, first: int, last: int, sign: float, share: float, role: str) -> dict:
    """The change of ``dim`` from input ``first`` to ``last`` along ``sign``, the parts that made it, and what
    every kind of part wrote in all (``by_kind``: the named parts and the rest, so a partial ablation can say
    who carries the remainder)."""
    parts = _window_parts(att, dim, first, last, sign)
    change = sign * float(att.mean[last, dim] - att.mean[first, dim])
    found, made = fewest_making_up(parts, change, share) if change > 0 else ([], 0.0)
    by_kind: dict[str, float] = {}
    for ident, write in parts:
        by_kind[ident["kind"]] = by_kind.get(ident["kind"], 0.0) + sign * write
    return {"from": first, "to": last, "change": sign * change,
            role: [{**p, "write": sign * p["write"]} for p in found], "explained": made, "by_kind": by_kind}


def episodes_of(att: Attribution, dim: int, dominant: list[int], share: float) -> list[dict]:
    """Every episode of ``dim`` given the layer inputs where it dominates the first token (sorted)."""
    mean = att.mean[:, dim]  # (K,)
    K = len(mean)
    found, spans = [], runs(dominant)
    for i, (start, end) in enumerate(spans):
        inside = mean[start:end + 1]
        sign = 1.0 if float(inside[inside.abs().argmax()]) >= 0 else -1.0
        peak = start + int((sign * inside).argmax())
        if start == 0:
            rise = {"from": None, "to": 0, "change": float(mean[0]), "explained": 1.0,
                    "writers": [{"kind": "embedding", "layer": None, "index": None, "expert": None,
                                 "write": float(mean[0]), "share": 1.0}]}
        else:
            low_from = spans[i - 1][1] + 1 if i else 0
            low = low_from + int((sign * mean[low_from:start]).argmin())
            rise = _change(att, dim, low, start, sign, share, "writers")
        fall = None
        if end < K - 1:
            stop = spans[i + 1][0] if i + 1 < len(spans) else K
            low = end + 1 + int((sign * mean[end + 1:stop]).argmin())
            fall = _change(att, dim, peak, low, -sign, share, "erasers")
        found.append({"dim": dim, "start": start, "end": end, "peak_input": peak, "peak": float(mean[peak]),
                      "rise": rise, "fall": fall})
    return found


def all_episodes(att: Attribution, dominant_at: dict[int, list[int]], share: float) -> list[dict]:
    """Episodes of every dim that dominates the first token somewhere, ordered by their first input."""
    dims = sorted({d for dims in dominant_at.values() for d in dims})
    found = [e for d in dims for e in episodes_of(att, d, sorted(k for k, ds in dominant_at.items() if d in ds), share)]
    return sorted(found, key=lambda e: (e["start"], -abs(e["peak"])))


def add_sink(episodes: list[dict], ratio: list[float | None]) -> None:
    """Each episode's mean sink ratio over the layers that read its inputs (input k feeds layer k)."""
    for e in episodes:
        values = [ratio[k] for k in range(e["start"], min(e["end"] + 1, len(ratio))) if ratio[k] is not None]
        e["sink_ratio"] = sum(values) / len(values) if values else None


def tracking(episodes: list[dict], ratio: list[float | None]) -> dict:
    """How the sink follows the episodes: its mean ratio to uniform in layers whose input carries one, and not."""
    carried = {k for e in episodes for k in range(e["start"], e["end"] + 1)}
    layers_with = [k for k in range(len(ratio)) if k in carried and ratio[k] is not None]
    layers_without = [k for k in range(len(ratio)) if k not in carried and ratio[k] is not None]
    mean = lambda ks: sum(ratio[k] for k in ks) / len(ks) if ks else None  # noqa: E731
    return {"sink_ratio_with_episode": mean(layers_with), "sink_ratio_without_episode": mean(layers_without),
            "layers_with": layers_with, "layers_without": layers_without}


def onset_episode(episodes: list[dict], onset: int | None) -> int | None:
    """Index of the episode whose inputs hold the onset layer's input (the strongest, if several dims do)."""
    if onset is None:
        return None
    present = [i for i, e in enumerate(episodes) if e["start"] <= onset <= e["end"]]
    return max(present, key=lambda i: abs(episodes[i]["peak"])) if present else None


def super_neurons(episodes: list[dict]) -> list[dict]:
    """The neurons among the episodes' writers, with the episode they wrote and their write."""
    return [{"layer": w["layer"], "index": w["index"], "expert": w["expert"], "dims": [e["dim"]], "episode": i,
             "write": w["write"], "share": w["share"]}
            for i, e in enumerate(episodes) for w in e["rise"]["writers"] if w["kind"] == "neuron"]


def attributed_neurons(episodes: list[dict]) -> list[tuple[int, int]]:
    """Every dense FFN neuron (layer, index) the attribution names, as a writer of a rise or an eraser of a fall,
    each once, in the episodes' order."""
    named = [(w["layer"], w["index"]) for e in episodes for part, key in (("rise", "writers"), ("fall", "erasers"))
             for w in (e[part] or {}).get(key, []) if w["kind"] == "neuron" and w["expert"] is None]
    return list(dict.fromkeys(named))


def trajectories(att: Attribution, dims: list[int]) -> list[dict]:
    """Each dim's mean and spread at the first token at every layer input, and the blocks' writes."""
    return [{"dim": d, "mean": att.mean[:, d].tolist(), "std": att.std[:, d].tolist(),
             "attention_write": att.attention[:, d].tolist(), "mlp_write": att.mlp[:, d].tolist()}
            for d in dims]
