"""``sinkscope demo MODEL``: the whole story on any model (hub id, folder or GGUF file) in one command.

It loads the model once, then calls the pipelines the separate commands call: probe on natural text
(``--data`` or the embedded prompts) and on random tokens without BOS (C1 in the paper's setting),
isolate and amplify at a position the model's context holds, ``ablate --neurons auto``, stream at a
KV budget that fits the context, and the report. Each step writes its own result file; the summary
reads those payloads (:func:`sinkscope.demo_summary.model_summary`).

Output layout (``--out``)::

    <label>/probe/ probe-random/ isolate/ amplify/ ablate/ stream/
    report.html, report_figures/
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .demo import DemoConfig, Steps, _label, run_loaded
from .demo_summary import model_summary
from .errors import SinkscopeError

STREAM_SEQ_LEN = 256  # stream's own default document length, cut to the context where it is shorter
STREAM_BUDGET_SHARE = 8  # budget = document length / this: stream's default 32 of 256 tokens
# Documents stream evaluates: each costs one forward pass per cache policy (five), at four times the probe's
# length, so stream would be most of the demo's time at --samples; `sinkscope stream` keeps its own 32.
STREAM_DOCUMENTS = 8
STEPS = 8  # load, probe natural, probe random, isolate, amplify, ablate, stream, report


def fit_to_context(config: DemoConfig, context: int | None) -> DemoConfig:
    """``config`` with sequences no longer than the model's context, and the target position inside them."""
    if context is None or config.seq_len <= context:
        return config
    return dataclasses.replace(config, seq_len=context, position=min(config.position, context - 1))


def demo_model(name: str, config: DemoConfig) -> dict:
    """Run the whole story on ``name``; returns {"report", "summary", "seconds", "models", "timings", ...}."""
    import torch

    from .loading import load_model, resolve_source
    from .report import build_report

    start = time.perf_counter()
    out = Path(config.out)
    label = _label(name)
    torch.manual_seed(config.seed)
    with Steps(STEPS, config.quiet) as steps:
        loaded = steps.run(f"{label}: loading", load_model, resolve_source(name), config.load)
        context = getattr(loaded.model.config, "max_position_embeddings", None)
        fitted = fit_to_context(config, context)
        results = run_loaded(loaded, label, out, fitted, steps, ablate_auto=True, source=name)
        results.stream = steps.run(f"{label}: stream", _stream, loaded, fitted, context, out / label / "stream")
        report = steps.run("writing the report", build_report, [out / label], out / "report.html",
                           title=f"sinkscope demo: {label}")
    return {"report": str(report.path), "summary": model_summary(results), "seconds": time.perf_counter() - start,
            "models": [label], "missing_figures": report.missing, "timings": steps.timings}


def _stream(loaded, config: DemoConfig, context: int | None, folder: Path) -> dict:
    """stream.json at a budget that fits the context; without the discovered policy when its sinks fill it."""
    from .stream.config import StreamConfig
    from .stream.run import stream

    seq_len = min(STREAM_SEQ_LEN, context or STREAM_SEQ_LEN)
    stream_config = StreamConfig(data=config.data, seq_len=seq_len, budget=max(seq_len // STREAM_BUDGET_SHARE, 2),
                                 samples=min(config.samples, STREAM_DOCUMENTS), batch_size=config.batch_size,
                                 seed=config.seed, criteria=config.criteria)
    try:
        return stream(loaded.model, tokenizer=loaded.tokenizer, config=stream_config, out=folder)
    except SinkscopeError as err:
        if "discovered sinks fill" not in str(err):
            raise
        return stream(loaded.model, tokenizer=loaded.tokenizer, out=folder,
                      config=dataclasses.replace(stream_config, discovered=False))
