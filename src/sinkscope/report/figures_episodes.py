"""The chain's episodes (COMMON.md schema, ``chain.trajectories`` and ``chain.episodes``): each massive dim's
first-token value by layer input, where it rises (its top writer) and falls (its top eraser), beside the
layer's sink score on a second axis. A probe without episodes gets no figure (MissingData)."""

from __future__ import annotations

import numpy as np

from .payload import MissingData, finite
from .style import DIM_COLOURS, HIGHLIGHT, LAYER_INPUT_AXIS, integer_axis, log_if_wide, new_figure, tag

DIMS_DRAWN = 4  # the strongest trajectories; more lines on one axis stop being readable


def _short(writer: dict) -> str:
    """'n1229@L2', 'attn@L5', 'mlp@L28', 'embed': a writer in a few characters, for a marker's label."""
    kind = writer.get("kind")
    if kind == "embedding":
        return "embed"
    name = {"neuron": f"n{writer.get('index')}", "attention": "attn", "mlp": "mlp"}.get(kind, str(kind))
    return f"{name}@L{writer.get('layer')}"


def episodes_figure(probe: dict | None, label: str):
    """One line per massive dim (mean |h_d| at the first token by layer input), rises and falls marked with
    their top writer / eraser, and the head-mean sink score by layer on the right axis."""
    chain = (probe or {}).get("chain") or {}
    trajectories, episodes = chain.get("trajectories"), chain.get("episodes")
    if not trajectories or not episodes:
        raise MissingData("no chain episodes in probe.json (the attribution's chain.trajectories / episodes)")
    fig, axes = new_figure(height=3.8)
    ax = axes[0, 0]
    drawn = sorted(trajectories, key=lambda t: -np.nanmax(np.abs(finite(t["mean"]))))[:DIMS_DRAWN]
    colours = {t["dim"]: DIM_COLOURS[i % len(DIM_COLOURS)] for i, t in enumerate(drawn)}
    values = []
    for t in drawn:
        mean = np.abs(finite(t["mean"]))
        values += list(mean)
        line, = ax.plot(np.arange(len(mean)), mean, "-o", markersize=3, color=colours[t["dim"]],
                        label=f"dim {t['dim']}")
        tag(line, f"episode-dim-{t['dim']}")
    for i, e in enumerate(episodes):
        trajectory = next((t for t in drawn if t["dim"] == e["dim"]), None)
        if trajectory is None:
            continue
        mean = np.abs(finite(trajectory["mean"]))
        for part, key, marker in (("rise", "writers", "^"), ("fall", "erasers", "v")):
            step = e.get(part)
            if not step or step.get("to") is None or step["to"] >= len(mean):
                continue
            k = step["to"]
            point, = ax.plot([k], [mean[k]], marker, color=HIGHLIGHT, markersize=7)
            tag(point, f"episode-{i}-{part}")
            who = (step.get(key) or [None])[0]
            if who:
                right = k > len(mean) / 2  # labels point inwards, never past the axes
                ax.annotate(_short(who), (k, mean[k]), xytext=(-6 if right else 6, 6 if part == "rise" else -12),
                            textcoords="offset points", color=HIGHLIGHT, ha="right" if right else "left")
    log = log_if_wide(ax, values)
    ax.set_xlabel(LAYER_INPUT_AXIS)
    ax.set_ylabel("first token's |h_d|, mean" + (" (log)" if log else ""))
    integer_axis(ax.xaxis)
    scores = probe.get("layer_sink_score")
    if scores:
        twin = ax.twinx()
        line, = twin.plot(np.arange(len(scores)), finite(scores), ":", color="#222222", label="sink score (layer k)")
        tag(line, "episode-sink-score")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("sink score (head mean, layer k)")
        twin.spines["right"].set_visible(True)
        handles = ax.get_legend_handles_labels()[0] + [line]
    else:
        handles = ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(len(handles), 5))
    ax.set_title(f"{label}: massive-dim episodes (triangles: rise / fall, top writer / eraser)")
    return fig
