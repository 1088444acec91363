"""Figures of ``sinkscope stream`` (stream.json): perplexity against tokens, one line per cache policy."""

from __future__ import annotations

import numpy as np

from .payload import need
from .style import CACHE_STYLE, FIT_COLOUR, NATURAL_STYLE, WIDE_WIDTH, log_axis, new_figure, policy_colour, tag

POLICY_STYLE = {"original": NATURAL_STYLE, "cache": CACHE_STYLE}  # positions mode -> line style


SMOOTH_TOKENS = 16  # perplexity by position is noisy over a few dozen documents; a moving mean shows the trend


def smoothed_perplexity(nll_by_position: list[float], span: int = SMOOTH_TOKENS) -> np.ndarray:
    """exp of the mean NLL over the ``span`` predicted tokens ending at each position (fewer at the start)."""
    nll = np.asarray(nll_by_position, dtype=float)
    total = np.concatenate([[0.0], np.cumsum(nll)])
    ends = np.arange(1, len(nll) + 1)
    starts = np.maximum(0, ends - span)
    return np.exp((total[ends] - total[starts]) / (ends - starts))


def stream_perplexity(payload: dict, label: str):
    """Perplexity against tokens per policy (moving mean over SMOOTH_TOKENS) (solid: original positions, dash-dot: cache), full attention in black."""
    policies, budget = need(payload, "policies", "budget")
    fig, axes = new_figure(height=3.6, width=WIDE_WIDTH)
    ax = axes[0, 0]
    first_k = list(dict.fromkeys(p["name"] for p in policies if p["name"] not in ("window", "discovered")))
    for policy in policies:
        curve = smoothed_perplexity(policy["nll_by_position"])
        colour = policy_colour(policy["name"], first_k.index(policy["name"]) if policy["name"] in first_k else 0)
        line, = ax.plot(np.arange(2, len(curve) + 2), curve, POLICY_STYLE.get(policy["positions"], ":"),
                        color=colour, label=f"{policy['name']} ({policy['positions']})")
        tag(line, f"stream-{policy['name']}-{policy['positions']}")
    full = payload.get("full_nll_by_position")
    if full:
        curve = smoothed_perplexity(full)
        line, = ax.plot(np.arange(2, len(curve) + 2), curve, ":", color=FIT_COLOUR, linewidth=2.0,
                        label="full attention")
        tag(line, "stream-full")
    ax.axvline(budget, color="#BBBBBB", linewidth=0.8)
    ax.set_xlabel(f"tokens (budget {budget} marked)")
    log_axis(ax)
    ax.set_ylabel(f"perplexity (mean over {SMOOTH_TOKENS} tokens)")
    ax.set_title(f"{label}: perplexity under a KV budget of {budget}")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")  # nine lines leave no free corner inside
    return fig


def policy_rows(payload: dict) -> list[dict]:
    """One table row per policy, plus full attention and the sink-dependence ratios."""
    rows = [{"policy": p["name"], "positions": p["positions"], "kept": round(p["kept"], 2),
             "perplexity": round(p["perplexity"], 3),
             "95% CI": f"[{p['perplexity_ci'][0]:.3f}, {p['perplexity_ci'][1]:.3f}]",
             "past budget": round(p["perplexity_past_budget"], 3)} for p in payload.get("policies", [])]
    if payload.get("full_perplexity") is not None:
        ci = payload.get("full_perplexity_ci") or [None, None]
        rows.append({"policy": "full", "positions": "-", "kept": "all", "perplexity": round(payload["full_perplexity"], 3),
                     "95% CI": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "-",
                     "past budget": round(payload.get("full_perplexity_past_budget") or float("nan"), 3)})
    return rows
