"""Long-format tables: the one way a tensor over a grid becomes the rows of a Parquet file.

A table is a dict of equal-length columns (column name -> 1-D numpy array), as
:func:`sinkscope.results.write_parquet` takes it. Every (layer, head, position, ...) table of ``probe`` is
built here, so they all order rows the same way and write a missing value the same way. Columns are
arrays, not lists: a probe at 1 x 4096 tables about two million cells, and one Python object per cell
cost seconds to build and seconds more to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


def long_table(index_names: Sequence[str], keep: torch.Tensor, columns: Mapping[str, torch.Tensor],
               index_values: Mapping[str, Sequence] | None = None) -> dict[str, np.ndarray]:
    """One row per cell of a grid where ``keep`` is true, in row-major (C) order.

    keep: (S) bool over the grid, one dim per name in ``index_names``; each of those columns (int64) holds
    the cell's index along its dim, or ``index_values[name][index]`` where a mapping is given (e.g. the
    tracked key positions of a dim that enumerates them). columns: name -> (S) tensor, written float64
    (any float dtype), int64 (any integer dtype) or bool; a NaN cell kept by ``keep`` stays NaN here and
    is written as Parquet's null by :func:`~sinkscope.results.write_parquet`.

    >>> x = torch.tensor([[1.0, float("nan")], [3.0, 4.0]])
    >>> {k: v.tolist() for k, v in long_table(("layer", "key"), ~x.isnan(), {"value": x}, {"key": [0, 5]}).items()}
    {'layer': [0, 1, 1], 'key': [0, 0, 5], 'value': [1.0, 3.0, 4.0]}
    """
    cells = keep.nonzero().cpu().numpy()  # (N, dims) int64, row-major like the flattened grid
    labels = index_values or {}
    table = {}
    for axis, name in enumerate(index_names):
        index = cells[:, axis]
        table[name] = np.asarray(labels[name], dtype=np.int64)[index] if name in labels else index
    for name, values in columns.items():
        table[name] = _column(values[keep])
    return table


def _column(kept: torch.Tensor) -> np.ndarray:
    """(N) kept cells as the numpy column Parquet gets: float64, int64 or bool, whatever the tensor's width."""
    if kept.is_floating_point():
        kept = kept.double()  # bfloat16 has no numpy dtype; float64 is what the tables have always held
    elif kept.dtype != torch.bool:
        kept = kept.long()
    return kept.cpu().numpy()
