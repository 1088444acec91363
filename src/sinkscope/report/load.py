"""Find and read the result files under each RUN folder; the report reads nothing else.

Result files, found recursively: ``probe.json`` (+ its Parquet tables beside it), ``intervene.json``
(kinds isolate / amplify / ablate / massive), training runs (a folder with ``run.json``, ``metrics.jsonl`` or
``telemetry.jsonl``), ``compare.json`` and ``stream.json``. JSON files go through :func:`sinkscope.results.read_json`,
so a file from an incompatible schema is refused with one clear line.

Probe and intervention results are grouped into :class:`Series`: one per model within a RUN
folder (provenance ``model``). A series holds at most one natural-text and one random-token probe
and one result per intervention kind; a second one of the same sort starts a new series, so
nothing is silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SinkscopeError
from ..files import read_log
from ..results import read_json

INTERVENTION_KINDS = ("isolate", "amplify", "ablate", "massive")
TRAIN_FILES = ("run.json", "metrics.jsonl", "telemetry.jsonl")
KNOWN_VARIANTS = ("softmax1", "sink_logit", "softmax", "headnorm", "gated", "sigmoid")  # longest names first


@dataclass
class ProbeFile:
    path: Path
    payload: dict
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def random_tokens(self) -> bool:
        return (self.payload.get("data") or {}).get("source") == "random-tokens"

    def table(self, name: str) -> dict[str, list] | None:
        """A Parquet table written beside probe.json (column -> values), or None when absent."""
        if name not in self._tables:
            path = self.path.parent / f"{name}.parquet"
            if not path.exists():
                self._tables[name] = None
            else:
                import pyarrow.parquet as pq

                try:
                    self._tables[name] = pq.read_table(path).to_pydict()
                except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError; say which file
                    raise SinkscopeError(f"{path} is not a readable Parquet table ({err}); "
                                         "re-run the probe that wrote it") from None
        return self._tables[name]


@dataclass
class TrainingRun:
    label: str
    path: Path
    variant: str | None
    summary: dict | None  # run.json
    metrics: list[dict]  # metrics.jsonl records
    telemetry: list[dict]  # telemetry.jsonl records
    colour: str = ""


@dataclass
class Series:
    """One model's results within one RUN folder, drawn as one column of the report."""

    label: str
    model: str | None
    variant: str | None
    natural: ProbeFile | None = None
    random: ProbeFile | None = None
    interventions: dict[str, dict] = field(default_factory=dict)  # kind -> intervene.json payload
    colour: str = ""
    paths: dict[str, Path] = field(default_factory=dict)  # intervention kind -> its intervene.json
    stream: list[tuple[Path, dict]] = field(default_factory=list)  # stream.json files of this model
    training: TrainingRun | None = None  # the run that trained this model, when it is among the RUN folders
    spans_folders: bool = False  # its files lie in several RUN folders: named by its model, not one folder

    @property
    def probe(self) -> ProbeFile | None:
        """The probe the chain figures use: natural text when present, else random tokens."""
        return self.natural or self.random


@dataclass
class Results:
    """Everything the report draws, read from the RUN folders."""

    runs: list[Path]
    series: list[Series]
    training: list[TrainingRun]
    compare: list[tuple[Path, dict]]
    files: list[Path]  # every result file read, for the provenance section
    provenance: dict[Path, dict] = field(default_factory=dict)  # JSON result file -> its provenance
    stream: list[tuple[Path, dict]] = field(default_factory=list)  # stream.json files (sinkscope stream)


VARIANT_ORDER = ("softmax", "headnorm", "gated", "sigmoid", "softmax1", "sink_logit")  # columns left to right


def _variant_rank(variant: str | None) -> int:
    """softmax and unknown variants (usually a hub model, the baseline) first, then the fixes in VARIANT_ORDER."""
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else 0


def guess_variant(*texts: str | None) -> str | None:
    """The attention variant named in a model name or folder ("organism-headnorm" -> "headnorm")."""
    for text in texts:
        if not text:
            continue
        low = text.lower().replace("-", "_")
        for name in KNOWN_VARIANTS:
            if name in low.split("/")[-1] or f"_{name}" in low or low.endswith(name):
                return name
    return None


def _result_files(root: Path) -> list[Path]:
    names = {"probe.json", "intervene.json", "compare.json", "stream.json", *TRAIN_FILES}
    found = [p for p in sorted(root.rglob("*")) if p.name in names and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return found


def load_results(runs: list[str | Path]) -> Results:
    """Read every result file under the RUN folders; raises SinkscopeError when a folder holds none."""
    if not runs:
        raise SinkscopeError("give at least one RUN folder written by sinkscope probe / intervene / train")
    roots = [Path(r) for r in runs]
    series: list[Series] = []
    training: list[TrainingRun] = []
    compare: list[tuple[Path, dict]] = []
    stream: list[tuple[Path, dict]] = []
    files: list[Path] = []
    provenance: dict[Path, dict] = {}
    for root in roots:
        if not root.is_dir():
            raise SinkscopeError(f"{root} is not a folder; pass folders written by sinkscope probe/intervene/train")
        found = _result_files(root)
        if not found:
            raise SinkscopeError(f"{root} holds no sinkscope result files (probe.json, intervene.json, run.json, "
                                 "metrics.jsonl, telemetry.jsonl, compare.json, stream.json); run `sinkscope probe MODEL --out "
                                 f"{root}` first")
        files += found
        _series(root, [p for p in found if p.name in ("probe.json", "intervene.json")], provenance, series)
        training += _training(root, sorted({p.parent for p in found if p.name in TRAIN_FILES}))
        compare += [(p, read_json(p)) for p in found if p.name == "compare.json"]
        stream += [(p, read_json(p, "stream")) for p in found if p.name == "stream.json"]
    _attach_stream(series, stream, roots)
    _name_series(series, roots)
    _attach_training(series, training)
    series.sort(key=lambda s: _variant_rank(s.variant))  # stable: the baseline first, then the fixes
    training.sort(key=lambda run: _variant_rank(run.variant))
    _colour(series, training)
    provenance |= {run.path / "run.json": (run.summary or {}).get("provenance") or {}
                   for run in training if run.summary}
    provenance |= {path: payload.get("provenance") or {} for path, payload in [*compare, *stream]}
    return Results(runs=roots, series=series, training=training, compare=compare, files=files,
                   provenance=provenance, stream=stream)


def _series(root: Path, paths: list[Path], provenance: dict[Path, dict], out: list[Series]) -> None:
    """Add the probe and intervention files under ``root`` to ``out``: one series per model across all RUN
    folders, so a model's probe and its interventions stay together however the folders were passed."""
    start = len(out)
    for path in paths:
        payload = read_json(path)
        provenance[path] = payload.get("provenance") or {}
        kind = payload.get("kind")
        model = (payload.get("provenance") or {}).get("model")
        if path.name == "probe.json":
            item = ProbeFile(path, payload)
            slot = "random" if item.random_tokens else "natural"
            target = next((s for s in out if s.model == model and getattr(s, slot) is None), None)
            if target is None:
                target = Series(label="", model=model, variant=None)
                out.append(target)
            setattr(target, slot, item)
        elif kind in INTERVENTION_KINDS:
            target = next((s for s in out if s.model == model and kind not in s.interventions), None)
            if target is None:
                target = Series(label="", model=model, variant=None)
                out.append(target)
            target.interventions[kind] = payload
            target.paths[kind] = path
        else:
            raise SinkscopeError(f"{path} holds a {kind!r} result; intervene.json must be one of "
                                 f"{', '.join(INTERVENTION_KINDS)}")
    for s in out[:start]:
        s.spans_folders |= s.label != str(root.resolve()) and _holds_file_from(s, root)
    for s in out[start:]:
        s.label = str(root.resolve())  # placeholder, named in _name_series


def _holds_file_from(s: Series, root: Path) -> bool:
    paths = [p.path for p in (s.natural, s.random) if p] + list(s.paths.values())
    return any(root.resolve() in path.resolve().parents for path in paths)


def _attach_stream(series: list[Series], stream: list[tuple[Path, dict]], roots: list[Path]) -> None:
    """Each stream.json joins its model's series (a series of its own when no probe of that model was read)."""
    for path, payload in stream:
        model = (payload.get("provenance") or {}).get("model")
        target = next((s for s in series if s.model == model), None)
        if target is None:
            root = next((r for r in roots if r.resolve() in path.resolve().parents), roots[0])
            target = Series(label=str(root.resolve()), model=model, variant=None)
            series.append(target)
        target.stream.append((path, payload))


def _attach_training(series: list[Series], training: list[TrainingRun]) -> None:
    """A training run belongs to the series whose model it wrote (its model folder, or a folder of its name)."""
    for s in series:
        name = Path(s.model).name if s.model else None
        s.training = next((run for run in training if run.label in (name, s.label)
                           or (s.model and str(run.path) in str(Path(s.model).resolve()))), None)


def _name_series(series: list[Series], roots: list[Path]) -> None:
    """Short unique labels: the model's folder name, or the RUN folder's when that is clearer."""
    taken: dict[str, int] = {}
    for s in series:
        model_name = Path(s.model).name if s.model else None
        run_name = Path(s.label).name
        per_run = sum(1 for t in series if t.label == s.label)
        label = model_name if (per_run > 1 or len(roots) == 1 or s.spans_folders) and model_name else run_name
        s.variant = guess_variant(model_name, run_name)
        taken[label] = taken.get(label, 0) + 1
        s.label = label if taken[label] == 1 else f"{label} ({taken[label]})"


def _training(root: Path, folders: list[Path]) -> list[TrainingRun]:
    runs = []
    for folder in folders:
        summary = read_json(folder / "run.json") if (folder / "run.json").exists() else None
        metrics, telemetry = read_log(folder / "metrics.jsonl"), read_log(folder / "telemetry.jsonl")
        rel = folder.relative_to(root)
        label = folder.name if str(rel) != "." else root.name
        variant = (summary or {}).get("variant") or guess_variant(label, root.name)
        runs.append(TrainingRun(label=label, path=folder, variant=variant, summary=summary, metrics=metrics,
                                telemetry=telemetry))
    names = [r.label for r in runs]
    for run in runs:  # two runs in folders of the same name: fall back to the path under RUN
        if names.count(run.label) > 1:
            run.label = str(run.path.relative_to(root))
    return runs


def _colour(series: list[Series], training: list[TrainingRun]) -> None:
    from .style import variant_colour

    unknown = 0
    for item in [*series, *training]:
        if item.variant is None:
            item.colour = variant_colour(None, unknown)
            unknown += 1
        else:
            item.colour = variant_colour(item.variant)
