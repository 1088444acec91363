"""Figures of what changes the sink: interventions (intervene.json) and training (logs of train runs)."""

from __future__ import annotations

import math

import numpy as np

from .payload import MissingData, finite, need
from ..words import against, monotone_within_ci
from .style import (
    FIG_WIDTH,
    HIGHLIGHT,
    LAYER_AXIS,
    LAYER_INPUT_AXIS,
    NEUTRAL,
    WIDE_WIDTH,
    integer_axis,
    log_axis,
    log_if_wide,
    new_figure,
    tag,
)


def _band(ci: list) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) ends of a sink score's CIs for drawing. A sink score is a share of attention, never below 0;
    a normal-approximation CI can reach below it, and on a log axis that band would fall off the plot."""
    return np.maximum(finite([c[0] for c in ci]), 0.0), finite([c[1] for c in ci])


def amplify_dose_response(payload: dict, label: str, colour: str):
    """Sink score of the target token against lambda, 95 % CI bands, with the norm-only control."""
    lambdas, score, ci = need(payload, "lambdas", "sink_score", "sink_score_ci")
    lam = finite(lambdas)
    fig, axes = new_figure(height=3.3)
    ax = axes[0, 0]
    lo, hi = _band(ci)
    band = ax.fill_between(lam, lo, hi, color=colour, alpha=0.2, linewidth=0)
    tag(band, "amplify-ci")
    line, = ax.plot(lam, finite(score), "-o", color=colour, markersize=4, label="o -> mu + lambda (o - mu)")
    tag(line, "amplify-score")
    control = payload.get("control_sink_score")
    if control:
        ctrl_ci = payload.get("control_sink_score_ci") or []
        if ctrl_ci:
            band = ax.fill_between(lam, *_band(ctrl_ci), color=NEUTRAL, alpha=0.25, linewidth=0)
            tag(band, "control-ci")
        line, = ax.plot(lam, finite(control), "--s", color=NEUTRAL, markersize=4, label="control: o -> lambda o")
        tag(line, "control-score")
    ax.set_xlabel("lambda (variance amplification factor)")
    ax.set_ylabel(f"sink score of token {payload.get('position')}\nat layer {payload.get('observe')} (readout)")
    log_if_wide(ax, [*finite(score), *finite(control or []), *hi])  # the scores decide; a CI's lower end may be 0
    layers = payload.get("layers") or []
    values = list(finite(score))
    rising = bool(values) and values[-1] >= values[0]
    lams = payload.get("lambdas") or []
    shape = ("monotone within its CI" if monotone_within_ci(values, ci, rising) else
             ("dips" if rising else "rises") + " at lambda " + ", ".join(f"{lams[i]:g} → {lams[i + 1]:g}"
                                                                    for i in against(values, rising)))
    ax.set_title(f"{label}: amplify token {payload.get('position')} in layers {', '.join(map(str, layers))}\n"
                 f"read at layer {payload.get('observe')}; {shape}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return fig


def before_after(payload: dict, label: str, colour: str):
    """isolate / ablate: sink score per layer before and after (and DomRatio for ablate)."""
    kind = payload.get("kind")
    rows, = need(payload, "per_layer")
    layers = np.array([r["layer"] for r in rows])
    before = finite([r.get("sink_score_before") for r in rows])
    after = finite([r.get("sink_score_after") for r in rows])
    dom = kind == "ablate" and payload.get("dom_ratio_before") is not None
    fig, axes = new_figure(1, 2 if dom else 1, height=3.8, width=WIDE_WIDTH if dom else FIG_WIDTH)
    ax = axes[0, 0]
    width = 0.4
    # before hollow, after filled, both in the run's colour: grey keeps its one meaning (other tokens, controls)
    bars = ax.bar(layers - width / 2, before, width, facecolor="white", edgecolor=colour, linewidth=0.8,
                  label="before")
    tag(bars, f"{kind}-before")
    bars = ax.bar(layers + width / 2, after, width, color=colour, label="after")
    tag(bars, f"{kind}-after")
    ax.set_xlabel(LAYER_AXIS)
    integer_axis(ax.xaxis)
    ax.set_ylim(0, 1.05)
    if kind == "isolate":
        ax.set_ylabel(f"sink score of token {payload.get('position')}")
        original = finite([r.get("original_sink_after") for r in rows])
        if np.isfinite(original).any():
            line, = ax.plot(layers, original, ":", color=HIGHLIGHT, marker=".", label="token 0 after")
            tag(line, "isolate-original-after")
        ax.set_title(f"{label}: isolate token {payload.get('position')}\n(it attends only to itself)")
    else:
        ax.set_ylabel("sink score of token 0 (head mean)")
        what = ", ".join(f"{l}:{n}" for l, n in payload.get("neurons") or [])
        dims = ", ".join(map(str, payload.get("dims") or []))
        ax.set_title(f"{label}: ablate\n" + " + ".join(x for x in (f"neurons {what}" if what else "",
                                                                      f"dims {dims}" if dims else "") if x))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    if dom:
        ax2 = axes[0, 1]
        b, a = finite(payload["dom_ratio_before"]), finite(payload.get("dom_ratio_after") or [])
        # block k's output is layer input k + 1: the page's one residual-stream axis
        line, = ax2.plot(np.arange(1, len(b) + 1), b, "--o", color=colour, markerfacecolor="white", markersize=4,
                         label="before")
        tag(line, "ablate-dom-before")
        if len(a):
            line, = ax2.plot(np.arange(1, len(a) + 1), a, "-o", color=colour, markersize=4, label="after")
            tag(line, "ablate-dom-after")
        log_axis(ax2)
        ax2.set_xlabel(LAYER_INPUT_AXIS.split(" (")[0])
        integer_axis(ax2.xaxis)
        ax2.set_ylabel("first-token DomRatio (log)")
        ppl_b, ppl_a = payload.get("perplexity_before"), payload.get("perplexity_after")
        ppl = (f"perplexity {ppl_b['perplexity']:.2f} -> {ppl_a['perplexity']:.2f}"
               if ppl_b and ppl_a else "perplexity not measured")
        ax2.set_title(f"first-token DomRatio\n{ppl}")
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return fig


def _series(records: list[dict], key: str, reduce=None) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for r in records:
        value = r.get(key)
        if value is None or r.get("step") is None:
            continue
        if isinstance(value, list):
            value = reduce(finite(value)) if reduce is not None and len(value) else math.nan
        steps.append(r["step"])
        values.append(float(value))
    return np.array(steps), np.array(values)


TELEMETRY_PANELS = (  # key in telemetry.jsonl, reduction over layers, axis label, log scale
    ("sink_score", np.nanmax, "max over layers of sink score", False),
    ("dom_ratio", np.nanmax, "max over layers of first-token DomRatio", True),
    ("max_activation", np.nanmax, "max |activation| (all layers)", True),
    ("effective_rank", np.nanmean, "layer-mean effective rank", False),
)


def training_curves(runs: list[dict]):
    """Loss (train solid, validation dashed) and sink telemetry against step for several runs.

    runs: [{"label", "colour", "metrics": [records], "telemetry": [records]}].
    """
    runs = [r for r in runs if r.get("metrics") or r.get("telemetry")]
    if not runs:
        raise MissingData("no training log (metrics.jsonl / telemetry.jsonl)")
    fig, grid = new_figure(2, 3, height=6.0, width=11.0)
    axes = grid.ravel()
    loss_ax, legend_ax = axes[0], axes[-1]
    for i, run in enumerate(runs):
        steps, loss = _series(run.get("metrics") or [], "loss")
        if len(steps):
            line, = loss_ax.plot(steps, loss, "-", color=run["colour"], linewidth=1, label=f"{run['label']} train")
            tag(line, f"train-loss-{i}")
        steps, val = _series(run.get("metrics") or [], "val_loss")
        if len(steps):
            line, = loss_ax.plot(steps, val, "--o", color=run["colour"], markersize=3, label=f"{run['label']} val")
            tag(line, f"val-loss-{i}")
        for j, (key, reduce, name, log) in enumerate(TELEMETRY_PANELS, 1):
            steps, values = _series(run.get("telemetry") or [], key, reduce)
            if len(steps):
                line, = axes[j].plot(steps, values, "-o", color=run["colour"], markersize=3, label=run["label"])
                tag(line, f"telemetry-{key}-{i}")
    for j, (key, _, name, log) in enumerate(TELEMETRY_PANELS, 1):
        axes[j].set_xlabel("optimizer step")
        axes[j].set_ylabel(name)
        axes[j].set_title(key.replace("_", " "))
        if log:
            log_axis(axes[j])
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("cross-entropy loss (nats/token)")
    loss_ax.set_title("loss (solid train, dashed validation)")
    legend_ax.set_axis_off()
    handles, labels = loss_ax.get_legend_handles_labels()
    if not handles:  # telemetry only: name the runs from the first telemetry panel
        handles, labels = axes[1].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", title="runs")
    fig.suptitle("training: loss and sink telemetry (fixed held-out batch)")
    return fig


def compare_rows(training: list[dict]) -> list[dict]:
    """One row per training run from run.json and the last telemetry record (for the compare table)."""
    rows = []
    for run in training:
        summary = run.get("summary") or {}
        last = (run.get("telemetry") or [{}])[-1]
        metrics = run.get("metrics") or []
        val = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
        row = {"run": run["label"], "variant": run.get("variant"),
               "steps": summary.get("steps", metrics[-1]["step"] if metrics else None),
               "parameters": summary.get("parameters"),
               "final train loss": summary.get("final_train_loss", metrics[-1].get("loss") if metrics else None),
               "final val loss": summary.get("final_val_loss", val[-1] if val else None)}
        for key, reduce, name, _ in TELEMETRY_PANELS:
            values = last.get(key)
            row[name] = float(reduce(finite(values))) if values else None
        rows.append(row)
    return rows
