"""Result files: schema version, provenance and atomic writes.

Every file sinkscope writes goes through :func:`write_json` / :func:`write_parquet`, so a crash
never leaves a half-written result, and every JSON result carries ``schema_version`` and
``provenance`` so that a report can be regenerated and compared across runs.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .errors import SinkscopeError
from .files import atomic_write_bytes

SCHEMA_VERSION = 3  # bump on any incompatible change to a key listed in docs/results.md, and record it below
# The kinds of result each bump changed. An older file stays readable when no later bump changed its kind,
# so a checkpoint or training run outlives a change to probe.json.
# 2: chain.disparity_layer became disparity_layer_input; 3: chain.super_neurons are the episodes' writer neurons
# (with expert, episode, write, share), chain.evidence lost neurons and finders_agree
CHANGED_KINDS = {2: frozenset({"probe"}), 3: frozenset({"probe"})}


def json_float(x) -> float | None:
    """One statistic for a result payload: a float, or None (JSON null) where it is undefined (NaN)."""
    value = float(x)
    return None if value != value else value


def json_floats(x) -> list:
    """A tensor (or nested list) of statistics as nested lists of :func:`json_float`.

    >>> json_floats([[1, float("nan")], [2.5, 3]])
    [[1.0, None], [2.5, 3.0]]
    """
    values = x.tolist() if hasattr(x, "tolist") else x
    return [json_floats(v) if isinstance(v, list) else json_float(v) for v in values]


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, tensors, numpy values and paths into plain JSON values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors and numpy arrays/scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON; null keeps the file loadable
        return None
    return obj


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    text = json.dumps(to_jsonable(payload), indent=1, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())
    return path


def read_json(path: str | Path, kind: str | None = None) -> dict:
    """Read a sinkscope result file, refusing files from an incompatible schema."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise SinkscopeError(f"{path} does not exist: point at a folder written by sinkscope") from None
    except IsADirectoryError:
        raise SinkscopeError(f"{path} is a folder, not a result file: point at the file inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SinkscopeError(f"{path} is not valid JSON ({err}); re-run the command that wrote it") from None
    version = payload.get("schema_version")
    if not readable_schema(version, payload.get("kind", kind)):
        raise SinkscopeError(
            f"{path} has schema_version {version!r}, this sinkscope reads {SCHEMA_VERSION}; "
            "re-run the command with this version or install the sinkscope that wrote it"
        )
    if kind is not None and payload.get("kind", kind) != kind:
        raise SinkscopeError(f"{path} holds a {payload.get('kind')!r} result, expected {kind!r}")
    return payload


def readable_schema(version, kind: str | None) -> bool:
    """Whether this sinkscope reads a ``kind`` result written under schema ``version``."""
    if version == SCHEMA_VERSION:
        return True
    if not isinstance(version, int) or not 1 <= version < SCHEMA_VERSION:
        return False
    return all(kind not in CHANGED_KINDS.get(later, ()) for later in range(version + 1, SCHEMA_VERSION + 1))


def write_parquet(path: str | Path, columns: dict) -> Path:
    """Write a table (column name -> values) as Parquet, atomically.

    A column is a 1-D numpy array (what :func:`sinkscope.tables.long_table` builds) or a list of plain
    values. Floats are written as double and integers as int64, and a NaN float is written as null: the
    same file, whichever form the column came in. Numeric columns are handed to Arrow as buffers:
    ``pa.array`` would import pandas (half a second) only to ask whether the values are a pandas series.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def numeric(values) -> np.ndarray | None:
        """The column as a float64 or int64 array (None -> NaN), or None for any other kind of values."""
        if isinstance(values, np.ndarray):
            return values if values.dtype.kind in "fiu" else None
        plain = to_jsonable(values)
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in plain):
            return None
        if all(isinstance(v, int) for v in plain):
            return np.array(plain, dtype=np.int64)
        return np.array([np.nan if v is None else v for v in plain], dtype=np.float64)

    def column(values):
        array = numeric(values)
        if array is None:
            return pa.array(to_jsonable(values))
        if array.dtype.kind in "iu":
            return pa.Array.from_buffers(pa.int64(), len(array), [None, pa.py_buffer(array.astype(np.int64))])
        array = np.ascontiguousarray(array, dtype=np.float64)
        missing = np.isnan(array)
        valid = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
        return pa.Array.from_buffers(pa.float64(), len(array), [valid, pa.py_buffer(array)], null_count=int(missing.sum()))

    path = Path(path)
    table = pa.Table.from_arrays([column(values) for values in columns.values()], names=list(columns))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def git_sha() -> str | None:
    """The sinkscope checkout's commit, with ``-dirty`` when it has local changes; None if not a git checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def config_hash(config: Any) -> str:
    """Short stable hash of a config (dataclass or dict), for telling runs apart."""
    text = json.dumps(to_jsonable(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(*, model: str | None = None, revision: str | None = None, config: Any = None,
               seed: int | None = None, dtype: str | None = None, device: str | None = None,
               model_config: dict | None = None) -> dict:
    """Everything needed to say where a result came from and to reproduce it (for a GGUF model, also the
    file's name, size, SHA-256 and quantization types under ``weights``)."""
    import torch
    import transformers

    from . import __version__
    from .gguf_loading import weights_record
    from .files import weights_digest

    weights = weights_record(model)
    return {
        "model": model,
        "revision": revision,
        "weights": weights,
        "weights_sha256": weights["sha256"] if weights else weights_digest(model),  # a GGUF file is hashed once
        "model_config_hash": config_hash(model_config) if model_config is not None else None,
        "config": to_jsonable(config),
        "config_hash": config_hash(config) if config is not None else None,
        "seed": seed,
        "dtype": dtype,
        "device": device,
        "versions": {
            "sinkscope": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "git_sha": git_sha(),
    }
