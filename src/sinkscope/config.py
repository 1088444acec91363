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


def field(default: Any = dataclasses.MISSING, *, why: str, choices: tuple | None = None,
          default_factory: Any = dataclasses.MISSING, cli: bool = True):
    """A dataclass field with its reason; ``choices`` restricts CLI values; ``cli=False`` hides it."""
    meta = {"why": why, "choices": choices, "cli": cli}
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
    random_tokens: bool = field(False, why="uniform random token ids, as in the paper's random-input checks")
    seq_len: int = field(64, why="tokens per sequence (the paper measures at T=64)")
    samples: int = field(100, why="number of sequences to average over")
    batch_size: int = field(8, why="sequences per forward pass; lower it if memory runs out")
    bos: str = field("auto", why="prepend the BOS token: auto follows the tokenizer's own habit",
                     choices=("auto", "always", "never"))
    padding_side: str = field("right", why="side to pad shorter sequences on (the sink is the first real token)",
                              choices=("right", "left"))
    seed: int = field(0, why="seed for window sampling and random tokens; same seed, same numbers")


@dataclass
class CaptureConfig:
    """What the attention capture computes besides the sink column."""

    sink_positions: tuple[int, ...] = field((0,), why="key positions to track, counted from the first real token")
    key_importance: bool = field(False, why="Gu et al.'s importance for every key (costs one more T x T pass, "
                                 "chunked, O(T) memory)")
    full_pattern: bool = field(False, why="also store the mean T x T attention pattern (short sequences only)")
    secondary_sinks: bool = field(False, why="find every key that acts as a sink, per layer, pooled by token (one more "
                                  "chunked T x T pass, O(T) memory; see docs/stream.md)")
    query_chunk: int = field(1024, why="queries per chunk in the chunked passes; bounds extra memory to B*H*chunk*T")


@dataclass
class ProbeConfig:
    """``sinkscope probe``: measure where and how strongly attention sinks form."""

    load: LoadConfig = field(default_factory=LoadConfig, why="model loading options")
    data: DataConfig = field(default_factory=DataConfig, why="input sequences")
    capture: CaptureConfig = field(default_factory=CaptureConfig, why="attention statistics to capture")
    criteria: Criteria = field(default_factory=Criteria, why="the rules of every sink and chain verdict")
    chain: bool = field(True, why="also measure the causal chain (variance, super neurons, disparity); off for speed")
    variance_positions: int = field(256, why="positions (from the first token) with per-dim sums for the across-samples "
                                    "std; memory is layers x this x hidden x 4 doubles")
    neuron_top_k: int = field(5, why="Li et al. 2026: rows of gate/up ranked by L2 norm, top k per layer")
    selectivity_samples: int = field(16, why="sequences re-run to trace each super neuron's selectivity by position")
    out: str | None = field(None, why="output folder for probe.json and Parquet tables")


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
    return cls(**kwargs)


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
