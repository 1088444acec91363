"""Figures in the peers' own forms: Sun et al.'s layer-wise magnitudes and their massive-activation reset."""

from __future__ import annotations

import numpy as np

from .payload import MissingData, finite, need
from .style import HIGHLIGHT, LAYER_AXIS, LAYER_INPUT_AXIS, NEUTRAL, integer_axis, log_if_wide, new_figure, tag

SUN_STYLES = (("top1", "Top 1", "o"), ("top2", "Top 2", "o"), ("top3", "Top 3", "o"), ("median", "Median", "v"))


def layer_magnitudes(probe: dict | None, label: str, colour: str):
    """Sun et al.'s layer-wise figure: top-1/2/3 and median |x| of each block output, mean over sequences.

    Layers count from 1 as in their plot; the bands are +/- one standard deviation over sequences.
    """
    mags, = need(probe, "layer_magnitudes")
    mean, std = np.array([finite(r) for r in mags["mean"]]), np.array([finite(r) for r in mags["std"]])  # (L, 4)
    if mean.size == 0:
        raise MissingData("the layer_magnitudes section is empty")
    layers = np.arange(1, mean.shape[0] + 1)  # block k's output = layer input k + 1 = Sun et al.'s layer k + 1
    shades = (colour, colour, colour, NEUTRAL)
    alphas = (1.0, 0.7, 0.45, 1.0)
    fig, axes = new_figure(height=3.4)
    ax = axes[0, 0]
    for i, (key, name, marker) in enumerate(SUN_STYLES):
        spread = np.nan_to_num(std[:, i])
        band = ax.fill_between(layers, mean[:, i] - spread, mean[:, i] + spread, color=shades[i],
                               alpha=0.12, linewidth=0)
        tag(band, f"sun-{key}-band")
        line, = ax.plot(layers, mean[:, i], "-", marker=marker, markerfacecolor="none", markersize=5,
                        color=shades[i], alpha=alphas[i], label=name)
        tag(line, f"sun-{key}")
    ax.set_xlabel(LAYER_INPUT_AXIS.split(" (")[0] + " (= Sun et al.'s 1-based layer)")
    log = log_if_wide(ax, mean)
    ax.set_ylabel("magnitude |x|" + (" (log)" if log else ""))
    integer_axis(ax.xaxis)
    ax.grid(axis="x", color="0.85")
    ax.set_title(f"{label}: top activation magnitudes by layer input ({mags.get('sequences')} sequences)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    return fig


def massive_reset(payload: dict, label: str, colour: str):
    """``intervene massive``: perplexity with 95 % CIs and sink score by layer, original / zero / mean."""
    rows, = need(payload, "per_layer")
    runs = (("original", NEUTRAL), ("zero", HIGHLIGHT), ("mean", colour))
    ppl = payload.get("perplexity")
    fig, axes = new_figure(1, 2 if ppl else 1, height=3.4)
    ax = axes[0, 0]
    layers = np.array([r["layer"] for r in rows])
    for run, shade in runs:  # the original is drawn wide and dashed, so a reset that changes nothing still shows it
        wide = run == "original"
        line, = ax.plot(layers, finite([r.get(f"sink_score_{run}") for r in rows]), "--o" if wide else "-o",
                        color=shade, markersize=4, linewidth=3.0 if wide else 1.5, zorder=1 if wide else 2,
                        label=f"set to {run}" if run != "original" else run)
        tag(line, f"massive-sink-{run}")
    ax.set_xlabel(LAYER_AXIS)
    ax.set_ylabel("sink score of token 0 (head mean)")
    ax.set_ylim(0, 1.05)
    integer_axis(ax.xaxis)
    ax.set_title(f"{label}: reset dims {payload.get('dims')} after layer {payload.get('layer')}")
    ax.legend(loc="best")
    if ppl:
        ax2 = axes[0, 1]
        values = finite([ppl[run]["perplexity"] for run, _ in runs])
        lo = values - finite([ppl[run]["ci"][0] for run, _ in runs])
        hi = finite([ppl[run]["ci"][1] for run, _ in runs]) - values
        bars = ax2.bar(range(3), values, color=[shade for _, shade in runs], yerr=[lo, hi], capsize=4)
        tag(bars, "massive-perplexity")
        ax2.set_xticks(range(3), [run for run, _ in runs])
        ax2.set_ylabel("perplexity (95 % CI)")
        ax2.set_title("Sun et al.'s test")
    return fig
