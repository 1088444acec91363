"""The top of the page: per model its name, its story in a few sentences, and where every run's data and
weights came from, with dirty commits and differing seeds flagged."""

from __future__ import annotations

import html
from pathlib import Path

from .cite import Source
from .html import Raw, slug, table
from .load import Results, Series
from .story import (
    ablate_sentence,
    amplify_sentence,
    chain_sentence,
    isolate_sentence,
    sink_sentence,
    stream_sentence,
)

LAYER_CONVENTION = ("Layers are counted from 0: layer k is the k-th transformer block, and its attention gives the "
                    "layer's sink score. Residual-stream quantities are drawn at layer input k, the stream entering "
                    "layer k: layer input 0 is the embedding output, layer input k + 1 is block k's output, and layer "
                    "input L (L layers) enters the final norm. Every figure and sentence uses this index.")
SHA_SHOWN = 12  # hex digits of a SHA-256 shown in tables; the whole digest is the cell's tooltip


def model_name(s: Series) -> str:
    return Path(s.model).name if s.model else s.label


def title(results: Results) -> str:
    names = list(dict.fromkeys(model_name(s) for s in results.series)) or [r.label for r in results.training]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"Attention sinks in {joined}" if names else "sinkscope report"


def runs_of(s: Series) -> list[tuple[str, Source]]:
    """(what, file) for every result file of the model, in the order the story tells them."""
    runs = [(name, Source(p.path, p.payload)) for name, p in (("probe", s.natural), ("probe, random tokens", s.random))
            if p]
    runs += [(kind, Source(s.paths[kind], payload)) for kind, payload in s.interventions.items()]
    runs += [("stream", Source(path, payload)) for path, payload in s.stream]
    return runs


def headline(s: Series) -> list[str]:
    """Three to five sentences (HTML) of what this model's runs found; a run that is absent adds nothing."""
    by_kind = dict(runs_of(s))
    probe, random = by_kind.get("probe") or by_kind.get("probe, random tokens"), by_kind.get("probe, random tokens")
    sentences = []
    if probe:
        sentences.append(sink_sentence(probe, random if random is not probe else None))
        sentences.append(chain_sentence(probe))
    if "ablate" in by_kind:
        sentences.append(ablate_sentence(by_kind["ablate"]))
    made = [f(by_kind[k]) for k, f in (("isolate", isolate_sentence), ("amplify", amplify_sentence)) if k in by_kind]
    if made:
        joined = "; ".join(m.rstrip(".") for m in made if m) + "."
        sentences.append(joined[:1].upper() + joined[1:])
    if "stream" in by_kind:
        sentences.append(stream_sentence(by_kind["stream"]))
    return [x for x in sentences if x]


def _sha(digest: str | None) -> Raw | None:
    return Raw(f'<span title="{html.escape(digest)}">{html.escape(digest[:SHA_SHOWN])}</span>') if digest else None


def _commit(sha: str | None) -> Raw | None:
    """The commit's first SHA_SHOWN digits, '-dirty' kept (the flags below say what it means)."""
    if not sha:
        return None
    short = sha[:SHA_SHOWN] + ("-dirty" if sha.endswith("-dirty") else "")
    return Raw(f'<span title="{html.escape(sha)}">{html.escape(short)}</span>')


def run_rows(s: Series) -> list[dict]:
    rows = []
    for what, src in runs_of(s):
        data, prov = src.get("data") or {}, src.get("provenance") or {}
        rows.append({"run": what, "file": str(src.path), "data": data.get("source_name") or data.get("source"),
                     "data SHA-256": _sha(data.get("sha256")), "seq len": data.get("seq_len", data.get("max_len")),
                     "BOS": data.get("bos") or ((prov.get("config") or {}).get("data") or {}).get("bos"),
                     "sequences": data.get("sequences", data.get("documents")), "tokens": data.get("tokens"),
                     "seed": prov.get("seed"), "commit": _commit(prov.get("git_sha")),
                     "settings hash": prov.get("config_hash")})
    return rows


def model_line(s: Series) -> str:
    """The model as given, its hub id and revision where known, and its weights' hash (GGUF fields when present)."""
    prov = next((src.get("provenance") or {} for _, src in runs_of(s)), {})
    given = s.model or "–"
    local = Path(given).exists() or given.startswith((".", "/")) or given.count("/") != 1
    parts = [f"model as given: <code>{html.escape(given)}</code>",
             f"hub id: {html.escape('– (a local or embedded checkpoint)' if local else given)}",
             f"revision: {html.escape(str(prov.get('revision') or '–'))}",
             f"weights SHA-256: {_sha(prov.get('weights_sha256')) or '– (not recorded)'}"]
    weights = prov.get("weights") or {}
    if weights.get("format") == "gguf":
        parts.append(f"GGUF file {html.escape(str(weights.get('file')))} ({', '.join(weights.get('quantization') or [])})"
                     + (f", dequantized to {html.escape(str(prov.get('dtype')))}" if weights.get("dequantized") else ""))
    return '<p class="model">' + "; ".join(parts) + "</p>"


def flags(results: Results) -> list[str]:
    """Dirty commits and seeds that differ between the runs of one model, or between compared models."""
    out = []
    dirty = sorted({(str(p), prov["git_sha"]) for p, prov in results.provenance.items()
                    if str(prov.get("git_sha") or "").endswith("-dirty")})
    if dirty:
        commits = sorted({sha for _, sha in dirty})
        out.append(f"{len(dirty)} result file(s) were written from code with uncommitted changes (commit "
                   + ", ".join(html.escape(c) for c in commits) + "): the commit alone does not reproduce them.")
    for s in results.series:
        seeds = {src.get("provenance", "seed") for _, src in runs_of(s)} - {None}
        if len(seeds) > 1:
            listed = ", ".join(map(str, sorted(seeds)))
            out.append(f"{html.escape(model_name(s))}: its runs used different seeds ({listed}).")
    trained = {s.training.label: (s.training.summary or {}).get("provenance") or {} for s in results.series
               if s.training}
    commits = {prov.get("git_sha") for prov in trained.values()}
    if len(commits) > 1:
        out.append("The compared models were trained from different commits: " + "; ".join(
            f"{html.escape(name)} {html.escape(str(prov.get('git_sha')))}" for name, prov in trained.items()) + ".")
    return out


def summary_html(results: Results) -> str:
    parts = []
    for s in results.series:
        sentences = headline(s)
        parts.append(f'<article class="story" id="model-{slug(s.label)}" data-model="{html.escape(s.label)}">'
                     f"<h2>{html.escape(model_name(s))}</h2>"
                     + (f'<p class="headline">{" ".join(sentences)}</p>' if sentences else "")
                     + model_line(s) + table(run_rows(s), f"runs-table--{slug(s.label)}") + _training_line(s)
                     + "</article>")
    warnings = flags(results)
    if warnings:
        parts.append('<ul class="flags">' + "".join(f"<li>{w}</li>" for w in warnings) + "</ul>")
    return "".join(parts)


def _training_line(s: Series) -> str:
    run = s.training
    if run is None or not run.summary:
        return ""
    summary = Source(run.path / "run.json", run.summary)
    return (f'<p class="training">Trained by <code>sinkscope train</code> ({html.escape(run.label)}): '
            f"{summary.num(('steps',), 'd')} steps, final validation loss {summary.num(('final_val_loss',), '.3f')} "
            f"nats per token on the training run's own held-out split (not the probe's data).</p>")

