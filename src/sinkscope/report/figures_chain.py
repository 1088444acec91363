"""Figures of the causal chain (method.md sections 2-4): variance, super neurons, QK locking, diagram.

Inputs are probe.json payloads and the Parquet tables beside them (column -> values dicts).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .payload import MissingData, finite, need
from .story import NAMED_PER_EPISODE
from .style import (
    FIT_COLOUR,
    HIGHLIGHT,
    LAYER_AXIS,
    WIDE_WIDTH,
    NATURAL_STYLE,
    NEUTRAL,
    RANDOM_STYLE,
    integer_axis,
    new_figure,
    tag,
)


def layers_around(onset: int | None, n_layers: int, fallback: list[float] | None = None) -> list[int]:
    """The onset layer and its neighbours (or, with no onset, around the highest-scoring layer)."""
    centre = onset
    if centre is None and fallback:
        centre = int(np.nanargmax(finite(fallback)))
    if centre is None:
        centre = min(1, n_layers - 1)
    return [k for k in (centre - 1, centre, centre + 1) if 0 <= k < n_layers]


def _by_layer(table: dict, column: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [i for i, k in enumerate(table["layer"]) if k == layer]
    pos = np.array([table["position"][i] for i in rows])
    val = finite([table[column][i] for i in rows])
    order = np.argsort(pos)
    return pos[order], val[order]


def variance_by_position(natural: dict | None, random: dict | None, tables: dict, label: str, colour: str,
                         max_positions: int = 32):
    """Std of the o_proj input by position at the layers with the largest first/rest discrepancy, with the
    fitted s / sqrt(t + 1) where it fits (R2 >= 0; otherwise the panel says "no fit").

    tables: {"natural": chain_variance_by_position table | None, "random": ... }. Top row: std over
    samples (method.md section 2, the paper's measure; undefined at position 0 when it is the same BOS
    token in every sample, which the panel says); bottom row: std over hidden dims per token.
    """
    runs = [(key, p, tables.get(key)) for key, p in (("natural", natural), ("random", random)) if p is not None]
    runs = [(key, p, table) for key, p, table in runs if table and p.get("variance")]
    if not runs:
        raise MissingData("no variance section (probe --chain) with chain_variance_by_position.parquet")
    reference = runs[0][1]
    n_layers = len(reference.get("layer_sink_score") or reference["variance"]["layers"])
    layers = discrepancy_layers(runs) or layers_around(reference.get("onset_layer"), n_layers,
                                                       reference.get("layer_sink_score"))
    fig, axes = new_figure(2, len(layers), height=5.2, sharex=True)
    for col, layer in enumerate(layers):
        for row, (column, summary_key, what) in enumerate((("std_across_samples", "across_samples", "over samples"),
                                                           ("std_across_dims", "across_dims", "over dims"))):
            ax = axes[row, col]
            r2s = []
            for key, probe, table in runs:
                style = RANDOM_STYLE if key == "random" else NATURAL_STYLE
                pos, val = _by_layer(table, column, layer)
                keep = pos < max_positions
                line, = ax.plot(pos[keep], val[keep], style, color=colour, marker=".", markersize=3,
                                label="random tokens" if key == "random" else "natural text")
                tag(line, f"std-{column}-{layer}-{key}")
                fit = _fit(probe, layer, summary_key)
                constant = row == 0 and ((probe["variance"].get("first_position") or {}).get("same_token_every_sample"))
                r2 = (fit or {}).get("r2")
                if constant:  # the same BOS token in every sample: std 0 by construction
                    r2s.append("BOS")
                elif r2 is None or not math.isfinite(r2) or r2 < 0:
                    r2s.append("no fit")
                elif math.isfinite(fit.get("s") or math.nan):
                    t = np.arange(0, int(pos[keep].max()) + 1 if keep.any() else max_positions)
                    fitted, = ax.plot(t, fit["s"] / np.sqrt(t + 1), ":", color=FIT_COLOUR, linewidth=1.2,
                                      label="fit s/sqrt(t+1)" if key == runs[0][0] else None)
                    tag(fitted, f"fit-{column}-{layer}-{key}")
                    r2s.append(f"{r2:.3f}")
            if row == 0:
                ax.set_title(f"layer {layer}")
            if r2s:  # inside the axes, so neighbouring panels' texts never meet
                ax.text(0.97, 0.95, "R2 " + " / ".join(r2s), transform=ax.transAxes, ha="right", va="top",
                        wrap=True, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
            if row == 1:
                ax.set_xlabel("token position t")
            if col == 0:
                ax.set_ylabel(f"std {what}\n(o_proj input)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3)
    fig.suptitle(f"{label}: std of the attention output by position" + (" (R2: natural / random)" if len(runs) > 1
                                                                           else ""))
    return fig


def discrepancy_layers(runs, count: int = 3) -> list[int]:
    """The layers whose first token's std across samples most exceeds the rest's, from the first run where
    that std is defined (position 0 not the same token in every sample); [] if none is."""
    for _, probe, _ in runs:
        variance = probe["variance"]
        if (variance.get("first_position") or {}).get("same_token_every_sample"):
            continue
        ratios = [(row["across_samples"].get("first_rest_ratio"), row["layer"]) for row in variance["layers"]]
        ratios = [(r, layer) for r, layer in ratios if r is not None and math.isfinite(r)]
        return sorted(layer for _, layer in sorted(ratios, reverse=True)[:count])
    return []


def _fit(probe: dict, layer: int, key: str) -> dict | None:
    for entry in (probe.get("variance") or {}).get("layers", []):
        if entry.get("layer") == layer:
            return (entry.get(key) or {}).get("fit")
    return None


def neuron_rows(probe: dict) -> list[dict]:
    """One row per neuron the page names: the chain's super neurons (each episode's writers), the erasers the
    headline names, then the spike finder's other candidates, strongest first.

    Each row says how it was found and what it did (``roles``): a writer that also fires on later tokens fails
    the spike finder (SmolLM2's onset writers in layer 2), and the table must still name it as the chain does.
    """
    section = probe.get("super_neurons") or {}
    profiles = {(n["layer"], n["index"]): n for n in (section.get("attributed") or []) + (section.get("candidates") or [])}
    finder = {(n["layer"], n["index"]) for n in section.get("candidates") or []}
    roles: dict[tuple[int, int], list[str]] = {}
    writer_rank: dict[tuple[int, int], int] = {}  # 0 for the largest writer of an episode's rise, 1 for the next
    for episode in (probe.get("chain") or {}).get("episodes") or []:
        episode_name = f"dim {episode['dim']} (inputs {episode['start']}-{episode['end']})"
        named = [("writes", "rise", w) for w in (episode.get("rise") or {}).get("writers") or []]
        named += [("erases", "fall", w) for w in ((episode.get("fall") or {}).get("erasers") or [])[:NAMED_PER_EPISODE]]
        neurons = [(verb, part, w) for verb, part, w in named if w["kind"] == "neuron" and w.get("expert") is None]
        for rank, (verb, part, w) in enumerate(neurons):
            key = (w["layer"], w["index"])
            roles.setdefault(key, []).append(f"{verb} {w['share']:.0%} of the {part} of {episode_name}")
            if verb == "writes":
                writer_rank[key] = min(rank, writer_rank.get(key, rank))
    rows = [{**profiles.get(key, {"layer": key[0], "index": key[1]}), "roles": told, "writer_rank": writer_rank.get(key),
             "spike_finder": key in finder} for key, told in roles.items()]
    rows += sorted(({**n, "roles": [], "writer_rank": None, "spike_finder": True} for key, n in profiles.items()
                    if key in finder and key not in roles), key=lambda r: -(r.get("sink_abs_mean") or 0))
    return rows


def super_neurons(probe: dict, selectivity: dict | None, label: str, colour: str, max_neurons: int = 3):
    """Each super neuron's down-projection column (top dims by energy share, massive dims in red)
    and its selectivity by position (cos(x, w_gate) and activation)."""
    if probe is None or probe.get("super_neurons") is None:
        raise MissingData("no super_neurons section (probe --chain)")
    drawable = [r for r in neuron_rows(probe) if r.get("down_column")]  # every episode's largest writer comes first
    rows = sorted(drawable, key=lambda r: r["writer_rank"] if r["writer_rank"] is not None else math.inf)[:max_neurons]
    if not rows:
        raise MissingData("no neuron spikes at the first token: no super-neuron candidate")
    massive = set((probe.get("disparity") or {}).get("massive_dims") or [])
    fig, axes = new_figure(len(rows), 2, height=2.6 * len(rows) + 0.9)
    legend = []
    for r, n in enumerate(rows):
        ax = axes[r, 0]
        dims = (n.get("down_column") or {}).get("dims") or []
        x = np.arange(len(dims))
        shares = [d.get("share", 0.0) for d in dims]
        bar_colours = [HIGHLIGHT if d.get("dim") in massive else NEUTRAL for d in dims]
        bars = ax.bar(x, shares, color=bar_colours)
        tag(bars, f"down-column-{r}")
        ax.set_xticks(x, [str(d.get("dim")) for d in dims])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("output dim (top 5 by energy; red = massive)")
        ax.set_ylabel("energy share w_d^2 / sum w^2")
        kurt = (n.get("down_column") or {}).get("kurtosis")
        ax.set_title(f"layer {n['layer']} neuron {n['index']}: down_proj column"
                     + (f"\n(excess kurtosis {kurt:.0f})" if kurt is not None else ""))
        sel_ax = axes[r, 1]
        trace = _selectivity_trace(selectivity, n["layer"], n["index"])
        if trace is None:
            sel_ax.set_axis_off()
            sel_ax.text(0.5, 0.5, "selectivity not traced for this neuron", ha="center", va="center",
                        color=NEUTRAL, transform=sel_ax.transAxes)
            continue
        pos, cos, act = trace
        line, = sel_ax.plot(pos, cos, "-o", color=colour, markersize=3, label="cos(x, w_gate[n])")
        tag(line, f"selectivity-cos-{r}")
        sel_ax.set_ylabel("cosine", color=colour)
        sel_ax.set_xlabel("token position")
        twin = sel_ax.twinx()
        line, = twin.plot(pos, act, "-s", color=NEUTRAL, markersize=3, label="activation")
        tag(line, f"selectivity-act-{r}")
        twin.set_ylabel("activation (down_proj input)")
        twin.spines["right"].set_visible(True)
        sel_ax.set_title("selectivity by position" + (f"\n(activation at token 0: {act[0]:.3g})" if len(act) else ""))
        legend = [sel_ax.lines[0], twin.lines[0]]
    if legend:  # one legend under the figure: inside a panel it covered the first token's spike
        fig.legend(handles=legend, loc="outside lower center", ncol=2)
    fig.suptitle(f"{label}: super neurons")
    return fig


def _selectivity_trace(table: dict | None, layer: int, index: int):
    if not table or not table.get("position"):
        return None
    rows = [i for i in range(len(table["position"])) if table["layer"][i] == layer and table["index"][i] == index]
    if not rows:
        return None
    rows.sort(key=lambda i: table["position"][i])
    return (np.array([table["position"][i] for i in rows]), finite([table["cos_gate"][i] for i in rows]),
            finite([table["activation"][i] for i in rows]))


def qk_locking(probe: dict, qk_table: dict | None, label: str):
    """Per layer and head: alignment of the top query direction with W_K's massive-dim row, and the
    share of queries with q . k0 > 0; locked heads dotted."""
    section, = need(probe, "qk_locking")
    if qk_table and qk_table.get("layer"):
        n_layers = max(qk_table["layer"]) + 1
        n_heads = max(qk_table["head"]) + 1
        align = np.full((n_layers, n_heads), np.nan)
        share = np.full((n_layers, n_heads), np.nan)
        for i in range(len(qk_table["layer"])):
            layer, head = qk_table["layer"][i], qk_table["head"][i]
            align[layer, head] = math.nan if qk_table["alignment"][i] is None else qk_table["alignment"][i]
            share[layer, head] = qk_table["positive_share"][i]
    elif section.get("layers"):
        rows = section["layers"]
        align = np.array([finite(r["alignment"]) for r in rows])
        share = np.array([finite(r["positive_share"]) for r in rows])
        n_layers = rows[-1]["layer"] + 1
        pad = n_layers - len(rows)
        align = np.vstack([np.full((pad, align.shape[1]), np.nan), align])
        share = np.vstack([np.full((pad, share.shape[1]), np.nan), share])
    else:
        raise MissingData(section.get("note") or "no QK-locking measurements")
    n_layers, n_heads = share.shape
    fig, axes = new_figure(1, 2, height=max(3.0, 0.16 * n_layers + 1.8), width=WIDE_WIDTH)
    panels = ((axes[0, 0], align, "cos(top query direction,\nW_K row of the massive dim)", -1.0, "coolwarm", "qk-align"),
              (axes[0, 1], share, "share of queries\nwith q . k0 > 0", 0.0, "viridis", "qk-share"))
    for ax, grid, name, vmin, cmap, gid in panels:
        image = ax.imshow(grid, aspect="auto", origin="lower", vmin=vmin, vmax=1.0, cmap=cmap, interpolation="nearest")
        tag(image, gid)
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)  # the panel title names the quantity
        ax.set_xlabel("head")
        ax.set_ylabel(LAYER_AXIS if gid == "qk-align" else "")
        integer_axis(ax.xaxis)
        integer_axis(ax.yaxis)
        ax.set_title(name)
        for head in section.get("locked_heads") or []:
            ax.plot(head["head"], head["layer"], "o", color=HIGHLIGHT, markersize=4, markeredgecolor="white")
    if not np.isfinite(align).any():
        axes[0, 0].text(0.5, 0.5, "no massive dim: alignment undefined", ha="center", va="center",
                        color=NEUTRAL, transform=axes[0, 0].transAxes)
    locked = len(section.get("locked_heads") or [])
    criteria = probe.get("criteria") or {}
    share_min, z_min = criteria.get("lock_positive_share"), criteria.get("lock_alignment_z")
    rule = f": share >= {share_min:g} and alignment z >= {z_min:g}" if share_min is not None and z_min is not None \
        else ""
    fig.suptitle(f"{label}: QK locking, {locked} locked head{'s' if locked != 1 else ''} (red dots{rule})")
    return fig


def c1_reading(natural: dict | None, random: dict | None) -> dict | None:
    """C1 where it is defined, as the variance figure draws it: the first probe (random tokens first, the paper's
    setting) whose position 0 varies across samples; its layer of largest first/rest std ratio across samples.
    {"data": "random tokens" | "natural text", "layer", "ratio", "r2"} or None."""
    for name, probe in (("random tokens", random), ("natural text", natural)):
        variance = (probe or {}).get("variance") or {}
        if not variance or (variance.get("first_position") or {}).get("same_token_every_sample"):
            continue
        rows = [(e["across_samples"].get("first_rest_ratio"), e) for e in variance.get("layers", [])]
        rows = [(r, e) for r, e in rows if r is not None and math.isfinite(r)]
        if rows:
            ratio, entry = max(rows, key=lambda row: row[0])
            return {"data": name, "layer": entry["layer"], "ratio": ratio,
                    "r2": (entry["across_samples"].get("fit") or {}).get("r2")}
    return None


def chain_boxes(probe: dict, random: dict | None = None) -> list[dict]:
    """The five links of the chain as text boxes: {"id", "title", "lines", "found"}."""
    chain, = need(probe, "chain")
    disparity = probe.get("disparity") or {}
    qk = probe.get("qk_locking") or {}
    onset = chain.get("onset_layer")
    c1 = c1_reading(probe if not probe.get("data", {}).get("source") == "random-tokens" else None,
                    random or (probe if (probe.get("data") or {}).get("source") == "random-tokens" else None))
    neurons = chain.get("super_neurons") or []
    jump = chain.get("disparity_layer_input")
    dims = chain.get("massive_dims") or []
    locked = qk.get("locked_heads") or []
    scores = probe.get("layer_sink_score") or []
    return [
        {"id": "chain-c1", "title": "C1 variance discrepancy", "found": c1 is not None and c1["ratio"] > 1.0,
         "lines": [f"first/rest std over samples {c1['ratio']:.2f}x at layer {c1['layer']} (o_proj input, "
                   f"{c1['data']})" if c1 else "not measured (position 0 is the same token in every sample)"]},
        {"id": "chain-c2", "title": "C2 super neuron", "found": bool(neurons),
         "lines": ["; ".join(f"layer {n['layer']} neuron {n['index']} -> dim {', '.join(map(str, n.get('dims') or []))}"
                             for n in neurons[:2]) or "none found"]},
        {"id": "chain-c3", "title": "C3 dimension disparity", "found": jump is not None,
         "lines": ([f"dim {', '.join(map(str, dims[:3]))} dominates from layer input {jump}"
                    + (f", DomRatio {disparity['sink_dom_ratio'][jump]:.0f}"
                       if disparity.get("sink_dom_ratio") else "")]
                   if jump is not None else ["no disparity"])},
        {"id": "chain-qk", "title": "QK locking", "found": bool(locked),
         "lines": [f"{len(locked)} locked head(s)" + (f" from layer {qk.get('from_layer')}" if locked else "")]},
        {"id": "chain-sink", "title": "attention sink", "found": onset is not None,
         "lines": ([f"onset layer {onset}" + (f", head-mean score {scores[onset]:.2f}" if onset < len(scores) else "")]
                   if onset is not None else ["no onset"])},
    ]


BOX_CHARS = 46  # characters per line in a chain box: the facts wrap inside the box, never past it
FOUND_FILL, FOUND_EDGE = "#EEF3F8", "#222222"  # found links; not found: white, dashed NEUTRAL (no run colour here)


def chain_diagram(probe: dict, label: str, colour: str, random: dict | None = None):
    """The chain C1 -> C2 -> C3 -> QK -> sink, top to bottom, each box with the coordinates found
    (a dashed box when not found; the run's colour is not used, so a grey run still reads)."""
    boxes = chain_boxes(probe, random)
    chain = probe["chain"]
    fig, axes = new_figure(height=4.8)
    ax = axes[0, 0]
    n = len(boxes)
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.9, n)
    ax.set_axis_off()
    for i, box in enumerate(boxes):
        y = n - 1 - i  # first link on top
        found = box["found"]
        patch = FancyBboxPatch((0.2, y + 0.08), 9.6, 0.78, boxstyle="round,pad=0.04",
                               facecolor=FOUND_FILL if found else "white", edgecolor=FOUND_EDGE if found else NEUTRAL,
                               linewidth=1.6 if found else 1.0, linestyle="-" if found else "--")
        tag(patch, box["id"])
        ax.add_patch(patch)
        ax.text(0.45, y + 0.47, box["title"], ha="left", va="center", weight="bold",
                color="#222222" if found else NEUTRAL)
        facts = "\n".join(textwrap.wrap("; ".join(line for line in box["lines"] if line), BOX_CHARS)[:3])
        ax.text(4.0, y + 0.47, facts, ha="left", va="center", color="#222222" if found else NEUTRAL)
        if i < n - 1:
            ax.add_patch(FancyArrowPatch((1.5, y + 0.06), (1.5, y - 0.1), arrowstyle="-|>", mutation_scale=10,
                                         color="#333333"))
    verdict = "in the paper's order" if chain.get("consistent") else "not in the paper's order"
    ax.text(5, -0.45, f"links {verdict} (neuron layer < disparity layer input <= onset layer)", ha="center",
            color="#333333" if chain.get("consistent") else HIGHLIGHT)
    ax.set_title(f"{label}: the causal chain found (dashed: not found)")
    return fig
