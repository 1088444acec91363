"""``sinkscope stream``: perplexity under a KV budget for each cache policy, and which sinks a cache should keep.

Each policy runs as one exact parallel pass per batch, in ``original`` positions (a mask) or ``cache``
positions (StreamingLLM's re-assigned positions; see :mod:`sinkscope.stream.policy`). The discovered policy
is chosen on calibration documents disjoint from the evaluated ones (:mod:`sinkscope.stream.select`):
one full-attention pass over them finds the sinks, and a class is kept only if it lowers their perplexity.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..adapters import blocks
from ..data import describe_data, read_documents, special_tokens, windows
from ..errors import SinkscopeError
from ..loading import LoadedModel, prepare_model
from ..results import SCHEMA_VERSION, provenance, write_json
from .config import POSITIONS, StreamConfig
from .discover import SinkKeyObserver, candidate_classes, class_label, describe, discover_from_observer, kept_positions
from .evaluate import full_nll, perplexity_ratio, policy_nll, summarize
from .policy import first_tokens, window_size
from .select import choose_classes

HELD_OUT_EVERY = 50  # the organisms' training split held out every 50th stdlib document (docs/training.md)


def documents(cfg: StreamConfig, loaded: LoadedModel) -> tuple[list[list[int]], list[list[int]], str]:
    """(evaluated, calibration, split): windows of exactly ``cfg.seq_len`` tokens, chosen by seed.

    ``cfg.samples`` evaluated windows, then (for the discovered policy) calibration windows
    (:meth:`StreamConfig.calibration_documents`), taken from documents no evaluated window comes from where
    there are enough (split "documents"), else from other windows of the same documents (split "windows");
    never an evaluated window.
    """
    found, source = _windows(cfg, loaded)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(found), generator=generator).tolist()
    evaluated = sorted(order[: cfg.samples])
    if not cfg.discovered:
        return [found[i] for i in evaluated], [], "none"
    used = {source[i] for i in evaluated}
    rest = order[cfg.samples:]
    others = [i for i in rest if source[i] not in used]
    wanted, least = cfg.calibration_documents()
    calibration = (others + [i for i in rest if source[i] in used])[:wanted]
    if len(calibration) < least:
        raise SinkscopeError(f"{len(found)} windows of {cfg.seq_len} tokens leave {len(calibration)} for calibration "
                             f"beside {len(evaluated)} evaluated; pass more text with --data, lower --samples or "
                             "--calibration, or pass --no-discovered")
    split = "documents" if all(source[i] not in used for i in calibration) else "windows"
    return [found[i] for i in evaluated], [found[i] for i in sorted(calibration)], split


def _windows(cfg: StreamConfig, loaded: LoadedModel) -> tuple[list[list[int]], list[int]]:
    """Every full window of the text and the index of the document it comes from."""
    if cfg.data:
        docs = read_documents(cfg.data)
    else:
        from ..train.data import split_documents, stdlib_documents

        docs = [{"text": t} for t in split_documents(stdlib_documents(), HELD_OUT_EVERY)[1]]
    tokenizer = loaded.tokenizer
    prefix, suffix = special_tokens(tokenizer, cfg.bos, getattr(loaded.model.config, "bos_token_id", None))
    found, source = [], []
    for n, doc in enumerate(docs):
        if "input_ids" in doc:
            ids, pre = [int(i) for i in doc["input_ids"]], []
        elif tokenizer is None:
            raise SinkscopeError("this model folder has no tokenizer; pass --data FILE.jsonl with input_ids")
        else:
            ids, pre = tokenizer(doc["text"], add_special_tokens=False)["input_ids"], prefix
        cut = windows(ids, cfg.seq_len, pre, suffix, full_only=True)
        found += cut
        source += [n] * len(cut)
    if not found:
        raise SinkscopeError(f"no document has {cfg.seq_len} tokens; pass longer text with --data or lower --seq-len")
    vocab = loaded.model.config.vocab_size
    if any(t < 0 or t >= vocab for w in found for t in w):
        raise SinkscopeError(f"token ids must lie in [0, {vocab}) for this model")
    return found, source


def _check(cfg: StreamConfig) -> None:
    unknown = [p for p in cfg.positions if p not in POSITIONS]
    if unknown or not cfg.positions:
        raise SinkscopeError(f"--positions takes {','.join(POSITIONS)} (comma-separated), "
                             f"got {','.join(cfg.positions)}")
    if not 2 <= cfg.budget < cfg.seq_len:
        raise SinkscopeError(f"--budget must lie in [2, {cfg.seq_len - 1}] (below --seq-len, or nothing is evicted)")
    if cfg.discovered:
        window_size(cfg.budget, cfg.sink_slots)
    for k in cfg.keep_first:
        window_size(cfg.budget, k)
        if k < 0:
            raise SinkscopeError(f"--keep-first values must be >= 0, got {k}")


class PolicyRuns:
    """NLL of each (document, kept keys, position mode), computed once. A document's NLL depends only on its own
    kept keys, so a pass runs only the documents whose kept keys are new: a calibration trial of a class that
    two of four documents have runs two, a discovered policy keeping the first token where a document lacks
    its other classes reuses first-1 there, and a document keeping nothing is the plain window in both modes."""

    def __init__(self, loaded: LoadedModel, cfg: StreamConfig):
        self.loaded, self.cfg, self.done = loaded, cfg, {}

    def nll(self, ids: torch.Tensor, kept: torch.Tensor, positions: str) -> torch.Tensor:
        keys = [(row.numpy().tobytes(), positions if bool(keep.any()) else "any", keep.numpy().tobytes())
                for row, keep in zip(ids, kept)]  # nothing kept: distances are equal in both modes
        todo = sorted({key: n for n, key in enumerate(keys) if key not in self.done}.values())
        if todo:
            new = policy_nll(self.loaded, ids[todo], kept[todo], self.cfg.budget, positions, self.cfg)
            self.done |= {keys[n]: row for n, row in zip(todo, new)}
        return torch.stack([self.done[key] for key in keys])

    def perplexity(self, ids: torch.Tensor, kept: torch.Tensor, positions: str) -> float:
        return math.exp(float(self.nll(ids, kept, positions).double().mean()))


def discovered_policies(runs: PolicyRuns, calibration: list[list[int]]) -> tuple[dict, dict]:
    """(discovery, {positions: (kept classes, trials)}): sinks found on the calibration documents, then
    the classes that lower their perplexity, chosen separately for each position mode."""
    loaded, cfg = runs.loaded, runs.cfg
    ids = torch.tensor(calibration)
    observer = SinkKeyObserver(len(blocks(loaded.model, loaded.adapter)), cfg.criteria, cfg.query_chunk)
    full_nll(loaded, ids, cfg, [observer])
    discovery = discover_from_observer(observer, calibration, loaded.tokenizer)
    candidates = candidate_classes(discovery)
    chosen = {}
    for positions in cfg.positions:
        def perplexity(classes, positions=positions):
            return runs.perplexity(ids, kept_positions(calibration, classes, cfg.seq_len), positions)

        chosen[positions] = choose_classes(candidates, perplexity, cfg.sink_slots)
    return discovery, chosen


def stream(model, *, tokenizer=None, config: StreamConfig | None = None, out: str | Path | None = None) -> dict:
    """Evaluate every cache policy of ``config`` on long documents; returns the content of stream.json.

    >>> import transformers, sinkscope.stream.run as run
    >>> from sinkscope.stream.config import StreamConfig
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, vocab_size=64)
    >>> model = transformers.AutoModelForCausalLM.from_config(cfg)
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "ids.jsonl").write_text(json.dumps({"input_ids": list(range(64)) * 4}) + "\\n")
    >>> result = run.stream(model, config=StreamConfig(data=str(folder / "ids.jsonl"), seq_len=64, budget=16,
    ...                     samples=2, calibration=2, keep_first=(0, 4), positions=("original", "cache")))
    >>> [(p["name"], p["positions"]) for p in result["policies"]][:2]
    [('window', 'original'), ('first-4', 'original')]
    """
    started = time.perf_counter()
    config = config or StreamConfig()
    _check(config)
    loaded = prepare_model(model, tokenizer, config.load)
    evaluated, calibration, split = documents(config, loaded)
    ids = torch.tensor(evaluated)
    runs = PolicyRuns(loaded, config)
    full = summarize(full_nll(loaded, ids, config), config.budget, config.seed)
    discovery, chosen = discovered_policies(runs, calibration) if config.discovered else (None, {})
    rows, nll = [], {}
    for positions in config.positions:
        for k in config.keep_first:
            name = "window" if k == 0 else f"first-{k}"
            kept = first_tokens(len(ids), config.seq_len, k)
            nll[name, positions] = runs.nll(ids, kept, positions)
            rows.append(_row(name, k, positions, kept, nll[name, positions], config))
        if positions in chosen:
            classes, trials = chosen[positions]
            kept = kept_positions(evaluated, classes, config.seq_len)
            nll["discovered", positions] = runs.nll(ids, kept, positions)
            row = _row("discovered", None, positions, kept, nll["discovered", positions], config)
            labels = {(None, 0): "the first token (no sink by the rule)"}  # tried as StreamingLLM's fallback
            labels |= {(c["token_id"], c["occurrence"]): class_label(c) for c in discovery["classes"]}
            row["classes"] = [labels[c.token_id, c.occurrence] for c in classes]
            row["kept_classes"] = [{"token_id": c.token_id, "occurrence": c.occurrence} for c in classes]
            row["calibration"] = [{"class": labels[t["token_id"], t["occurrence"]], **t} for t in trials]
            rows.append(row)
    dependence = sink_dependence(nll, rows, config)
    payload = _payload(loaded, config, (evaluated, calibration, split), rows, full, discovery, dependence)
    payload["seconds"] = time.perf_counter() - started
    if out is not None:
        write_json(Path(out) / "stream.json", payload)
    return payload


def _row(name: str, keep_first: int | None, positions: str, kept: torch.Tensor, nll: torch.Tensor,
         cfg: StreamConfig) -> dict:
    n_kept = kept.sum(1).double()
    row = {"name": name, "keep_first": keep_first, "window": float((cfg.budget - n_kept).mean()),
           "positions": positions, "kept": float(n_kept.mean()), "budget": cfg.budget}
    row.update(summarize(nll, cfg.budget, cfg.seed))
    return row


def sink_dependence(nll: dict, rows: list[dict], cfg: StreamConfig) -> list[dict]:
    """Per position mode, StreamingLLM's dependence: perplexity of the plain window over that of the best
    first-k policy (k > 0) at the same budget, with a paired bootstrap CI over documents; beside it, the
    window over the discovered policy (evicting the discovered sinks) and the discovered policy over the
    best first-k (below 1: discovery beats the blind rule)."""
    result = []
    for positions in cfg.positions:
        firsts = [r for r in rows if r["positions"] == positions and (r["keep_first"] or 0) > 0]
        if ("window", positions) not in nll or not firsts:
            continue
        best = min(firsts, key=lambda r: r["perplexity"])["name"]
        entry = {"positions": positions, "best_first_k": best,
                 "perplexity_window": _perplexity(nll["window", positions]),
                 "perplexity_best_first_k": _perplexity(nll[best, positions])}
        pairs = {"window_over_best_first_k": ("window", best)}
        if ("discovered", positions) in nll:
            pairs |= {"discovered_sink_eviction_ratio": ("window", "discovered"),
                      "discovered_over_best_first_k": ("discovered", best)}
        for key, (top, bottom) in pairs.items():
            ratio = perplexity_ratio(nll[top, positions], nll[bottom, positions], cfg.budget, cfg.seed)
            entry |= {key: ratio["ratio"], f"{key}_ci": ratio["ratio_ci"],
                      f"{key}_past_budget": ratio["ratio_past_budget"]}
        result.append(entry)
    return result


def _perplexity(nll: torch.Tensor) -> float:
    return math.exp(float(nll.double().mean()))


SPLITS = {"documents": "windows of documents no evaluated window comes from",
          "windows": "other windows of the evaluated documents (too few documents for a disjoint set)"}


def summary(dependence: list[dict], rows: list[dict], discovery: dict | None, split: str = "none") -> list[str]:
    """The lines a reader takes away: StreamingLLM's dependence, what the discovered policy keeps and why."""
    lines = []
    for d in dependence:
        lo, hi = d["window_over_best_first_k_ci"]
        lines.append(f"{d['positions']} positions: evicting the first tokens (plain window "
                     f"{d['perplexity_window']:.2f} "
                     f"vs {d['best_first_k']} {d['perplexity_best_first_k']:.2f}) multiplies perplexity by "
                     f"{d['window_over_best_first_k']:.2f}x [{lo:.2f}, {hi:.2f}]")
    for row in (r for r in rows if r["name"] == "discovered"):
        lines.append(_discovered_line(row, next((d for d in dependence if d["positions"] == row["positions"]), None)))
    if discovery:
        lines.append(f"discovered policy chosen on {discovery['n_sequences']} calibration documents, "
                     f"{SPLITS.get(split, split)}")
    return lines + (describe(discovery) if discovery else [])


def _discovered_line(row: dict, dependence: dict | None) -> str:
    kept = " and ".join(row["classes"]) or "nothing (the plain window)"
    refused = [t for t in row["calibration"] if not t["entered"]]
    why = ""
    if row["classes"] and all(t["token_id"] is None for t in row["calibration"] if t["entered"]) and refused:
        why = "; nothing beyond the first token lowered calibration perplexity"
    if refused:
        why += " (" + ", ".join(f"{t['class']} {t['perplexity_without']:.2f} -> {t['perplexity_with']:.2f}"
                                 for t in refused) + ")"
    line = f"discovered policy ({row['positions']} positions): keeps {kept}{why}; perplexity {row['perplexity']:.2f}"
    if dependence is not None and "discovered_over_best_first_k" in dependence:
        lo, hi = dependence["discovered_over_best_first_k_ci"]
        line += (f", {dependence['discovered_over_best_first_k']:.3f}x {dependence['best_first_k']} "
                 f"[{lo:.3f}, {hi:.3f}]; "
                 f"evicting its sinks costs {dependence['discovered_sink_eviction_ratio']:.2f}x")
    return line


def _payload(loaded, config, split_documents, rows, full, discovery, dependence) -> dict:
    evaluated, calibration, split = split_documents
    model_config = loaded.model.config
    parameter = next(loaded.model.parameters())
    max_positions = getattr(model_config, "max_position_embeddings", None)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "stream",
        "provenance": provenance(model=loaded.name, revision=loaded.revision, config=config, seed=config.seed,
                                 dtype=str(parameter.dtype).removeprefix("torch."), device=str(parameter.device),
                                 model_config=model_config.to_dict()),
        "model": {"model_type": model_config.model_type, "max_position_embeddings": max_positions},
        "data": {**describe_data(config.data, random_tokens=False, bos=config.bos, seq_len=config.seq_len,
                                 sequences=evaluated, default=("held-out Python standard-library documents", None)),
                 "documents": len(evaluated), "source": config.data or "stdlib-heldout",
                 "calibration_documents": len(calibration), "calibration_split": split},
        "budget": config.budget,
        "sink_slots": config.sink_slots if config.discovered else None,
        "full_perplexity": full["perplexity"],
        "full_perplexity_ci": full["perplexity_ci"],
        "full_perplexity_past_budget": full["perplexity_past_budget"],
        "full_nll_by_position": full["nll_by_position"],
        "full_fits": max_positions is None or config.seq_len <= max_positions,
        "policies": rows,
        "sink_dependence": dependence,
        "discovered_sinks": discovery,
        "summary": summary(dependence, rows, discovery, split),
    }
