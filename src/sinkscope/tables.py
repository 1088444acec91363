"""Long-format tables: the one way a tensor over a grid becomes the rows of a Parquet file.

A table is a dict of equal-length columns (column name -> list), as :func:`sinkscope.results.write_parquet`
takes it. Every (layer, head, position, ...) table of ``probe`` is built here, so they all order rows
the same way and write a missing value the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def long_table(index_names: Sequence[str], keep: torch.Tensor, columns: Mapping[str, torch.Tensor],
               index_values: Mapping[str, Sequence] | None = None) -> dict[str, list]:
    """One row per cell of a grid where ``keep`` is true, in row-major (C) order.

    keep: (S) bool over the grid, one dim per name in ``index_names``; each of those columns holds the
    cell's index along its dim, or ``index_values[name][index]`` where a mapping is given (e.g. the
    tracked key positions of a dim that enumerates them). columns: name -> (S) tensor; a NaN cell
    kept by ``keep`` is written None, Parquet's null.

    >>> x = torch.tensor([[1.0, float("nan")], [3.0, 4.0]])
    >>> long_table(("layer", "key"), ~x.isnan(), {"value": x}, {"key": [0, 5]})
    {'layer': [0, 1, 1], 'key': [0, 0, 5], 'value': [1.0, 3.0, 4.0]}
    """
    cells = keep.nonzero()  # (N, dims), row-major like the flattened grid
    labels = index_values or {}
    table = {}
    for axis, name in enumerate(index_names):
        index = cells[:, axis].tolist()
        table[name] = [labels[name][i] for i in index] if name in labels else index
    for name, values in columns.items():
        kept = values[keep]
        # only a column that holds a NaN pays for a Python pass over its cells (v != v: NaN)
        table[name] = [None if v != v else v for v in kept.tolist()] if bool(kept.isnan().any()) else kept.tolist()
    return table
