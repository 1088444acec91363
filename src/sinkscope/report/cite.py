"""Numbers on the page that name their source: each is read from one field of one result file and rendered
as ``<span class="num" data-file=... data-field=... data-fmt=...>``, so that a number which appears twice comes
from the same field by construction, and a test can read the page back and check every one against its file.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

FieldPath = tuple  # keys and list indices, e.g. ("sink", "ratio", 24)


def field(payload: dict, path: FieldPath):
    """The value at ``path`` inside ``payload`` (None where a key or index is absent)."""
    value = payload
    for key in path:
        if isinstance(value, dict):
            value = value.get(key if not isinstance(key, int) else str(key), value.get(key))
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def fmt(value, spec: str) -> str:
    """``value`` formatted by ``spec`` ('.1f', '.3f', 'd', ...); a dash where it is missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


@dataclass(frozen=True)
class Source:
    """One result file: where it lies (as the page names it) and its payload."""

    path: Path
    payload: dict

    def get(self, *path):
        return field(self.payload, path)

    def num(self, path: FieldPath, spec: str = ".3g") -> str:
        """The field at ``path`` as page HTML that names its file and field."""
        text = fmt(field(self.payload, path), spec)
        return (f'<span class="num" data-file="{html.escape(str(self.path))}" '
                f'data-field="{html.escape(".".join(map(str, path)))}" data-fmt="{spec}">{text}</span>')

    def text(self, path: FieldPath, spec: str = ".3g") -> str:
        """The same number as plain text, for a figure that shows it (the page's test finds it in the SVG)."""
        return fmt(field(self.payload, path), spec)
