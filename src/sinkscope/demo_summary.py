"""The demo's summaries: what the chain found on the model, and how its twin and the structural organism
compare (:func:`chain_summary`), or the whole story on one model (:func:`model_summary`). Pure functions
of the steps' result payloads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelResults:
    """The payloads of one model's demo steps (None where a step was skipped)."""

    label: str
    natural: dict
    random: dict
    isolate: dict | None = None
    amplify: dict | None = None
    ablate: dict | None = None
    stream: dict | None = None
    note: str | None = None  # why a step was skipped


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _neurons_text(chain: dict) -> str:
    found = chain.get("super_neurons") or []
    if not found:
        return "none found"
    return "; ".join(f"layer {n['layer']} neuron {n['index']} -> dim {', '.join(map(str, n.get('dims') or []))}"
                     for n in found[:3])


def chain_summary(models: list[ModelResults], structural: ModelResults | None = None) -> list[str]:
    """Ten lines: what the demo found on the first model, and how its twin (and ``structural``'s isolation) compare."""
    main = models[0]
    p = main.natural
    chain = p.get("chain") or {}
    qk = p.get("qk_locking") or {}
    consistent = "consistent with the paper (neuron < disparity <= onset)" if chain.get("consistent") \
        else "not established"
    return [
        _header_line(models),
        _sink_line(main),
        _variance_line(main),
        f"C2 super neuron(s): {_neurons_text(chain)}",
        _disparity_line(p),
        f"QK locking: {len(qk.get('locked_heads') or [])} locked head(s); chain {consistent}",
        _isolate_line(main, structural),
        f"amplify: {main.amplify['verdict']}" if main.amplify else "amplify: not run",
        f"ablate: {main.ablate['verdict']}" if main.ablate else f"ablate: skipped, {main.note or 'not run'}",
        _twin_line(models),
    ]


def _isolate_line(main: ModelResults, structural: ModelResults | None) -> str:
    line = f"isolate: {main.isolate['verdict']}" if main.isolate else "isolate: not run"
    if structural is not None and structural.isolate:
        line += f"; {structural.label} (first-position sink by structure): {structural.isolate['verdict']}"
    return line


def _header_line(models: list[ModelResults]) -> str:
    main = models[0]
    natural, random = main.natural.get("data") or {}, main.random.get("data") or {}
    return (f"demo: {' vs '.join(m.label for m in models)}; {natural.get('sequences')} natural-text and "
            f"{random.get('sequences')} random-token sequences of {natural.get('max_len')} tokens")


def _sink_line(main: ModelResults) -> str:
    p = main.natural
    sink = p.get("sink") or {}
    peak, ratio = sink.get("peak_layer"), sink.get("ratio") or []
    if sink.get("present"):
        lo, hi = sink["ratio_ci"][peak]
        where = (f"onset at layer {sink['onset_layer']}, peak {ratio[peak]:.1f}x uniform at layer {peak} "
                 f"(CI {lo:.1f}-{hi:.1f})")
    else:
        where = "none" + (f" (peak {ratio[peak]:.1f}x uniform)" if peak is not None and ratio[peak] is not None else "")
    return (f"sink: {where}; sink rate {_float(p.get('sink_rate')):.0f} % natural, "
            f"{_float(main.random.get('sink_rate')):.0f} % random tokens")


def _variance_line(main: ModelResults) -> str:
    """C1 where it is defined: across samples on random tokens with no BOS (the paper's setting)."""
    variance = main.random.get("variance") or {}
    if (variance.get("first_position") or {}).get("same_token_every_sample"):
        return "C1 variance: not measured (position 0 holds the same token in every random-token sequence)"
    rows = [(e["across_samples"].get("first_rest_ratio"), e) for e in variance.get("layers", [])]
    rows = [(r, e) for r, e in rows if r is not None and r == r]
    if not rows:
        return "C1 variance: not measured (no chain on the random-token probe)"
    ratio, entry = max(rows, key=lambda row: row[0])
    r2 = _float((entry["across_samples"].get("fit") or {}).get("r2"))
    fit = f"fit s/sqrt(t+1): R2 {r2:.4f}" if r2 == r2 and r2 >= 0 else "s/sqrt(t+1): no fit"
    return (f"C1 variance (random tokens, no BOS): at the o_proj input of layer {entry['layer']} the first token's "
            f"std across samples is {ratio:.2f}x the rest's ({fit})")


def _disparity_line(p: dict) -> str:
    chain, disparity = p.get("chain") or {}, p.get("disparity") or {}
    jump = chain.get("disparity_layer_input")
    if jump is None:
        return "C3 disparity: none (the first token's DomRatio never stands out)"
    dims = ", ".join(map(str, chain.get("massive_dims") or [])) or "none"
    return (f"C3 disparity: first-token DomRatio {_float(disparity['sink_dom_ratio'][jump]):.1f} vs median "
            f"{_float(disparity['other_dom_ratio_median'][jump]):.1f} from layer input {jump}; massive dims {dims}")


def _twin_line(models: list[ModelResults]) -> str:
    if len(models) < 2:
        return "twin: none compared (--twin none)"
    main, twin = models[0], models[1]
    a, b = main.natural, twin.natural

    def peak(p):
        scores = [s for s in p.get("layer_sink_score") or [] if s is not None]
        return max(scores) if scores else float("nan")

    onset = b.get("onset_layer")
    return (f"{twin.label}: peak sink score {peak(b):.2f} vs {peak(a):.2f}, sink rate {b.get('sink_rate', 0):.0f} % vs "
            f"{a.get('sink_rate', 0):.0f} %, onset {'none' if onset is None else onset}, "
            f"super neurons: {_neurons_text(b.get('chain') or {})}")


MAX_EPISODES = 3  # episodes named in a summary line; probe.json holds them all


def model_summary(main: ModelResults) -> list[str]:
    """The whole story on one model: sink and onset, the chain's episodes and links, what each intervention
    did, and how much the model's perplexity under a KV budget depends on keeping its sinks.

    The sink, intervention and stream lines are the report's own headline sentences
    (:mod:`sinkscope.report.story`) as plain text, so the summary and the page say the same."""
    from pathlib import Path

    from .report.cite import Source
    from .report.story import amplify_sentence, ablate_sentence, isolate_sentence, plain, sink_sentence, stream_sentence

    p = main.natural
    chain = p.get("chain") or {}
    consistent = "consistent with the paper (neuron < disparity <= onset)" if chain.get("consistent") \
        else "not established"

    def told(what: str, payload: dict | None, sentence) -> str:
        if not payload:
            return f"{what}: {'skipped, ' + main.note if what.startswith('ablate') and main.note else 'not run'}"
        text = plain(sentence(Source(Path(what), payload)))
        return f"{what}: {text[:1].upper()}{text[1:]}"

    sink = plain(sink_sentence(Source(Path("probe"), p), Source(Path("probe-random"), main.random)))
    rates = (f" Gu et al.'s sink rate: {_float(p.get('sink_rate')):.0f} % on natural text, "
             f"{_float(main.random.get('sink_rate')):.0f} % on random tokens.")
    return [
        _header_line([main]),
        f"sink: {sink}{rates}",
        _episodes_line(chain),
        f"chain: {consistent}",
        _variance_line(main),
        f"C2 super neuron(s): {_neurons_text(chain)}",
        _disparity_line(p),
        told("isolate", main.isolate, isolate_sentence),
        told("amplify", main.amplify, amplify_sentence),
        told("ablate (--neurons auto)", main.ablate, ablate_sentence),
        told("stream", main.stream, stream_sentence),
    ]


def _writer_text(writer: dict) -> str:
    where = {"embedding": "the embedding", "attention": f"layer {writer.get('layer')} attention",
             "mlp": f"layer {writer.get('layer')} MLP"}.get(writer.get("kind"))
    if where is None:
        expert = "" if writer.get("expert") is None else f" expert {writer['expert']}"
        where = f"layer {writer.get('layer')}{expert} neuron {writer.get('index')}"
    return f"{where} ({_float(writer.get('share')):.0%})"


def _episodes_line(chain: dict) -> str:
    """The chain's episodes (a massive dim's rise, peak and fall over layer inputs) with their writers."""
    episodes = chain.get("episodes")
    if episodes is None:
        return "episodes: not in this probe.json (the chain has no episodes section)"
    if not episodes:
        return "episodes: none (no dim rises to a massive value at the first token)"
    onset = chain.get("onset_episode")
    parts = []
    for i, e in enumerate(episodes[:MAX_EPISODES]):
        writers = ", ".join(_writer_text(w) for w in ((e.get("rise") or {}).get("writers") or [])[:2]) or "unknown"
        span = f"layer inputs {e['start']}-{e['end']}" if e.get("end") is not None else f"from layer input {e['start']}"
        parts.append(f"dim {e['dim']} over {span} (peak {_float(e.get('peak')):.0f}; written by {writers})"
                     + (" [onset]" if i == onset else ""))
    more = f" and {len(episodes) - MAX_EPISODES} more" if len(episodes) > MAX_EPISODES else ""
    return f"episodes: {'; '.join(parts)}{more}"
