"""Figures of where the sink is: sink score per layer and head, sink rate, onset.

Each function takes result payloads (never a model) and returns a matplotlib Figure, or raises
:class:`MissingData` with a one-line reason when the payload lacks what the figure needs.
Data series carry SVG ids (``set_gid``) so tests and readers can find them in the SVG files.
"""

from __future__ import annotations

import math

import numpy as np

from .payload import MissingData, finite, need
from .style import (
    HIGHLIGHT,
    NATURAL_STYLE,
    NEUTRAL,
    RANDOM_STYLE,
    integer_axis,
    new_figure,
    tag,
)


def sink_heatmap(probe: dict, label: str):
    """Layer x head sink score (attention to the first token), onset layer marked."""
    score, = need(probe, "sink_score")
    grid = np.array([finite(row) for row in score])  # (L, H)
    onset = probe.get("onset_layer")
    sink = probe.get("sink") or {}
    n_layers, n_heads = grid.shape
    fig, axes = new_figure(height=max(2.8, 0.28 * n_layers + 1.4))
    ax = axes[0, 0]
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    tag(image, "sink-heatmap")
    colourbar = fig.colorbar(image, ax=ax)
    colourbar.set_label("sink score (mean attention to token 0)")
    ax.set_xlabel("head")
    ax.set_ylabel("layer (0-based)")
    ax.set_xticks(range(n_heads) if n_heads <= 16 else range(0, n_heads, max(1, n_heads // 8)))
    ax.set_yticks(range(n_layers) if n_layers <= 24 else range(0, n_layers, max(1, n_layers // 12)))
    if onset is not None:
        rect = ax.axhspan(onset - 0.5, onset + 0.5, fill=False, edgecolor=HIGHLIGHT, linewidth=2.0)
        tag(rect, "onset-marker")
        ax.annotate(f"onset: layer {onset}", xy=(n_heads - 0.5, onset), xytext=(4, 0), textcoords="offset points",
                    color=HIGHLIGHT, fontsize=8, va="center", ha="left", annotation_clip=False)
        title = f"{label}: sink score, onset layer {onset}" + (
            f" (>= {sink['ratio_min']:g}x uniform, CI)" if sink.get("rules") == "scale-free" else "")
    else:
        title = f"{label}: sink score, no sink" + (f" (no layer >= {sink['ratio_min']:g}x uniform)"
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
    ax.set_xlabel("layer (0-based)")
    integer_axis(ax.xaxis)
    ax.set_ylabel("sink score (head mean)")
    ax.set_title("sink score by layer")
    ax.legend(loc="best")
    width = 0.38
    eps = None
    for i, e in enumerate(entries):
        for j, key in enumerate(("natural", "random")):
            probe = e.get(key)
            if not probe or probe.get("sink_rate") is None:
                continue
            eps = probe.get("sink_rate_eps", eps)
            bar = bars.bar(i + (j - 0.5) * width, probe["sink_rate"], width, color=e["colour"],
                           hatch="//" if key == "random" else None, edgecolor="white" if key == "natural" else "black",
                           label=None)
            tag(bar, f"sink-rate-{e['index']}-{key}")
            bars.text(i + (j - 0.5) * width, probe["sink_rate"] + 1, f"{probe['sink_rate']:.0f}", ha="center",
                      fontsize=7)
    bars.set_xticks(range(len(entries)), [e["label"] for e in entries], rotation=15, ha="right")
    bars.set_ylim(0, 110)
    bars.set_ylabel("sink rate (% of heads)")
    bars.set_title(f"sink rate (eps {eps:g}); hatched: random tokens" if eps is not None else "sink rate")
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
    ax.set_yscale("log")
    ax.set_xlabel("layer input k (residual stream entering layer k; last = final norm)")
    integer_axis(ax.xaxis)
    ax.set_ylabel("DomRatio max|h| / mean|h| (log)")
    ax.set_title(f"{label}: dimension disparity")
    ax.legend(loc="best")
    return fig


def massive_activations(probe: dict, hidden_table: dict | None, label: str, colour: str, positions: int = 12):
    """Sun et al.-style 3-D view: mean |h| norm by layer and position, plus max |activation| by layer."""
    max_abs, = need(probe, "max_abs_activation")
    if not hidden_table or not hidden_table.get("norm"):
        raise MissingData("hidden_by_position.parquet (hidden-state norm by position) is not beside probe.json")
    layers = np.array(hidden_table["layer"])
    pos = np.array(hidden_table["position"])
    norm = finite(hidden_table["norm"])
    n_layers = int(layers.max()) + 1
    n_pos = min(positions, int(pos.max()) + 1)
    grid = np.full((n_layers, n_pos), np.nan)
    keep = pos < n_pos
    grid[layers[keep], pos[keep]] = norm[keep]
    fig = new_figure(height=6.2)[0]
    fig.clear()
    grid_spec = fig.add_gridspec(2, 1, height_ratios=[1.7, 1.0])
    ax3 = fig.add_subplot(grid_spec[0], projection="3d")
    xx, yy = np.meshgrid(np.arange(n_pos), np.arange(n_layers))
    heights = np.nan_to_num(grid).ravel()
    colours = [colour if x == 0 else NEUTRAL for x in xx.ravel()]
    bars = ax3.bar3d(xx.ravel(), yy.ravel(), np.zeros_like(heights), 0.7, 0.7, heights, color=colours, shade=True)
    tag(bars, "massive-3d")
    ax3.set_xlabel("token position")
    ax3.set_ylabel("layer")
    integer_axis(ax3.xaxis)
    integer_axis(ax3.yaxis)
    ax3.set_zlabel("mean ||h|| (L2)")
    ax3.set_title("mean hidden-state norm by layer and position (first token coloured)")
    ax3.view_init(elev=25, azim=-60)
    ax = fig.add_subplot(grid_spec[1])
    values = finite(max_abs)
    line, = ax.plot(range(len(values)), values, "-o", color=colour, markersize=4, label="max |h| (all tokens)")
    tag(line, "max-abs")
    criteria = (probe.get("disparity") or {}).get("massive_criteria_paper") or {}
    if criteria.get("abs"):
        ax.axhline(criteria["abs"], color=HIGHLIGHT, linestyle=":", label=f"Sun et al.'s massive: |h| > {criteria['abs']:g}")
    ax.set_yscale("log")
    ax.set_xlabel("layer (block output)")
    integer_axis(ax.xaxis)
    ax.set_ylabel("max |activation| (log)")
    dims = (probe.get("disparity") or {}).get("massive_dims") or []
    ax.set_title("max |activation| by layer; massive dims at the first token: "
                 + (", ".join(map(str, dims[:6])) if dims else "none"))
    ax.legend(loc="best")
    fig.suptitle(f"{label}: massive activations")
    return fig
