"""sinkscope.tables.long_table against a brute-force nested loop over the grid."""

from __future__ import annotations

import itertools
import math

import torch

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
    assert got == _brute_force(names, ~x.isnan(), {"attention": x}, positions)
    assert None not in got["attention"] and set(got["key"]) == {0, 7}


def test_a_separate_mask_keeps_nan_cells_as_none():
    """chain's tables: the rows are the positions seen; a statistic undefined there is None (Parquet's null)."""
    seen = torch.rand(3, 6, generator=torch.Generator().manual_seed(1)) < 0.7
    a, b = _grid(3, 6, seed=2).double(), _grid(3, 6, seed=3)
    got = long_table(("layer", "position"), seen, {"a": a, "b": b})
    assert got == _brute_force(("layer", "position"), seen, {"a": a, "b": b})
    assert None in got["a"] and len(got["layer"]) == int(seen.sum())


def test_an_expanded_mask_and_an_empty_grid():
    seen = torch.tensor([[True, False, True], [False, False, True]])  # (L, T) shared by every head
    keep = seen[:, None].expand(-1, 4, -1)
    x = _grid(2, 4, 3, seed=4)
    names = ("layer", "head", "position")
    assert long_table(names, keep, {"x": x}) == _brute_force(names, keep, {"x": x})
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert long_table(("layer", "position"), none, {"x": x[:, 0]}) == {"layer": [], "position": [], "x": []}
