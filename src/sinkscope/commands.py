"""Subcommands: thin wrappers from parsed configs to library functions, plus the summary they print.

Each :class:`Command` names its config dataclass by import path ("module:Class"). Config modules import
no torch, and every pipeline is imported inside its ``run_*`` function, so ``sinkscope <command> --help``
answers without loading the ML stack (tests/unit/test_startup.py). Dependencies run one way:
cli -> commands -> pipelines.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from .config import EXPERIMENT_KINDS


MODEL_HELP = "hub id, local folder (save_pretrained), .gguf file (or a folder holding one) or embedded checkpoint name"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: str | None  # "module:Class" of the dataclass whose fields become flags; None: positionals only
    run: Callable  # run(args: argparse.Namespace, config) -> int | None
    positionals: tuple[tuple[str, dict], ...] = ()  # (name, argparse kwargs)

    def config_class(self) -> type | None:
        if self.config is None:
            return None
        module, name = self.config.split(":")
        return getattr(import_module(module), name)


def _console():
    import sys

    from rich.console import Console

    # piped into a log file, rich would wrap tables at 80 columns; a log is read later, full width
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)


def run_probe(args: argparse.Namespace, config) -> int:
    from rich.table import Table

    from .probe import probe

    result = probe(args.model, config=config, out=config.out, progress=True)
    payload = result.to_dict()
    table = Table(title=f"sink score by layer — {args.model}")
    table.add_column("layer", justify="right")
    table.add_column("sink score (head mean)", justify="right")
    table.add_column("x uniform (CI)", justify="right")
    table.add_column("max head", justify="right")
    table.add_column("norm ratio", justify="right")
    table.add_column("top-1 / median |x| (Sun)", justify="right")
    sun = payload["layer_magnitudes"]["mean"]
    sink = payload["sink"]
    learned = payload["learned_sink_mass"] if payload["model"].get("learned_sink") else None
    if learned:  # beside the first-token sink: the share each layer's learned sink logit takes
        table.add_column("learned sink (head mean)", justify="right")
    for layer, heads in enumerate(payload["sink_score"]):
        lo, hi = sink["ratio_ci"][layer]
        ratio = "-" if lo is None else f"{sink['ratio'][layer]:.1f} ({lo:.1f}-{hi:.1f})"
        table.add_row(str(layer), f"{payload['layer_sink_score'][layer]:.3f}", ratio, f"{max(heads):.3f}",
                      f"{payload['norm_ratio'][layer]:.2f}", f"{sun[layer][0]:.4g} / {sun[layer][3]:.3g}",
                      *([f"{sum(learned[layer]) / len(learned[layer]):.3f}"] if learned else []))
    console = _console()
    console.print(table)
    paper = payload["onset_layer_paper"]
    console.print(sink["verdict"])  # names the learned sink too, when the model has one
    console.print(f"onset layer by the paper's rule (score > {payload['onset_threshold_paper']}): "
                  f"{paper if paper is not None else 'none'}   sink rate (eps {payload['sink_rate_eps']}): "
                  f"{payload['sink_rate']:.1f} %   uniform baseline: {payload['uniform_baseline']:.3f}")
    if "chain" in payload:
        console.print(payload["chain"]["verdict"])
    published = payload.get("published_super_weights")
    if published:
        console.print(f"published super weights of {published['model']} {published['published']}: "
                      f"{'found' if published['matches'] else 'NOT all found'} (this probe: sinkscope "
                      f"{published['found']['chain']}, Yu et al.'s procedure {published['found']['yu']}; "
                      f"source: {published['source']})")
    if "secondary_sinks" in payload:
        from .stream.discover import describe

        for line in describe(payload["secondary_sinks"]) or ["no key acts as a sink"]:
            console.print(f"sinks: {line}")
    if config.out:
        console.print(f"results: {config.out}/probe.json")
    return 0


def run_intervene(args: argparse.Namespace, config) -> int:
    from rich.table import Table

    from .intervene import intervene

    payload = intervene(args.model, args.kind, config, out=config.out, progress=True)
    console = _console()
    if args.kind == "massive":
        table = Table(title=f"massive: Sun et al.'s reset of dims {payload['dims']} after layer {payload['layer']}")
        for column in ("run", "perplexity", "95% CI", "sink rate (%)"):
            table.add_column(column, justify="right")
        for run in ("original", "zero", "mean"):
            ppl = (payload["perplexity"] or {}).get(run)
            table.add_row(run, "-" if ppl is None else f"{ppl['perplexity']:.3f}",
                          "-" if ppl is None else f"[{ppl['ci'][0]:.3f}, {ppl['ci'][1]:.3f}]", f"{payload['sink_rate'][run]:.1f}")
        console.print(table)
    elif "per_layer" in payload:
        table = Table(title=f"{args.kind}: sink score of the target, before -> after")
        for column in ("layer", "before", "after"):
            table.add_column(column, justify="right")
        for row in payload["per_layer"]:
            table.add_row(str(row["layer"]), f"{row['sink_score_before']:.3f}", f"{row['sink_score_after']:.3f}")
        console.print(table)
    if args.kind == "amplify":
        table = Table(title=f"amplify: sink score of token {payload['position']} at layer {payload['observe']}")
        for column in ("lambda", "amplified", "95% CI", "norm-only control"):
            table.add_column(column, justify="right")
        control = payload["control_sink_score"] or [None] * len(payload["lambdas"])
        for lam, score, ci, ctrl in zip(payload["lambdas"], payload["sink_score"], payload["sink_score_ci"], control):
            table.add_row(f"{lam:g}", f"{score:.3f}", f"[{ci[0]:.3f}, {ci[1]:.3f}]", "-" if ctrl is None else f"{ctrl:.3f}")
        console.print(table)
    console.print(payload["verdict"])
    if config.out:
        console.print(f"results: {config.out}/intervene.json")
    return 0


def run_models(args: argparse.Namespace, config) -> int:
    from rich.table import Table

    from .errors import SinkscopeError
    from .models import embedded_models, embedded_path

    if args.path:
        path = embedded_path(args.path)
        if path is None:
            names = ", ".join(m["name"] for m in embedded_models()) or "none"
            raise SinkscopeError(f"no embedded checkpoint named '{args.path}'; available: {names}")
        print(path)
        return 0
    table = Table(title="embedded checkpoints")
    for column in ("name", "variant", "parameters", "path"):
        table.add_column(column)
    for row in embedded_models():
        table.add_row(row["name"], str(row["variant"]), f"{row['parameters']:,}" if row["parameters"] else "?",
                      row["path"])
    _console().print(table)
    return 0


COMMANDS = [
    Command("probe", "measure sink score, sink rate and onset per layer and head", "sinkscope.config:ProbeConfig",
            run_probe,
            positionals=(("model", {"help": MODEL_HELP}),)),
    Command("intervene", "create a sink anywhere (isolate, amplify) or remove it (ablate, massive)",
            "sinkscope.config:InterveneConfig", run_intervene,
            positionals=(("model", {"help": MODEL_HELP}),
                         ("kind", {"choices": EXPERIMENT_KINDS, "help": "which experiment"}))),
    Command("models", "list the checkpoints shipped with sinkscope", None, run_models,
            positionals=(("--path", {"metavar": "NAME", "help": "print the folder of one embedded checkpoint"}),)),
]


def run_train(args: argparse.Namespace, config) -> int:
    from .train.loop import train

    summary = train(config)
    if summary:
        console = _console()
        console.print(f"{summary['variant']}: {summary['steps']} steps, {summary['tokens']:,} tokens in "
                      f"{summary['seconds'] / 60:.1f} min ({summary['tokens_per_second']:,.0f} tokens/s); "
                      f"train loss {summary['final_train_loss']:.3f}, val loss {summary['final_val_loss']:.3f}")
        console.print(f"model: {summary['model_folder']}   logs: {config.out}/metrics.jsonl, telemetry.jsonl")
    return 0


def run_compare(args: argparse.Namespace, config) -> int:
    from rich.table import Table

    from .train.compare import compare, save_compare

    payload = compare(args.runs, config)
    table = Table(title="runs by variant (mean ± std over seeds)")
    for column in ("variant", "runs", "train loss", "val loss", "steps to target", "speedup", "sink score",
                   "DomRatio", "eff. rank"):
        table.add_column(column, justify="right")

    def fmt(cell, digits=3):
        if cell is None or cell.get("mean") is None:
            return "—"
        spread = f" ± {cell['std']:.{digits}f}" if cell["std"] is not None else ""
        return f"{cell['mean']:.{digits}f}{spread}"

    for variant, row in payload["variants"].items():
        speedup = row.get("speedup_vs_baseline")
        to_target = fmt(row.get("steps_to_target"), 0)
        reached, runs = row.get("runs_reaching_target"), len(row["runs"])
        if reached is not None and 0 < reached < runs:  # the mean covers only the runs that got there
            to_target += f" ({reached}/{runs} runs)"
        table.add_row(variant, str(runs), fmt(row["final_train_loss"]), fmt(row["final_val_loss"]),
                      to_target, f"{speedup:.2f}x" if speedup else "—",
                      fmt(row["max_layer_sink_score"]), fmt(row["max_layer_dom_ratio"], 1),
                      fmt(row["mean_effective_rank"], 1))
    _console().print(table)
    if config.out:
        print(f"results: {save_compare(payload, config.out)}")
    return 0


COMMANDS.append(Command("train", "pretrain a model with one attention variant, with sink telemetry",
                        "sinkscope.train.config:TrainConfig", run_train))
COMMANDS.append(Command("compare", "compare training runs grouped by variant (loss, speed, sinks)",
                        "sinkscope.train.config:CompareConfig", run_compare,
                        positionals=(("runs", {"nargs": "+", "help": "run folders written by sinkscope train"}),)))


def run_report(args: argparse.Namespace, config) -> int:
    from .report import build_report

    report = build_report(args.runs, args.output, title=args.title)
    print(f"report: {report.path}  ({len(report.figures)} figures, PNG and SVG in {report.figures_dir})")
    for figure_id, why in report.missing.items():
        print(f"  omitted {figure_id}: {why}")
    return 0


def run_demo(args: argparse.Namespace, config) -> int:
    if args.model:
        from .demo_model import demo_model

        result = demo_model(args.model, config)
    else:
        from .demo import demo

        result = demo(config)
    print(f"report: {result['report']}")
    for line in result["summary"]:
        print(line)
    print(f"demo finished in {result['seconds']:.0f} s; per step: "
          + "; ".join(f"{name} {seconds:.0f} s" for name, seconds in result["timings"]))
    return 0


def run_criteria(args: argparse.Namespace, config) -> int:
    """Every decision criterion with its value (the defaults, or as --config sets them), why and source.

    Plain lines, not a table: each reason is a sentence, and a grep for a flag finds its whole entry.
    """
    from .config import build, load_yaml
    from .criteria import Criteria, describe

    values = (load_yaml(args.config).get("criteria") or {}) if args.config else {}
    criteria = build(Criteria, values, prefix="criteria.")
    rows = describe()
    print(f"{len(rows)} decision criteria, " + (f"as {args.config} sets them" if args.config else "at their defaults")
          + "; set any by flag on probe, intervene, stream, demo or train (--sink-ratio-min 3), or under "
          "'criteria:' in a --config YAML file.\n")
    for row in rows:
        value = getattr(criteria, row["name"])
        changed = "" if value == row["value"] else f" (default {row['value']})"
        print(f"--{row['name'].replace('_', '-')} {value}{changed}\n    why: {row['why']}\n    source: {row['source']}")
    return 0


COMMANDS.append(Command("criteria", "list every decision criterion with its value, why and source", None,
                        run_criteria, positionals=(
                            ("--config", {"metavar": "FILE", "default": None,
                                          "help": "show the values a YAML config sets (its 'criteria:' keys)"}),)))
COMMANDS.append(Command("report", "draw every result under RUN folders into one offline HTML page (+ PNG/SVG)", None,
                        run_report, positionals=(
                            ("runs", {"nargs": "+", "metavar": "RUN", "help": "folders holding probe.json, "
                                      "intervene.json, training logs or compare.json (searched recursively)"}),
                            ("-o", {"dest": "output", "default": "report.html", "metavar": "FILE",
                                    "help": "the HTML page to write (default: report.html); PNG and SVG figures go to "
                                    "<name>_figures/ beside it"}),
                            ("--title", {"default": None, "help": "page title (default: sinkscope report)"}))))
COMMANDS.append(Command("demo", "the whole story in one command: probe, C1 on random tokens, isolate, amplify, ablate, "
                        "stream and the report, on MODEL or (without it) on the embedded organisms, offline",
                        "sinkscope.demo:DemoConfig", run_demo, positionals=(
                            ("model", {"nargs": "?", "default": None, "metavar": "MODEL",
                                       "help": "hub id, local folder or .gguf file (default: the embedded organism, "
                                       "its HeadNorm twin and organism-nobos; see --model)"}),)))


def run_stream(args: argparse.Namespace, config) -> int:
    from rich.table import Table

    from .stream.run import stream

    payload = stream(args.model, config=config, out=config.out)
    table = Table(title=f"perplexity under a KV budget of {payload['budget']} — {args.model} "
                        f"({payload['data']['documents']} documents of {payload['data']['seq_len']} tokens)")
    for column in ("policy", "positions", "kept", "perplexity", "95% CI", f"past {payload['budget']} tokens"):
        table.add_column(column, justify="right")
    for row in payload["policies"]:
        table.add_row(row["name"], row["positions"], f"{row['kept']:.1f}", f"{row['perplexity']:.2f}",
                      f"[{row['perplexity_ci'][0]:.2f}, {row['perplexity_ci'][1]:.2f}]",
                      f"{row['perplexity_past_budget']:.2f}")
    table.add_row("full", "-", "all", f"{payload['full_perplexity']:.2f}",
                  f"[{payload['full_perplexity_ci'][0]:.2f}, {payload['full_perplexity_ci'][1]:.2f}]",
                  f"{payload['full_perplexity_past_budget']:.2f}")
    console = _console()
    console.print(table)
    for line in payload["summary"]:  # StreamingLLM's dependence, the discovered policy's choice, the sinks found
        console.print(line)
    console.print(f"{payload['seconds']:.0f} s")
    if config.out:
        console.print(f"results: {config.out}/stream.json")
    return 0


COMMANDS.append(Command("stream", "perplexity under a KV budget per cache policy; which tokens must the cache keep",
                        "sinkscope.stream.config:StreamConfig", run_stream,
                        positionals=(("model", {"help": MODEL_HELP}),)))
