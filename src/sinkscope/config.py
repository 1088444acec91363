"""Dataclass configs. Each field carries a one-line reason (``why``) that doubles as its CLI help.

The CLI (``cli.py``) is generated from these dataclasses, so a new field is a new flag with no
other code to touch. Every decision threshold lives in :class:`~sinkscope.criteria.Criteria`,
nested here wherever a command makes a sink or chain judgment.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .criteria import Criteria
from .errors import SinkscopeError

# Queries per chunk in the exact chunked attention passes (the default of every --query-chunk): their extra
# memory is B*H*chunk*T, and at T up to this every sequence runs in one chunk. Here, not in capture/, because
# the configs may not import torch.
QUERY_CHUNK = 1024


def field(default: Any = dataclasses.MISSING, *, why: str, choices: tuple | None = None,
          default_factory: Any = dataclasses.MISSING, cli: bool = True, off: str | None = None,
          min: int | None = None):
    """A dataclass field with its reason; ``choices`` restricts CLI values; ``cli=False`` hides it.

    ``off``: for a bool that defaults to True, the help of its ``--no-X`` flag, saying what turning it
    off does. ``min``: the smallest meaningful value of a count (1 for steps, 0 where 0 means "none").
    """
    meta = {"why": why, "choices": choices, "cli": cli, "off": off, "min": min}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class LoadConfig:
    """How to load a model from the hub or a local folder."""

    dtype: str = field("float32", why="weights' dtype; statistics always accumulate in float32",
                       choices=("float32", "bfloat16", "float16"))
    device: str = field("cpu", why="where the model runs (cuda needs a CUDA build of torch)", choices=("cpu", "cuda"))
    device_map: str | None = field(None, why="'auto' spreads a large model over several GPUs via accelerate")
    revision: str | None = field(None, why="hub branch, tag or commit, recorded in provenance")
    trust_remote_code: bool = field(False, why="run a hub repo's own modeling code; off unless you trust it")


@dataclass
class DataConfig:
    """Which token sequences to feed the model."""

    data: str | None = field(None, why="text file, folder of .txt, or .jsonl ('text' or 'input_ids'); "
                             "default: the embedded prompt set")
    random_tokens: bool = field(False, why="feed uniform random token ids instead of text, as in the paper's "
                                "random-input checks")
    seq_len: int = field(64, why="tokens per sequence (the paper measures at T=64)", min=1)
    samples: int = field(100, why="number of sequences to average over", min=1)
    batch_size: int = field(8, why="sequences per forward pass; lower it if memory runs out", min=1)
    bos: str = field("auto", why="prepend the BOS token: auto follows the tokenizer's own habit",
                     choices=("auto", "always", "never"))
    padding_side: str = field("right", why="side to pad shorter sequences on (the sink is the first real token)",
                              choices=("right", "left"))
    seed: int = field(0, why="seed for window sampling and random tokens; same seed, same numbers")


@dataclass
class CaptureConfig:
    """What the attention capture computes besides the sink column."""

    sink_positions: tuple[int, ...] = field((0,), why="key positions to track, counted from the first real token")
    key_importance: bool = field(False, why="also compute Gu et al.'s importance for every key (one more T x T pass, "
                                 "chunked, O(T) memory)")
    full_pattern: bool = field(False, why="also store the mean T x T attention pattern (short sequences only)")
    secondary_sinks: bool = field(False, why="find every key that acts as a sink, per layer, pooled by token (one more "
                                  "chunked T x T pass, O(T) memory; see docs/stream.md)")
    query_chunk: int = field(QUERY_CHUNK, min=1,
                             why="queries per chunk in the chunked passes; bounds extra memory to B*H*chunk*T")
    block_effective_rank: bool = field(False, why="also each block output's effective rank, averaged over sequences "
                                       "(training telemetry); one min(T, D)-sized eigvalsh per sequence and layer")


@dataclass
class ProbeConfig:
    """``sinkscope probe``: measure where and how strongly attention sinks form."""

    load: LoadConfig = field(default_factory=LoadConfig, why="model loading options")
    data: DataConfig = field(default_factory=DataConfig, why="input sequences")
    capture: CaptureConfig = field(default_factory=CaptureConfig, why="attention statistics to capture")
    criteria: Criteria = field(default_factory=Criteria, why="the rules of every sink and chain verdict")
    chain: bool = field(True, why="also measure the causal chain (variance, super neurons, disparity)",
                        off="skip the causal chain and measure only sink statistics (faster)")
    variance_positions: int = field(256, why="positions (from the first token) with per-dim sums for the across-samples "
                                    "std and with effective tokens (also the last); memory is layers x this x hidden "
                                    "x 4 doubles")
    neuron_top_k: int = field(5, why="Li et al. 2026: rows of gate/up ranked by L2 norm, top k per layer", min=1)
    selectivity_positions: int = field(64, why="positions (from the first token) at which super neurons' selectivity "
                                       "is traced, over all sequences; 0: none; memory is layers x this x "
                                       "(2 hidden + intermediate) doubles", min=0)
    out: str | None = field(None, why="output folder for probe.json and Parquet tables")


EXPERIMENT_KINDS = ("ablate", "amplify", "isolate", "massive")  # the experiments of intervene.py (its EXPERIMENTS)
PAPER_LAMBDAS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)  # Li et al. 2026, section 5 (ii)
PAPER_POSITION = 9  # the token that Li et al. 2026 (section 5) isolate and amplify into a sink


@dataclass
class InterveneConfig:
    """``sinkscope intervene MODEL {isolate,amplify,ablate,massive}``."""

    load: LoadConfig = field(default_factory=LoadConfig, why="model loading options")
    data: DataConfig = field(default_factory=DataConfig, why="input sequences")
    position: int = field(PAPER_POSITION, why="target token, counted from the first real token (the paper uses 9)",
                          min=0)
    layers: str | None = field(None, why="layers to edit, 'all' or e.g. 0,1 (default: all for isolate, 0,1 for amplify; "
                               "massive: the one block whose output carries them, found by the chain)")
    lambdas: tuple[float, ...] = field(PAPER_LAMBDAS, why="amplification factors to sweep (the paper's grid)")
    observe: int = field(2, why="layer whose sink score of the target is reported for amplify (the paper: 2)", min=0)
    control: str = field("norm", why="also run the norm-only control o -> lambda*o", choices=("norm", "none"))
    value_mean_tokens: int = field(4096, why="random tokens over which the mean value vector mu is estimated", min=1)
    neurons: str = field("auto", why="super neurons to ablate: auto (the neurons among the writers of the episode "
                                     "present at the sink's onset, or of --episode), L:N[,L:N], or L:E:N inside "
                                     "expert E ('shared' for a shared expert)")
    episode: int | None = field(None, why="with --neurons auto: ablate the writers of this episode (probe.json's "
                                "chain.episodes index) instead of the one present at the onset", min=0)
    dims: str | None = field(None, why="residual dims to ablate: auto (the chain's massive dims) or C[,C]; "
                             "massive: the dims to reset (default auto)")
    mode: str = field("zero", why="ablation: zero, or the mean over non-sink tokens", choices=("zero", "mean"))
    target: str = field("activation", why="ablate the neuron's activation or its down-projection column",
                        choices=("activation", "column"))
    query_chunk: int = field(QUERY_CHUNK, why="queries per chunk in exact chunked attention passes", min=1)
    criteria: Criteria = field(default_factory=Criteria, why="the rules of the chain verdict that --neurons auto "
                               "and --dims auto use, and of the sink rate")
    out: str | None = field(None, why="output folder for intervene.json")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args or tp is type(None):
            return None
        raise SinkscopeError(f"config key '{name}' must not be null")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except SinkscopeError:
                continue
        raise SinkscopeError(f"config key '{name}' has value {value!r} of the wrong type")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v, args[0], name) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise SinkscopeError(f"config key '{name}' must be true or false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise SinkscopeError(f"config key '{name}' must be {tp.__name__}, got {value!r}") from None
    return value


def build(cls: type, values: dict | None = None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and type.

    Unknown keys are refused with the list of known ones, so a typo in a YAML preset never
    silently falls back to a default.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise SinkscopeError(
                f"unknown config key '{prefix}{key}'; known keys: {', '.join(prefix + k for k in known)}"
            )
    for name, f in known.items():
        if name not in values:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            sub = values[name]
            if not isinstance(sub, dict):
                raise SinkscopeError(f"config key '{prefix}{name}' must be a mapping of its own keys")
            kwargs[name] = build(tp, sub, prefix=f"{prefix}{name}.")
            continue
        value = _coerce(values[name], tp, prefix + name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise SinkscopeError(f"config key '{prefix}{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        kwargs[name] = value
    instance = cls(**kwargs)
    check_bounds(instance, prefix)
    return instance


def check_bounds(config: Any, prefix: str = "") -> None:
    """Refuse a count below its field's ``min`` (``--steps 0``), naming the flag and the config key."""
    for f in dataclasses.fields(config):
        value, least = getattr(config, f.name), f.metadata.get("min")
        if dataclasses.is_dataclass(value):
            check_bounds(value, f"{prefix}{f.name}.")
        elif least is not None and isinstance(value, (int, float)) and value < least:
            flag = "--" + f.name.replace("_", "-")
            raise SinkscopeError(f"{flag} (config key '{prefix}{f.name}') must be at least {least}, got {value}")


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SinkscopeError(f"config file {path} does not exist; presets live in configs/") from None
    except yaml.YAMLError as err:
        raise SinkscopeError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SinkscopeError(f"config file {path} must hold a mapping of keys to values")
    return values


def parse_layers(text: str | None, default: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``--layers``: None -> ``default``; "all" -> None (every layer); "0,1" -> (0, 1)."""
    if text is None:
        return default
    if text == "all":
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SinkscopeError(f"--layers must be 'all' or comma-separated integers, got {text!r}") from None


def parse_dims(text: str) -> tuple[int, ...]:
    """``--dims`` given by hand: "112" or "112,1415"."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SinkscopeError(f"--dims must be auto or comma-separated integers, got {text!r}") from None
