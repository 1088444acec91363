"""``sinkscope report``: result files in, one self-contained HTML page and its figure files out.

The page is a pure function of the files found under the RUN folders (see load.py). Every figure is
also written as PNG and SVG into ``<page stem>_figures/`` beside the page, for papers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SinkscopeError
from ..files import atomic_write_bytes
from . import figures_chain as chain_fig
from . import figures_effects as effect_fig
from . import figures_episodes as episode_fig
from . import figures_peers as peers_fig
from . import figures_learned_sink as learned_sink_fig
from . import figures_sink as sink_fig
from . import figures_stream as stream_fig
from .payload import MissingData
from .html import Column, Section, Slot, json_tables, page, slug, table
from .load import Results, Series, load_results
from .summary import LAYER_CONVENTION, model_name, summary_html, title as page_title
from .style import inline_svg, png_bytes, svg_text

SECTIONS = ("summary", "sink", "variance", "neurons", "disparity", "qk", "chain", "interventions", "training", "stream",
            "files")
MAX_NEURON_ROWS = 12  # the chain's super neurons (a handful per episode) and the spike finder's strongest others


@dataclass
class Report:
    """What ``build_report`` wrote."""

    path: Path
    figures_dir: Path
    figures: list[str] = field(default_factory=list)  # figure ids drawn
    missing: dict[str, str] = field(default_factory=dict)  # figure id -> why it is omitted
    sections: tuple[str, ...] = SECTIONS


class _Drawer:
    """Turns figure functions into Slots, writing each drawn figure's files once."""

    def __init__(self, figures_dir: Path, report: Report):
        self.dir, self.report = figures_dir, report

    def slot(self, kind: str, key: str, caption: str, draw) -> Slot:
        figure_id = f"{kind}--{slug(key)}" if key else kind
        try:
            fig = draw()
        except MissingData as why:
            self.report.missing[figure_id] = str(why)
            return Slot(figure_id, kind, caption, missing=str(why))
        svg = svg_text(fig)
        fig.set_layout_engine("none")  # keep the layout computed for the SVG: the PNG needs no second pass
        _write(self.dir / f"{figure_id}.svg", svg.encode())
        _write(self.dir / f"{figure_id}.png", png_bytes(fig))
        self.report.figures.append(figure_id)
        return Slot(figure_id, kind, caption, svg=inline_svg(svg, figure_id), link_dir=self.dir.name)


def build_report(runs: list[str | Path], output: str | Path = "report.html", *, title: str | None = None) -> Report:
    """Read the result files under ``runs`` and write the HTML page ``output`` plus its figure files.

    Raises SinkscopeError when a folder holds no result files or a file has an incompatible schema.
    """
    results = load_results(runs)
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise SinkscopeError(f"-o {output}: the report is an HTML file; give a name ending in .html")
    figures_dir = output.with_name(output.stem + "_figures")
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = Report(path=output, figures_dir=figures_dir)
    draw = _Drawer(figures_dir, report)
    sections = [_summary(results), _sink(results, draw), _variance(results, draw), _neurons(results, draw),
                _disparity(results, draw), _qk(results, draw), _chain(results, draw), _interventions(results, draw),
                _training(results, draw), _stream(results, draw), _files(results)]
    text = page(title or page_title(results), f"sinkscope report, read from {len(results.files)} result file(s) "
                f"under {', '.join(str(r) for r in results.runs)}", sections)
    _write(output, text.encode("utf-8"))
    drawn = {f"{figure_id}.{ext}" for figure_id in report.figures for ext in ("svg", "png")}
    for stale in [*figures_dir.glob("*.svg"), *figures_dir.glob("*.png")]:  # from an earlier report of other runs
        if stale.name not in drawn:
            stale.unlink()
    return report


def _write(path: Path, data: bytes) -> None:
    """Atomic write, readable by everyone (a page is meant to be opened and served)."""
    atomic_write_bytes(path, data)
    path.chmod(0o644)


def _columns(results: Results, fill) -> list[Column]:
    """One column per series, filled by ``fill(series) -> list of parts`` (a column with nothing drawn is left out)."""
    return [Column(s.label + (f" ({s.variant})" if s.variant and s.variant not in s.label else ""), s.colour,
                   fill(s)) for s in results.series]


def _summary(results: Results) -> Section:
    """Per model: its findings in a few sentences, its model and data provenance; then the layer index, once."""
    convention = f'<p class="convention" id="layer-convention"><b>Layer index.</b> {html.escape(LAYER_CONVENTION)}</p>'
    return Section("summary", "Findings", "", [summary_html(results), convention])


def _sink(results: Results, draw: _Drawer) -> Section:
    entries = [{"index": i, "label": s.label, "colour": s.colour, "natural": s.natural and s.natural.payload,
                "random": s.random and s.random.payload} for i, s in enumerate(results.series)]
    parts = [draw.slot("sink-rate", "", "sink score by layer and sink rate, all runs", lambda: sink_fig.sink_rate(entries))]
    parts.append(_columns(results, lambda s: [draw.slot(
        "sink-heatmap", s.label, "sink score per layer and head (natural text when probed)",
        lambda: sink_fig.sink_heatmap(s.probe.payload if s.probe else None, s.label))]))
    if any(s.probe and (s.probe.payload.get("model") or {}).get("learned_sink") for s in results.series):
        parts.append(_columns(results, lambda s: [draw.slot(
            "learned-sink", s.label, "attention to the first token beside the share taken by the learned sink logit",
            lambda: learned_sink_fig.learned_sink_heatmaps(s.probe.payload if s.probe else None, s.label))]))
        rows = [{"model": s.label, "learned sink share (%)": 100 * _mean(s.probe.payload["learned_sink_mass"]),
                 "verdict": s.probe.payload.get("learned_sink_verdict")}
                for s in results.series if s.probe and (s.probe.payload.get("model") or {}).get("learned_sink")]
        parts.append(table(rows, "learned-sink-table"))
    return Section("sink", "Where the sink is", "Sink score: the attention queries give to the first token, "
                   "averaged over query positions (per head) and heads (per layer). Sink rate (Gu et al. 2025): "
                   "the share of heads whose mean attention to token 0 exceeds eps.", parts)


def _mean(grid: list[list[float]]) -> float:
    values = [v for row in grid for v in row]
    return sum(values) / len(values)


def _variance(results: Results, draw: _Drawer) -> Section:
    def fill(s: Series):
        tables = {key: p.table("chain_variance_by_position") for key, p in (("natural", s.natural), ("random", s.random))
                  if p is not None}
        return [draw.slot("variance", s.label, "std of the o_proj input by position; solid natural text, dashed "
                          "random tokens, dotted the fitted s/sqrt(t+1); R2 'no fit': s/sqrt(t+1) fits worse than a "
                          "constant (R2 < 0), so no curve is drawn; R2 'BOS': position 0 holds the same BOS "
                          "token in every sample, so its std over samples is 0 by construction",
                          lambda: chain_fig.variance_by_position(s.natural and s.natural.payload,
                                                                 s.random and s.random.payload, tables, s.label,
                                                                 s.colour))]
    return Section("variance", "C1 variance discrepancy", "The first token's attention output is its own value "
                   "(weight 1); later outputs average t + 1 values, so their spread falls like s / sqrt(t + 1).",
                   [_columns(results, fill)])


def expert_neuron_rows(probe: dict) -> list[dict]:
    """The expert finder's strongest neurons as table rows, each with the router's weights for its expert."""
    return [{"layer": c["layer"], "expert": c["expert"], "neuron": c["neuron"], "sink |a|": c["sink_abs_mean"],
             "other |a| mean": c["other_abs_mean"], "router weight sink": c["router_weight_sink"],
             "router weight other": c["router_weight_other"],
             "top dims": ", ".join(str(d["dim"]) for d in c["down_column"]["dims"][:3])}
            for c in ((probe.get("expert_neurons") or {}).get("candidates") or [])[:8]]


def _neurons(results: Results, draw: _Drawer) -> Section:
    def fill(s: Series):
        probe = s.probe
        rows = chain_fig.neuron_rows(probe.payload) if probe else []
        shown = [{"layer": r["layer"], "neuron": r["index"], "found by": _found_by(r),
                  "wrote or erased": "; ".join(r["roles"]) or None, "sink |a|": r.get("sink_abs_mean"),
                  "other |a| mean": r.get("other_abs_mean"), "persistence": r.get("persistence"),
                  "kurtosis": (r.get("down_column") or {}).get("kurtosis"),
                  "top dims": ", ".join(str(d["dim"]) for d in (r.get("down_column") or {}).get("dims", [])[:3]),
                  "weight outlier": r.get("weight_outlier")} for r in rows[:MAX_NEURON_ROWS]]
        parts = [table(shown, f"neuron-table--{slug(s.label)}")] if shown else []
        parts.append(_super_weight_line(probe.payload if probe else {}))
        experts = expert_neuron_rows(probe.payload) if probe else []
        if experts:  # a mixture of experts: the finder inside experts, with the router beside each neuron
            parts.append(table(experts, f"expert-neuron-table--{slug(s.label)}"))
        parts.append(draw.slot("super-neurons", s.label, "down-projection column and selectivity by position",
                               lambda: chain_fig.super_neurons(probe.payload if probe else None,
                                                               probe.table("chain_neuron_selectivity") if probe else None,
                                                               s.label, s.colour)))
        return parts
    return Section("neurons", "C2 super neurons", "FFN neurons that fire at the first token; their "
                   "down-projection column writes one or two hidden dims (channel-sparse). Two ways find them. The "
                   "attribution names the neurons that wrote each massive dim's rise (the chain's super neurons, "
                   "listed first) and the largest erasers of each fall. The spike finder names those whose "
                   "first-token |activation| is at least spike_token_ratio times their mean on the later tokens and "
                   "spike_channel_ratio times the layer's other neurons, in at least spike_persistence of the "
                   "sequences (persistence: the share that do). A writer that also fires on later tokens is found "
                   "by the attribution alone.", [_columns(results, fill)])


def _found_by(row: dict) -> str:
    return " + ".join(name for name, found in (("attribution", row["roles"]), ("spike finder", row["spike_finder"]))
                      if found)


def _super_weight_line(probe: dict) -> str:
    """Yu et al.'s super weights beside the neurons: the coordinates their procedure found, and whether the
    published ones for this model were found again."""
    found = ", ".join(str(tuple(c)) for c in (probe.get("yu_super_weights") or {}).get("coordinates", []))
    published = (probe.get("published_super_weights") or {}).get("matches")
    if not found and published is None:
        return ""
    label = html.escape("super weights (Yu's procedure)")
    return (f"<p>{label}: {html.escape(found or 'none')}"
            + (f"; published super weights found: {html.escape(str(published))}" if published is not None else "")
            + "</p>")


def _disparity(results: Results, draw: _Drawer) -> Section:
    def fill(s: Series):
        probe = s.probe
        return [draw.slot("dom-ratio", s.label, "DomRatio by layer input, first token vs other tokens",
                          lambda: sink_fig.dom_ratio(probe.payload if probe else None, s.label, s.colour)),
                draw.slot("massive", s.label, "massive activations: hidden-state norm by layer and position",
                          lambda: sink_fig.massive_activations(probe.payload if probe else None,
                                                               probe.table("hidden_by_position") if probe else None,
                                                               s.label, s.colour)),
                draw.slot("layer-magnitudes", s.label, "Sun et al.'s layer-wise view: top-1/2/3 and median |x| of "
                          "each block output, mean over sequences (bands: +/- 1 std)",
                          lambda: peers_fig.layer_magnitudes(probe.payload if probe else None, s.label, s.colour))]
    return Section("disparity", "C3 dimension disparity and massive activations", "DomRatio(h) = max_j |h_j| / "
                   "mean_j |h_j|. After the super neuron, the first token's residual stream is dominated by one dim "
                   "(Sun et al. 2024: massive activations, |h| > 100 and 1000x the median).", [_columns(results, fill)])


def _qk(results: Results, draw: _Drawer) -> Section:
    def fill(s: Series):
        probe = s.probe
        return [draw.slot("qk-locking", s.label, "QK locking per layer and head",
                          lambda: chain_fig.qk_locking(probe.payload if probe else None,
                                                       probe.table("chain_qk") if probe else None, s.label))]
    return Section("qk", "QK locking", "After RMSNorm the first token's key is nearly one fixed direction; heads "
                   "whose queries align with it give it positive logits for nearly every query.",
                   [_columns(results, fill)])


def _chain(results: Results, draw: _Drawer) -> Section:
    def fill(s: Series):
        probe = s.probe
        return [draw.slot("chain", s.label, "the chain with the coordinates found",
                          lambda: chain_fig.chain_diagram(probe.payload if probe else None, s.label, s.colour,
                                                          s.random.payload if s.random else None)),
                draw.slot("episodes", s.label, "each massive dim at the first token by layer input, where it rises "
                          "and falls, beside the sink score",
                          lambda: episode_fig.episodes_figure(probe.payload if probe else None, s.label))]
    return Section("chain", "The chain", "variance discrepancy -> super neuron -> dimension disparity -> QK locking "
                   "-> sink, each box with what the probe found (dashed: not found).", [_columns(results, fill)])


def _interventions(results: Results, draw: _Drawer) -> Section:
    def fill(s: Series):
        out = []
        for kind, caption, fn in (
                ("amplify", "dose-response with 95 % CIs and the norm-only control", effect_fig.amplify_dose_response),
                ("isolate", "sink score of the isolated token, before and after", effect_fig.before_after),
                ("ablate", "ablating the super neuron: sink score and DomRatio before and after",
                 effect_fig.before_after),
                ("massive", "Sun et al.'s reset of the massive activations to zero and to their mean",
                 peers_fig.massive_reset)):
            payload = s.interventions.get(kind)
            figure = "massive-reset" if kind == "massive" else kind  # "massive" names the disparity figure
            out.append(draw.slot(figure, s.label, caption,
                                 lambda payload=payload, fn=fn, kind=kind: fn(_need_file(payload, kind), s.label, s.colour)))
        return out
    return Section("interventions", "Interventions", "Isolate: the target attends only to itself. Amplify: "
                   "o -> mu + lambda (o - mu) at the target in the layers before the observed one; control o -> "
                   "lambda o. Ablate: zero the super neuron. Massive (Sun et al. 2024): set the massive "
                   "activations to zero or to their mean.", [_columns(results, fill)])


def _need_file(payload: dict | None, kind: str) -> dict:
    if payload is None:
        raise MissingData(f"no intervene.json of kind {kind}")
    return payload


def _training(results: Results, draw: _Drawer) -> Section:
    runs = [{"label": run.label, "colour": run.colour, "variant": run.variant, "summary": run.summary,
             "metrics": run.metrics, "telemetry": run.telemetry} for run in results.training]
    parts = [draw.slot("training", "", "loss and sink telemetry against step, all runs",
                       lambda: effect_fig.training_curves(runs))]
    rows = effect_fig.compare_rows(runs)
    if rows:
        parts.append(table(rows, "compare-table"))
    for path, payload in results.compare:
        parts.append(f"<p><b>compare.json</b> <code>{html.escape(str(path))}</code></p>"
                     + json_tables(payload, f"compare-{slug(str(path.parent.name))}"))
    return Section("training", "Training", "Loss and sink telemetry of training runs (metrics.jsonl, "
                   "telemetry.jsonl, run.json) and the compare table. Telemetry and validation loss are measured on "
                   "each training run's own fixed held-out batch, not on the probe's data.", parts)


def _stream(results: Results, draw: _Drawer) -> Section:
    parts = []
    for series in results.series:
        for path, payload in series.stream:
            key = f"{path.parent.name}-{model_name(series)}"
            parts.append(draw.slot("stream", key, "perplexity against tokens, one line per cache policy (solid: original "
                                   "positions, dash-dot: cache positions; black dotted: full attention)",
                                   lambda p=payload, lab=model_name(series): stream_fig.stream_perplexity(p, lab)))
            parts.append(table(stream_fig.policy_rows(payload), f"stream-table-{slug(key)}"))
    return Section("stream", "KV-cache policies", "sinkscope stream: perplexity under a KV budget when the cache "
                   "keeps the first tokens, only a recent window, or the sinks sinkscope discovered (stream.json).",
                   parts)


def _files(results: Results) -> Section:
    rows = []
    for path in results.files:
        prov = results.provenance.get(path) or {}
        rows.append({"file": str(path), "model": prov.get("model"), "git": prov.get("git_sha"),
                     "sinkscope": (prov.get("versions") or {}).get("sinkscope"), "seed": prov.get("seed"),
                     "settings hash": prov.get("config_hash"), "model config hash": prov.get("model_config_hash")})
    return Section("files", "Result files", "Every file this page was drawn from, with its provenance (training "
                   "logs carry theirs in run.json). The settings hash covers the command's settings only, so runs "
                   "of different models with the same settings share it; the model config hash tells the models "
                   "apart.", [table(rows, "files-table", ["file", "model", "git", "sinkscope", "seed", "settings hash",
                                                        "model config hash"])])
