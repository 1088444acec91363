"""The learned sink (gpt-oss ``s_aux``, softmax1, sinkscope's ``sink_logit``) beside the first-token sink.

Takes a probe payload, returns a matplotlib Figure, or raises MissingData when the model has no
learned sink logit (then there is nothing to set beside the first token).
"""

from __future__ import annotations

import numpy as np

from .payload import MissingData, finite, need
from .style import new_figure, tag


def learned_sink_heatmaps(probe: dict | None, label: str):
    """Two layer x head maps on one 0..1 scale: attention to the first token, and the learned sink's share."""
    score, mass = need(probe, "sink_score", "learned_sink_mass")
    if not (probe.get("model") or {}).get("learned_sink"):
        raise MissingData("this model's attention has no learned sink logit")
    grids = [np.array([finite(row) for row in values]) for values in (score, mass)]  # (L, H) each
    n_layers = grids[0].shape[0]
    fig, axes = new_figure(1, 2, height=max(2.8, 0.28 * n_layers + 1.4), sharey=True)
    titles = ("first token (sink score)", "learned sink (share of each query's softmax)")
    for ax, grid, title, gid in zip(axes[0], grids, titles, ("first-token-sink", "learned-sink")):
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        tag(image, gid)
        ax.set_title(f"{label}: {title}")
        ax.set_xlabel("head")
    axes[0, 0].set_ylabel("layer (0-based)")
    fig.colorbar(image, ax=axes[0, 1]).set_label("attention share")
    return fig
