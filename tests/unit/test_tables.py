"""sinkscope.tables.long_table against a brute-force nested loop over the grid, and its Parquet file
against the file the brute-force lists make (the form every table had before columns became arrays)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow.parquet as pq
import torch

from sinkscope.results import write_parquet
from sinkscope.tables import long_table


def _brute_force(index_names, keep, columns, index_values=None) -> dict:
    labels = index_values or {}
    table = {name: [] for name in (*index_names, *columns)}
    for cell in itertools.product(*(range(n) for n in keep.shape)):  # row-major: the last index runs fastest
        if not keep[cell]:
            continue
        for name, i in zip(index_names, cell):
            table[name].append(labels[name][i] if name in labels else i)
        for name, values in columns.items():
            v = float(values[cell])
            table[name].append(None if math.isnan(v) else v)
    return table


def _as_lists(table: dict) -> dict:
    """Array columns as plain lists, NaN as None, for comparing with the brute force."""
    return {name: [None if v != v else v for v in column.tolist()] for name, column in table.items()}


def _grid(*shape: int, nan_share: float = 0.3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    return x.masked_fill(torch.rand(shape, generator=generator) < nan_share, torch.nan)


def test_dropping_nan_cells_matches_the_nested_loop():
    """probe's tables: a cell never observed (NaN) has no row; the key axis is labelled by its position."""
    x = _grid(2, 3, 2, 5)
    names = ("layer", "head", "key", "query_position")
    positions = {"key": [0, 7]}
    got = long_table(names, ~x.isnan(), {"attention": x}, positions)
    assert _as_lists(got) == _brute_force(names, ~x.isnan(), {"attention": x}, positions)
    assert not np.isnan(got["attention"]).any() and set(got["key"].tolist()) == {0, 7}


def test_a_separate_mask_keeps_nan_cells():
    """chain's tables: the rows are the positions seen; a statistic undefined there stays NaN (null on disk)."""
    seen = torch.rand(3, 6, generator=torch.Generator().manual_seed(1)) < 0.7
    a, b = _grid(3, 6, seed=2).double(), _grid(3, 6, seed=3)
    got = long_table(("layer", "position"), seen, {"a": a, "b": b})
    assert _as_lists(got) == _brute_force(("layer", "position"), seen, {"a": a, "b": b})
    assert np.isnan(got["a"]).any() and len(got["layer"]) == int(seen.sum())


def test_an_expanded_mask_and_an_empty_grid():
    seen = torch.tensor([[True, False, True], [False, False, True]])  # (L, T) shared by every head
    keep = seen[:, None].expand(-1, 4, -1)
    x = _grid(2, 4, 3, seed=4)
    names = ("layer", "head", "position")
    assert _as_lists(long_table(names, keep, {"x": x})) == _brute_force(names, keep, {"x": x})
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert _as_lists(long_table(("layer", "position"), none, {"x": x[:, 0]})) == {"layer": [], "position": [], "x": []}


def test_columns_are_typed_arrays_whatever_the_tensor_width():
    """No per-cell Python objects: index columns int64, floats float64 (bfloat16 included), counts int64."""
    keep = torch.ones(2, 3, dtype=torch.bool)
    got = long_table(("layer", "position"), keep, {"half": torch.ones(2, 3, dtype=torch.bfloat16),
                                                    "count": torch.arange(6, dtype=torch.int32).view(2, 3),
                                                    "flag": keep})
    assert {name: column.dtype for name, column in got.items()} == {
        "layer": np.int64, "position": np.int64, "half": np.float64, "count": np.int64, "flag": np.bool_}


def test_the_parquet_file_equals_the_one_written_from_lists(tmp_path):
    """Before and after: the brute force's lists (None for a missing value, the old form) and long_table's
    arrays (NaN) write files that read back equal, schema and nulls included."""
    x = _grid(3, 2, 4, seed=5).double()
    y = _grid(3, 2, 4, seed=6)
    keep = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(7)) < 0.8
    names = ("layer", "head", "position")
    labels = {"position": [0, 2, 5, -1]}
    old = pq.read_table(write_parquet(tmp_path / "old.parquet", _brute_force(names, keep, {"x": x, "y": y}, labels)))
    new = pq.read_table(write_parquet(tmp_path / "new.parquet", long_table(names, keep, {"x": x, "y": y}, labels)))
    assert new.equals(old) and new.schema.equals(old.schema)
    assert new.column("y").null_count == sum(v is None for v in old.column("y").to_pylist()) > 0
