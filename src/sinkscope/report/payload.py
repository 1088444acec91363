"""What a figure reads from a result payload: the keys it needs, as floats, or a one-line reason why not.

Every figure module goes through these, so a payload that lacks a key is reported the same way
everywhere (the report leaves that figure out and names it in ``Report.missing`` instead of failing).
"""

from __future__ import annotations

import math

import numpy as np


class MissingData(Exception):
    """The result files lack what a figure needs; the message says what is missing."""


def need(payload: dict | None, *keys: str) -> list:
    """payload[key] for each key, or MissingData naming the first one absent (or null)."""
    if payload is None:
        raise MissingData("no result file for this figure")
    values = []
    for key in keys:
        value = payload.get(key)
        if value is None:
            raise MissingData(f"the result file has no '{key}'")
        values.append(value)
    return values


def finite(values) -> np.ndarray:
    """Floats with None -> NaN."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)
