"""``sinkscope demo``: the paper's whole story on the embedded organism checkpoints, offline, in minutes.

For the model (``organism-softmax``) and its twin (``organism-headnorm``) the demo runs the probe on
natural text and on random tokens (with the chain), then isolate, amplify and ablate, copies any
training logs shipped with the checkpoints, and writes the report. The organism's super neuron keys
on the BOS token, so isolation cannot trigger it; the demo therefore also runs every step on
``organism-nobos``, whose first position is a sink by its structure, and isolation works there. It
prints the report's path and a 10-line summary of the chain it found. Any model folder works too
(``--model``, ``--twin none``, ``--structural none``).

Output layout (``--out``)::

    <model label>/probe/         probe.json + Parquet tables (natural text)
    <model label>/probe-random/  the same on random tokens
    <model label>/isolate/ amplify/ ablate/   intervene.json
    train/<model label>/         training logs shipped with (or made for) the checkpoint
    report.html, report_figures/
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import PAPER_POSITION, DataConfig, InterveneConfig, LoadConfig, ProbeConfig, field
from .criteria import Criteria
from .demo_summary import ModelResults, chain_summary
from .errors import SinkscopeError

# Six points of the paper's grid (1, 2, 5, 10, 15, 20, 25, 30) with its range: each lambda costs two sweeps
# (amplified and control), and amplify is most of the demo's time. `sinkscope intervene` keeps the full grid.
DEMO_LAMBDAS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
DEFAULT_MODEL = "organism-softmax"
DEFAULT_TWIN = "organism-headnorm"
DEFAULT_STRUCTURAL = "organism-nobos"
TRAIN_LOGS = ("run.json", "metrics.jsonl", "telemetry.jsonl")


@dataclass
class DemoConfig:
    """``sinkscope demo``: probe, chain, interventions and report on a model and its HeadNorm twin."""

    out: str = field("runs/demo", why="output folder: result files of every step and report.html")
    load: LoadConfig = field(default_factory=LoadConfig, why="model loading options")
    model: str = field(DEFAULT_MODEL, why="the model with a sink: embedded checkpoint name, local folder or hub id")
    twin: str = field(DEFAULT_TWIN, why="the same model trained with the fix, drawn side by side; 'none' skips it")
    structural: str = field(DEFAULT_STRUCTURAL, why="a model whose first position is a sink whatever token stands "
                            "there, where isolate can work (the organism's sink is keyed on BOS); 'none' skips it")
    data: str | None = field(None, why="natural-text data (file, folder or .jsonl); default: the embedded prompts")
    samples: int = field(32, why="sequences per probe and intervention (few: the demo must take minutes)", min=1)
    seq_len: int = field(64, why="tokens per sequence (the paper measures at T = 64)", min=1)
    batch_size: int = field(8, why="sequences per forward pass", min=1)
    bos: str = field("auto", why="prepend BOS: auto follows the tokenizer", choices=("auto", "always", "never"))
    position: int = field(PAPER_POSITION, why="token that isolate and amplify turn into a sink (the paper: 9)")
    lambdas: tuple[float, ...] = field(DEMO_LAMBDAS, why="amplification factors (six points of the paper's grid)")
    value_mean_tokens: int = field(1024, why="random tokens for the mean value vector mu of amplify")
    train_minutes: float = field(1.5, why="if an organism checkpoint is missing: minutes to train each on the spot")
    seed: int = field(0, why="seed of sampling and random tokens")
    criteria: Criteria = field(default_factory=Criteria, why="the rules of every sink and chain verdict (the "
                               "probe's defaults: they are scale-free)")
    quiet: bool = field(False, why="hide the progress display")


def _label(name: str) -> str:
    """A short name for the report: the folder's name (its run folder's for a training run's ``model/``), or a
    GGUF file's name without its extension."""
    path = Path(name.rstrip("/"))
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return path.name.removesuffix(".gguf") or name


def _data(config: DemoConfig, natural: str | None = None) -> DataConfig:
    """Natural text from the token-id file ``natural``; random tokens with no BOS (the paper's setting for
    the across-samples variance, which a constant first token makes 0 by construction) when it is None."""
    return DataConfig(data=natural, random_tokens=natural is None,
                      seq_len=config.seq_len, samples=config.samples, batch_size=config.batch_size,
                      bos=config.bos if natural is not None else "never", seed=config.seed)


def amplify_plan(onset: int | None, n_layers: int) -> tuple[int, tuple[int, ...]]:
    """(observed layer, amplified layers): observe the onset layer, amplify every layer before it
    (the paper: observe 2, amplify 0 and 1); with no onset (or onset 0), observe min(2, L - 1)."""
    observe = onset if onset else min(2, n_layers - 1)
    return observe, tuple(range(max(observe, 1)))


class Steps:
    """A rich progress display of the demo's steps (or nothing, with ``quiet``)."""

    def __init__(self, total: int, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.timings: list[tuple[str, float]] = []  # (step, wall seconds), printed after the summary
        if not quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn())
            self.task = self.progress.add_task("demo", total=total)

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def run(self, description: str, fn, *args, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, description=description)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings.append((description, time.perf_counter() - start))
        if self.progress is not None:
            self.progress.advance(self.task)
        return result

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)


def demo(config: DemoConfig | None = None) -> dict:
    """Run the demo; returns {"report": path, "summary": [10 lines], "seconds": float, "models": [...]}."""
    import torch

    from .report import build_report

    config = config or DemoConfig()
    start = time.perf_counter()
    out = Path(config.out)
    names = [name for name in (config.model, config.twin) if name and name.lower() != "none"]
    structural = _structural_source(config)
    labels = [_label(name) for name in names + ([structural] if structural else [])]
    if len(set(labels)) != len(labels):
        raise SinkscopeError(f"--model, --twin and --structural must differ, got {', '.join(labels)}")
    per_model = 6  # load, probe natural, probe random, isolate, amplify, ablate
    torch.manual_seed(config.seed)
    with Steps(per_model * (len(names) + bool(structural)) + 1, config.quiet) as steps:
        sources = [ensure_checkpoint(name, out, config, steps) for name in names]
        compare_training(out)
        models = [run_model(name, source, out, config, steps) for name, source in zip(names, sources)]
        extra = run_model(structural, structural, out, config, steps) if structural else None
        everyone = models[:1] + ([extra] if extra else []) + models[1:]  # the report puts the fix last
        folders = [out / m.label for m in everyone]  # the report keeps this order
        if (out / "train").is_dir():
            folders.append(out / "train")
        report = steps.run("writing the report", build_report, folders, out / "report.html",
                           title="sinkscope demo: " + " vs ".join(m.label for m in everyone))
    summary = chain_summary(models, structural=extra)
    return {"report": str(report.path), "summary": summary, "seconds": time.perf_counter() - start,
            "models": [m.label for m in everyone], "missing_figures": report.missing, "timings": steps.timings}


def _structural_source(config: DemoConfig) -> str | None:
    """``--structural`` to load, or None when 'none' or when the default checkpoint is not embedded here
    (it is made by continuing organism-softmax, see configs/organism-nobos.yaml, too long to do on the spot)."""
    from .loading import resolve_source

    name = config.structural
    if not name or name.lower() == "none":
        return None
    source = resolve_source(name)
    if name == DEFAULT_STRUCTURAL and source == name and not Path(name).exists():
        return None
    return source


def ensure_checkpoint(name: str, out: Path, config: DemoConfig, steps: Steps) -> str:
    """The folder/name to load for ``name``; a missing embedded organism is trained on the spot.

    Training logs shipped with the checkpoint (run.json, metrics.jsonl, telemetry.jsonl in its folder
    or its ``train/`` subfolder) are copied under ``out/train/<label>`` for the report.
    """
    from .loading import resolve_source

    source = resolve_source(name)
    if name in (DEFAULT_MODEL, DEFAULT_TWIN) and source == name and not Path(name).exists():
        source = train_organism(name, out, config, steps)
    folder = Path(source)
    for candidate in (folder, folder / "train", folder.parent):
        logs = [candidate / f for f in TRAIN_LOGS if (candidate / f).is_file()]
        if logs and any(f.name != "run.json" for f in logs):
            target = out / "train" / _label(name)
            if candidate.resolve() != target.resolve():
                target.mkdir(parents=True, exist_ok=True)
                for f in logs:
                    shutil.copyfile(f, target / f.name)
            break
    return source


def train_organism(name: str, out: Path, config: DemoConfig, steps: Steps) -> str:
    """Train the missing organism ``name`` (softmax or headnorm) through sinkscope.train; returns its model folder."""
    variant = name.removeprefix("organism-")
    try:
        from .train.loop import train
    except ImportError as err:
        raise SinkscopeError(f"the embedded checkpoint {name!r} is missing and the training package cannot train it "
                             f"({err}); pass --model FOLDER (and --twin FOLDER or none)") from None
    folder = out / "train" / name
    model_folder = folder / "model"
    if (model_folder / "config.json").exists():  # trained by an earlier demo run into the same --out
        return str(model_folder)
    if folder.exists():
        shutil.rmtree(folder)
    cfg = organism_train_config(variant, folder, config.train_minutes, config.seed)
    steps.log(f"{name} is not embedded in this install: training it for {config.train_minutes:g} min on the spot")
    steps.run(f"training {name}", train, cfg)
    return str(model_folder)


def organism_train_config(variant: str, folder: Path, minutes: float, seed: int):
    """A small organism recipe cut to ``minutes`` of wall-clock time on the CPU.

    It stands in for a checkpoint missing from this install, so it lives in the package: an installed
    sinkscope has no configs/ folder (configs/organism.yaml is the full 10k-step recipe, docs/training.md).
    """
    import dataclasses

    from .train.config import ModelSpec, OptimConfig, TrainConfig, TrainDataConfig

    cfg = TrainConfig(model=ModelSpec(layers=4, hidden_size=128, heads=4, vocab_size=1024),
                      data=TrainDataConfig(seq_len=64), optim=OptimConfig(lr=3e-3, warmup=30, batch_size=16, steps=400))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, variant=variant), out=str(folder),
                               max_minutes=minutes, device="cpu", seed=seed, checkpoint_every=10_000,
                               telemetry_every=50, eval_every=50)


def compare_training(out: Path) -> None:
    """compare.json over the training runs under out/train (when there are any with run.json)."""
    folders = sorted(str(p.parent) for p in (out / "train").glob("*/run.json"))
    if not folders:
        return
    from .train.compare import compare, save_compare

    save_compare(compare(folders), out / "train" / "compare.json")


def natural_data(config: DemoConfig, loaded, folder: Path) -> str:
    """Full-length natural-text windows for probe and interventions, written as token ids to a .jsonl.

    The text (``--data`` or the embedded prompts) is tokenized as one stream and cut into windows of
    exactly ``--seq-len`` tokens (special tokens included), so every sequence reaches the target
    position of isolate and amplify. Pre-tokenized .jsonl data (``input_ids``) is used as given.
    """
    import json

    from .data import embedded_prompts, read_documents, special_tokens, windows

    docs = read_documents(config.data) if config.data else embedded_prompts()
    if config.data and any("input_ids" in d for d in docs):
        return config.data
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise SinkscopeError(f"{loaded.name} has no tokenizer for natural text; pass --data FILE.jsonl with "
                             "'input_ids' records")
    prefix, suffix = special_tokens(tokenizer, config.bos, getattr(loaded.model.config, "bos_token_id", None))
    body = config.seq_len - len(prefix) - len(suffix)
    stream = [i for d in docs for i in tokenizer(d["text"], add_special_tokens=False)["input_ids"]]
    cut = windows(stream, config.seq_len, prefix, suffix, full_only=True)
    if not cut:
        raise SinkscopeError(f"the natural text has fewer than {body} tokens; lower --seq-len or pass a longer --data")
    # named for its source, so the page's data column says what the windows were cut from
    path = folder / f"{Path(config.data).stem if config.data else 'embedded-prompts'}-windows.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"input_ids": w}) + "\n" for w in cut[: config.samples]))
    return str(path)


def run_model(name: str, source: str, out: Path, config: DemoConfig, steps: Steps, *,
              ablate_auto: bool = False) -> ModelResults:
    """Probe (natural text, random tokens), isolate, amplify and ablate ``source`` into ``out/<label>``.

    ``ablate_auto``: ablate with ``--neurons auto`` (intervene picks the chain's writers itself) rather
    than the super neurons this probe found.
    """
    from .loading import load_model

    label = _label(name)
    loaded = steps.run(f"{label}: loading", load_model, source, config.load)
    return run_loaded(loaded, label, out, config, steps, ablate_auto=ablate_auto)


def run_loaded(loaded, label: str, out: Path, config: DemoConfig, steps: Steps, *,
               ablate_auto: bool = False, source: str | None = None) -> ModelResults:
    """The steps of :func:`run_model` on a loaded model; provenance names it ``source`` (default: ``label``)."""
    from .adapters import blocks
    from .intervene import intervene
    from .probe import probe

    folder = out / label
    model, tokenizer = loaded.model, loaded.tokenizer
    # provenance and the report name the model by this (a GGUF path: provenance records the file, too)
    model.config._name_or_path = source or label
    text = natural_data(config, loaded, folder)
    thresholds = {"criteria": config.criteria}
    probe_config = ProbeConfig(data=_data(config, text), **thresholds)
    natural = steps.run(f"{label}: probe + chain, natural text", probe, model, tokenizer=tokenizer,
                        config=probe_config, out=folder / "probe").to_dict()
    random = steps.run(f"{label}: probe + chain, random tokens", probe, model, tokenizer=tokenizer,
                       config=ProbeConfig(data=_data(config), **thresholds),
                       out=folder / "probe-random").to_dict()
    results = ModelResults(label=label, natural=natural, random=random)
    observe, layers = amplify_plan(natural.get("onset_layer"), len(blocks(model, loaded.adapter)))
    base = {"data": _data(config, text), "position": config.position, "value_mean_tokens": config.value_mean_tokens,
            "criteria": config.criteria}
    results.isolate = steps.run(f"{label}: isolate token {config.position}", intervene, model, "isolate",
                                InterveneConfig(**base), tokenizer=tokenizer, out=folder / "isolate")
    results.amplify = steps.run(f"{label}: amplify token {config.position}", intervene, model, "amplify",
                                InterveneConfig(**base, lambdas=config.lambdas, observe=observe,
                                                layers=",".join(map(str, layers))),
                                tokenizer=tokenizer, out=folder / "amplify")
    neurons = (natural.get("chain") or {}).get("super_neurons") or []
    if ablate_auto:
        try:
            results.ablate = steps.run(f"{label}: ablate --neurons auto", intervene, model, "ablate",
                                       InterveneConfig(**base, neurons="auto"), tokenizer=tokenizer,
                                       out=folder / "ablate", probe=natural)  # its chain: no second probe
        except SinkscopeError as err:  # no writer to ablate: the other steps still tell their part of the story
            results.note = str(err)
    elif neurons:
        spec = ",".join(f"{n['layer']}:{n['index']}" for n in neurons)
        results.ablate = steps.run(f"{label}: ablate {spec}", intervene, model, "ablate",
                                   InterveneConfig(**base, neurons=spec), tokenizer=tokenizer, out=folder / "ablate")
    else:
        results.note = "no super neuron found, so nothing to ablate"
        steps.run(f"{label}: ablate skipped (no super neuron)", lambda: None)
    return results
