"""Figures of where the sink is: sink score per layer and head, sink rate, onset.

Each function takes result payloads (never a model) and returns a matplotlib Figure, or raises
:class:`MissingData` with a one-line reason when the payload lacks what the figure needs.
Data series carry SVG ids (``set_gid``) so tests and readers can find them in the SVG files.
"""

from __future__ import annotations

import math

import numpy as np

from matplotlib.colors import LogNorm
from matplotlib.patches import Patch

from .payload import MissingData, finite, need
from .style import (
    HIGHLIGHT,
    LAYER_AXIS,
    LAYER_INPUT_AXIS,
    NATURAL_STYLE,
    NEUTRAL,
    RANDOM_HATCH,
    RANDOM_STYLE,
    integer_axis,
    log_axis,
    new_figure,
    tag,
)

MASSIVE_POSITIONS = 32  # positions shown in the norm map: the first token against enough others to see the rest


def sink_heatmap(probe: dict, label: str):
    """Layer x head sink score (attention to the first token), onset layer marked."""
    score, = need(probe, "sink_score")
    grid = np.array([finite(row) for row in score])  # (L, H)
    onset = probe.get("onset_layer")
    sink = probe.get("sink") or {}
    n_layers, n_heads = grid.shape
    fig, axes = new_figure(height=max(2.8, 0.16 * n_layers + 1.6))
    ax = axes[0, 0]
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                      interpolation="nearest")  # row k = layer k, column h = head h
    tag(image, "sink-heatmap")
    colourbar = fig.colorbar(image, ax=ax)
    colourbar.set_label("sink score (attention to token 0)")
    ax.set_xlabel("head")
    ax.set_ylabel(LAYER_AXIS)
    integer_axis(ax.xaxis)
    integer_axis(ax.yaxis)
    if onset is not None:
        rect = ax.axhspan(onset - 0.5, onset + 0.5, fill=False, edgecolor=HIGHLIGHT, linewidth=2.0)
        tag(rect, "onset-marker")
        title = f"{label}: sink score, onset layer {onset} (red box)" + (
            f"\n(>= {sink['ratio_min']:g}x uniform, CI)" if sink.get("rules") == "scale-free" else "")
    else:
        title = f"{label}: sink score, no sink" + (f"\n(no layer >= {sink['ratio_min']:g}x uniform)"
                                                   if sink.get("rules") == "scale-free" else "")
    ax.set_title(title)
    return fig


def sink_rate(entries: list[dict]):
    """Head-mean sink score by layer for every run, and the sink rate (% of heads), natural vs random.

    entries: [{"label", "colour", "natural": probe payload | None, "random": probe payload | None}].
    """
    entries = [e for e in entries if e.get("natural") or e.get("random")]
    if not entries:
        raise MissingData("no probe.json")
    fig, axes = new_figure(1, 2, height=3.4, width=9.0, gridspec_kw={"width_ratios": [3, 2]})
    ax, bars = axes[0]
    threshold = None
    for e in entries:
        for key, style in (("natural", NATURAL_STYLE), ("random", RANDOM_STYLE)):
            probe = e.get(key)
            if not probe or probe.get("layer_sink_score") is None:
                continue
            y = finite(probe["layer_sink_score"])
            line, = ax.plot(range(len(y)), y, style, color=e["colour"], marker="o", markersize=3,
                            label=f"{e['label']} ({'random tokens' if key == 'random' else 'natural text'})")
            tag(line, f"layer-score-{e['index']}-{key}")
            threshold = probe.get("onset_threshold_paper", threshold)
    if threshold is not None:
        ax.axhline(threshold, color=HIGHLIGHT, linewidth=0.8, linestyle=":",
                   label=f"paper's onset threshold {threshold:g}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(LAYER_AXIS)
    integer_axis(ax.xaxis)
    ax.set_ylabel("sink score (head mean)")
    ax.set_title("sink score by layer")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below the axes: never over a line
    width = 0.38
    eps = None
    for i, e in enumerate(entries):
        for j, key in enumerate(("natural", "random")):
            probe = e.get(key)
            if not probe or probe.get("sink_rate") is None:
                continue
            eps = probe.get("sink_rate_eps", eps)
            bar = bars.bar(i + (j - 0.5) * width, probe["sink_rate"], width, color=e["colour"],
                           hatch=RANDOM_HATCH if key == "random" else None, edgecolor="white", linewidth=0.8)
            tag(bar, f"sink-rate-{e['index']}-{key}")
            bars.text(i + (j - 0.5) * width, probe["sink_rate"] + 1, f"{probe['sink_rate']:.0f}", ha="center")
    bars.set_xticks(range(len(entries)), [e["label"] for e in entries], rotation=15 if len(entries) > 2 else 0,
                    ha="right" if len(entries) > 2 else "center")
    bars.set_ylim(0, 110)
    bars.set_ylabel("sink rate (% of heads)")
    bars.set_title(f"sink rate (eps {eps:g})" if eps is not None else "sink rate")
    bars.legend(handles=[Patch(facecolor=NEUTRAL, edgecolor="white", label="natural text"),
                         Patch(facecolor=NEUTRAL, edgecolor="white", hatch=RANDOM_HATCH, label="random tokens")],
                loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig


def dom_ratio(probe: dict, label: str, colour: str):
    """DomRatio = max|h| / mean|h| by layer input, the first token against the other tokens' median."""
    disparity, = need(probe, "disparity")
    sink = finite(need(disparity, "sink_dom_ratio")[0])
    other = finite(disparity.get("other_dom_ratio_median") or [math.nan] * len(sink))
    other_max = finite(disparity.get("other_dom_ratio_max") or [math.nan] * len(sink))
    k = np.arange(len(sink))
    fig, axes = new_figure(height=3.2)
    ax = axes[0, 0]
    line, = ax.plot(k, sink, "-o", color=colour, markersize=4, label="first token")
    tag(line, "dom-sink")
    line, = ax.plot(k, other, "-s", color=NEUTRAL, markersize=3, label="other tokens (median)")
    tag(line, "dom-other")
    if np.isfinite(other_max).any():
        line, = ax.plot(k, other_max, ":", color=NEUTRAL, label="other tokens (max)")
        tag(line, "dom-other-max")
    jump = disparity.get("disparity_layer_input")
    if jump is not None:
        ax.axvline(jump, color=HIGHLIGHT, linestyle="--", linewidth=1, label=f"disparity at layer input {jump}")
    log_axis(ax)
    ax.set_xlabel(LAYER_INPUT_AXIS)
    integer_axis(ax.xaxis)
    ax.set_ylabel("DomRatio max|h| / mean|h| (log)")
    ax.set_title(f"{label}: dimension disparity")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below the axes: never over the lines
    return fig


def massive_activations(probe: dict, hidden_table: dict | None, label: str, colour: str,
                        positions: int = MASSIVE_POSITIONS):
    """Mean hidden-state norm by layer input and position (log colour), and max |activation| by layer input.

    Both read block outputs (block k's output is layer input k + 1), drawn on the page's one layer axis.
    """
    max_abs, = need(probe, "max_abs_activation")
    if not hidden_table or not hidden_table.get("norm"):
        raise MissingData("hidden_by_position.parquet (hidden-state norm by position) is not beside probe.json")
    layers = np.array(hidden_table["layer"])
    pos = np.array(hidden_table["position"])
    norm = finite(hidden_table["norm"])
    n_layers = int(layers.max()) + 1
    n_pos = min(positions, int(pos.max()) + 1)
    grid = np.full((n_layers + 1, n_pos), np.nan)  # row k = layer input k; row 0 (embeddings) is not recorded
    keep = pos < n_pos
    grid[layers[keep] + 1, pos[keep]] = norm[keep]
    fig, axes = new_figure(2, 1, height=6.4, gridspec_kw={"height_ratios": [1.4, 1.0]})
    ax, line_ax = axes[0, 0], axes[1, 0]
    positive = grid[np.isfinite(grid) & (grid > 0)]
    scale = LogNorm(positive.min(), positive.max()) if positive.size else None
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", norm=scale, interpolation="nearest")
    tag(image, "massive-norm")
    fig.colorbar(image, ax=ax).set_label("mean ||h|| (log)")
    ax.set_xlabel("token position")
    ax.set_ylabel(LAYER_INPUT_AXIS.split(" (")[0])
    integer_axis(ax.xaxis)
    integer_axis(ax.yaxis)
    ax.set_title(f"mean hidden-state norm by layer input and position (first {n_pos})")
    values = finite(max_abs)
    line, = line_ax.plot(np.arange(1, len(values) + 1), values, "-o", color=colour, markersize=4,
                         label="max |h| (all tokens)")
    tag(line, "max-abs")
    disparity = probe.get("disparity") or {}
    criteria = disparity.get("massive_criteria_paper") or {}
    if criteria.get("abs"):
        line_ax.axhline(criteria["abs"], color=HIGHLIGHT, linestyle=":", label=f"Sun et al.: |h| > {criteria['abs']:g}")
    log_axis(line_ax)
    line_ax.set_xlim(-0.5, len(values) + 0.5)
    line_ax.set_xlabel(LAYER_INPUT_AXIS)
    integer_axis(line_ax.xaxis)
    line_ax.set_ylabel("max |activation| (log)")
    standing = ", ".join(map(str, (disparity.get("massive_dims") or [])[:6])) or "none"
    sun = ", ".join(map(str, (disparity.get("massive_dims_paper") or [])[:6])) or "none"
    line_ax.set_title(f"first token's dominant dims: {standing}\nmassive by Sun et al.'s rule "
                      f"(|h| > 100 and > 1000x the layer's median |h|): {sun}")
    line_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    fig.suptitle(f"{label}: massive activations")
    return fig
