"""One model's story: three to five sentences of findings, each number cited from its result file.

The sentences are built here from the result files' fields (never from the commands' own verdict strings),
judged by the rules of :mod:`sinkscope.words` that the commands' verdicts use too: a change within its
uncertainty reads as no change, a dose-response is monotone when each step stays within its CI (else its dips
are named), and each readout layer comes with its reason. :func:`plain` turns a sentence into terminal text
(the demo's summary prints the same sentences).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from ..words import NOT_RESOLVED, UNCHANGED, change, dose_shape, resolved
from .cite import Source, fmt

EPISODES_TOLD = 2  # the headline names the first episodes; the chain figure draws every one
NAMED_PER_EPISODE = 2  # writers (erasers) the headline names per episode; the C2 table lists the same neurons
UNIFORM = "x uniform ({} times the attention it would get if each query attended evenly to every token it sees; "


def data_words(payload: dict) -> str:
    """'16 sequences of 64 tokens of embedded prompts (BOS auto)': what a run measured on."""
    data = payload.get("data") or {}
    config = (payload.get("provenance") or {}).get("config") or {}
    name = data.get("source_name") or {"random-tokens": "random tokens", "embedded-prompts": "embedded prompts",
                                       "stdlib-heldout": "held-out Python standard-library documents"}.get(
        data.get("source"), Path(str(data.get("source") or "unrecorded data")).name)
    count = data.get("sequences", data.get("documents"))
    length = data.get("seq_len", data.get("max_len"))
    bos = data.get("bos") or (config.get("data") or {}).get("bos") or config.get("bos")
    return (f"{fmt(count, 'd')} sequences of {fmt(length, 'd')} tokens of {name}"
            + (f" (BOS {bos})" if bos else ""))


def sink_sentence(probe: Source, random: Source | None) -> str:
    sink = probe.get("sink") or {}
    peak = sink.get("peak_layer")
    if peak is None:
        return "The probe recorded no per-layer sink ratio."
    ratio = probe.num(("sink", "ratio", peak), ".1f")
    where = (f"peaks at layer {probe.num(('sink', 'peak_layer'), 'd')} with {ratio}{UNIFORM.format(ratio)}"
             f"95 % CI {probe.num(('sink', 'ratio_ci', peak, 0), '.1f')}–"
             f"{probe.num(('sink', 'ratio_ci', peak, 1), '.1f')})")
    if sink.get("present"):
        text = (f"The attention sink sits on the first token: it sets in at layer "
                f"{probe.num(('sink', 'onset_layer'), 'd')} and {where}, on {data_words(probe.payload)}.")
    else:
        text = f"No attention sink: the first token's attention {where}, below the bar, on {data_words(probe.payload)}."
    rand = (random.get("sink") or {}) if random else {}
    if rand.get("peak_layer") is not None:
        k = rand["peak_layer"]
        text = text[:-1] + (f"; on {data_words(random.payload)} it peaks at layer "
                            f"{random.num(('sink', 'peak_layer'), 'd')} with "
                            f"{random.num(('sink', 'ratio', k), '.1f')}x uniform.")
    return text


def _writer(w: dict) -> str:
    layer = w.get("layer")
    kind = w.get("kind")
    if kind == "embedding":
        return "the embedding"
    if kind == "neuron":
        expert = f" (expert {w['expert']})" if w.get("expert") is not None else ""
        return f"neuron {w.get('index')} of layer {layer}'s MLP{expert}"
    return f"the {'attention' if kind == 'attention' else 'MLP'} of layer {layer}"


def chain_sentence(probe: Source) -> str | None:
    chain = probe.get("chain") or {}
    episodes = chain.get("episodes")
    if episodes:
        told = []
        for i, e in enumerate(episodes[:EPISODES_TOLD]):
            rise, fall = e.get("rise") or {}, e.get("fall")
            writers = ", ".join(_writer(w) for w in (rise.get("writers") or [])[:NAMED_PER_EPISODE]) or "no single writer"
            end = (f"until layer input {probe.num(('chain', 'episodes', i, 'end'), 'd')}, erased by "
                   + (", ".join(_writer(w) for w in (fall.get("erasers") or [])[:NAMED_PER_EPISODE])
                      or "no single eraser")
                   if fall else "to the final norm")
            told.append(f"dim {probe.num(('chain', 'episodes', i, 'dim'), 'd')} from layer input "
                        f"{probe.num(('chain', 'episodes', i, 'start'), 'd')} (written by {writers}; peak "
                        f"|h| {probe.num(('chain', 'episodes', i, 'peak'), '.0f')}) {end}")
        more = f" and {len(episodes) - EPISODES_TOLD} more" if len(episodes) > EPISODES_TOLD else ""
        return (f"The first token's residual stream carries {len(episodes)} massive-dim episode"
                f"{'s' if len(episodes) != 1 else ''}: " + "; ".join(told) + more + ".")
    if not chain:
        return None
    jump = chain.get("disparity_layer_input")
    neurons = chain.get("super_neurons") or []
    if jump is None:
        text = "No hidden dim dominates the first token's residual stream"
    else:
        count = len(chain.get("massive_dims") or [])
        dims = ", ".join(probe.num(("chain", "massive_dims", i), "d") for i in range(count))
        text = (f"Dim {dims or '–'} dominates the first token's residual stream from layer input "
                f"{probe.num(('chain', 'disparity_layer_input'), 'd')} on")
    if neurons:
        text += "; " + ", ".join(f"neuron {probe.num(('chain', 'super_neurons', i, 'index'), 'd')} of layer "
                                 f"{probe.num(('chain', 'super_neurons', i, 'layer'), 'd')}"
                                 for i in range(min(len(neurons), EPISODES_TOLD))) + " write it"
    order = "in" if chain.get("consistent") else "not in"
    return text + f"; the links are {order} the paper's order (super neuron, then disparity, then onset)."


def _arrow(src: Source, before: tuple, after: tuple, spec: str) -> str:
    """'a → b', each number cited from its field."""
    return f"{src.num(before, spec)} → {src.num(after, spec)}"


def plain(sentence: str) -> str:
    """A story sentence as terminal text: the citation markup dropped, the HTML escapes undone."""
    return html.unescape(re.sub(r"<[^>]+>", "", sentence))


def _neurons_words(neurons: list) -> str:
    """[[11, 1229], [11, 1487]] -> 'neurons 1229 and 1487 of layer 11'."""
    by_layer: dict = {}
    for layer, index in neurons:
        by_layer.setdefault(layer, []).append(str(index))
    return "; ".join(f"neuron{'s' if len(ids) > 1 else ''} {' and '.join(ids)} of layer {layer}"
                     for layer, ids in by_layer.items())


def _perplexity_words(a: Source) -> str:
    if not (a.get("perplexity_before") and a.get("perplexity_after")):
        return ""
    b_ppl, a_ppl = a.get("perplexity_before", "perplexity"), a.get("perplexity_after", "perplexity")
    ci = a.get("perplexity_after", "ci")
    word = change(b_ppl, a_ppl, ci)
    note = f"; {NOT_RESOLVED}" if word != UNCHANGED and not resolved(b_ppl, ci) and ci else ""
    return (f"; it {'left perplexity unchanged' if word == UNCHANGED else word + ' perplexity'} "
            f"({_arrow(a, ('perplexity_before', 'perplexity'), ('perplexity_after', 'perplexity'), '.2f')}{note})")


def ablate_sentence(a: Source) -> str:
    """An episode's ablation is read over the layers that read the episode (where it acts); any other at the
    layer where the sink peaks before ablation."""
    rows = a.get("per_layer") or []
    if not rows:
        return ""
    what = " and ".join(x for x in (_neurons_words(a.get("neurons") or []),
                                     ("dim " + ", ".join(map(str, a.get("dims")))) if a.get("dims") else "") if x)
    episode = a.get("episode")
    if episode:
        layers = episode["layers"]
        word = change(episode["sink_score_before"], episode["sink_score_after"])
        text = (f"Ablating {what} (the writers of episode {a.num(('episode', 'index'), 'd')}, dim "
                f"{a.num(('episode', 'dim'), 'd')}: {a.num(('episode', 'ablated_share'), '.0%')} of its rise) "
                + _moved(word, f"the first token's head-mean sink score over layers {a.num(('episode', 'layers', 0), 'd')}-"
                         f"{a.num(('episode', 'layers', len(layers) - 1), 'd')} (the "
                         "layers that read the episode's inputs)") + ": "
                f"{_arrow(a, ('episode', 'sink_score_before'), ('episode', 'sink_score_after'), '.3f')}")
        if episode.get("dom_ratio_before") is not None:
            text += (f", and its DomRatio there "
                     f"{_arrow(a, ('episode', 'dom_ratio_before'), ('episode', 'dom_ratio_after'), '.1f')}")
        return text + _perplexity_words(a) + f", on {data_words(a.payload)}."
    top = max(range(len(rows)), key=lambda k: rows[k].get("sink_score_before") or 0.0)
    before, after = rows[top]["sink_score_before"], rows[top]["sink_score_after"]
    ratio_before, ci = a.get("sink_before", "ratio", top), a.get("sink_after", "ratio_ci", top)
    judged_on_ci = ratio_before is not None and bool(ci)  # the ratio's CI, where the file has one
    word = change(ratio_before, a.get("sink_after", "ratio", top), ci) if judged_on_ci else change(before, after)
    note = ("; not resolved: the x-uniform ratio before lies within the 95 % CI of the ratio after"
            if judged_on_ci and word != UNCHANGED and not resolved(ratio_before, ci) else "")
    text = (f"Ablating {what or 'nothing'} "
            + _moved(word, f"the first token's sink score at layer {a.num(('per_layer', top, 'layer'), 'd')} (read "
                     "where it peaks before ablation)") + ": "
            f"{_arrow(a, ('per_layer', top, 'sink_score_before'), ('per_layer', top, 'sink_score_after'), '.3f')}"
            f"{note}")
    return text + _perplexity_words(a) + f", on {data_words(a.payload)}."


def _moved(word: str, what: str) -> str:
    """'raised WHAT' / 'lowered WHAT' / 'left WHAT unchanged'."""
    return f"left {what} unchanged" if word == UNCHANGED else f"{word} {what}"


def isolate_sentence(i: Source) -> str:
    best = i.get("max_gain_layer")
    if best is None:
        return ""
    row = (i.get("per_layer") or [])[best]
    word = change(row["sink_score_before"], row["sink_score_after"])
    numbers = _arrow(i, ("per_layer", best, "sink_score_before"), ("per_layer", best, "sink_score_after"), ".3f")
    head = f"Isolating token {i.num(('position',), 'd')} (it attends only to itself)"
    if word == UNCHANGED:
        return (f"{head} left its sink score unchanged: {numbers} at layer {i.num(('max_gain_layer',), 'd')}, "
                f"read where the change is largest, on {data_words(i.payload)}.")
    gain = f" ({i.num(('max_gain',), '.1f')}x)" if i.get("max_gain") is not None else ""
    return (f"{head} {word} its sink score at layer {i.num(('max_gain_layer',), 'd')} (read where the change is "
            f"largest): {numbers}{gain}, on {data_words(i.payload)}.")


def amplify_sentence(a: Source) -> str:
    scores, cis, layers = a.get("sink_score") or [], a.get("sink_score_ci") or [], a.get("layers") or []
    if not scores:
        return ""
    observe = a.get("observe")
    reason = ("the first layer after the amplified ones" if layers and observe == max(layers) + 1
              else "the layer set by --observe")
    word = change(scores[0], scores[-1], cis[-1] if cis else None)
    last = len(scores) - 1
    numbers = f"{a.num(('sink_score', 0), '.3f')} → {a.num(('sink_score', last), '.3f')}"
    text = (f"amplifying token {a.num(('position',), 'd')}'s attention-output variance in layers "
            f"{', '.join(map(str, layers))} (lambda {a.num(('lambdas', 0), 'g')} → {a.num(('lambdas', last), 'g')}) ")
    if word == UNCHANGED:
        text += f"left its sink score at layer {a.num(('observe',), 'd')} ({reason}) unchanged: {numbers}"
    else:
        note = "" if not cis or resolved(scores[0], cis[-1]) else f"; {NOT_RESOLVED}"
        gain = f" ({a.num(('gain',), '.1f')}x{note})" if a.get("gain") is not None else (f" ({note[2:]})" if note else "")
        shape = dose_shape(scores, cis or None, a.get("lambdas") or [], number=lambda k: a.num(("sink_score", k), ".3f"))
        text += f"{word} its sink score at layer {a.num(('observe',), 'd')} ({reason}): {numbers}{gain}, {shape}"
    if a.get("control_sink_score"):
        text += f"; the norm-only control reached {a.num(('control_sink_score', last), '.3f')}"
    return text + f", on {data_words(a.payload)}."


def _policy_words(name: str, discovered: str) -> str:
    if name.startswith("first-"):
        count = name.removeprefix("first-")
        return "the first token" if count == "1" else f"the first {count} tokens"
    return f"the discovered sinks ({discovered})" if name == "discovered" else f"the {name} policy"


def stream_sentence(s: Source) -> str:
    """What a KV cache must keep: the policy with the lowest perplexity at the budget, against a recent window."""
    policies = s.get("policies") or []
    if not policies:
        return ""
    mode = policies[0]["positions"]  # the first positions mode the stream command ran (the table shows all)
    rows = [(i, p) for i, p in enumerate(policies) if p["positions"] == mode]
    window = next((i for i, p in rows if p["name"] == "window"), None)
    best = min((i for i, p in rows if p["name"] != "window"), key=lambda i: policies[i]["perplexity"], default=None)
    if best is None:
        return ""
    kept = [c for c in (s.get("discovered_sinks", "classes") or []) if c.get("kept")]
    tokens = ", ".join(html.escape(repr(c["token"])) for c in kept[:3]) or "none"
    text = (f"Under a KV budget of {s.num(('budget',), 'd')} tokens a cache must keep "
            f"{_policy_words(policies[best]['name'], tokens)}: perplexity "
            f"{s.num(('policies', best, 'perplexity'), '.2f')}")
    if window is not None:
        text += f" against {s.num(('policies', window, 'perplexity'), '.2f')} for a recent window alone"
    text += f" (full attention {s.num(('full_perplexity',), '.2f')})"
    dependence = next((j for j, d in enumerate(s.get("sink_dependence") or []) if d.get("positions") == mode), None)
    if dependence is not None:
        key = ("sink_dependence", dependence)
        text += (f"; StreamingLLM's dependence, the recent window's perplexity over that of keeping the best first "
                 f"tokens ({html.escape(str(s.get(*key, 'best_first_k')))}), is "
                 f"{s.num((*key, 'window_over_best_first_k'), '.2f')}x (95 % CI "
                 f"{s.num((*key, 'window_over_best_first_k_ci', 0), '.2f')}–"
                 f"{s.num((*key, 'window_over_best_first_k_ci', 1), '.2f')})")
    return text + f", on {data_words(s.payload)}."
