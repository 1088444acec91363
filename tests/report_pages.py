"""Reading a report page back, for the unit and browser tests: the cited numbers against their result files
(with this module's own field walker, independent of the report's), and a model's headline as text."""

from __future__ import annotations

import html as h
import json
import re
from pathlib import Path

NUM = re.compile(r'<span class="num" data-file="([^"]+)" data-field="([^"]+)" data-fmt="([^"]+)">([^<]*)</span>')


def walk(payload, dotted: str):
    """The field ``a.b.3.c`` of a JSON payload (digits index lists), written independently of the report's."""
    value = payload
    for part in dotted.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def cited(html: str) -> list[tuple[str, str, str, str]]:
    return [(h.unescape(f), h.unescape(d), s, t) for f, d, s, t in NUM.findall(html)]


def check_cited_numbers(html: str) -> int:
    """Every cited number equals its file's field, and one field always reads the same; returns how many."""
    numbers = cited(html)
    files: dict[str, dict] = {}
    seen: dict[tuple[str, str], str] = {}
    for file, dotted, spec, text in numbers:
        payload = files.setdefault(file, json.loads(Path(file).read_text()))
        assert text == format(walk(payload, dotted), spec), (file, dotted, text)
        assert seen.setdefault((file, dotted), text) == text
    return len(numbers)


def headline(html: str, model: str) -> str:
    story = re.search(rf'<article class="story" id="model-{model}".*?</article>', html, re.DOTALL).group(0)
    return re.sub(r"<[^>]+>", "", re.search(r'<p class="headline">(.*?)</p>', story, re.DOTALL).group(1))


def named_neurons(text: str) -> set[tuple[int, int]]:
    """(layer, neuron) of every "neuron N of layer L" a sentence names."""
    return {(int(layer), int(n)) for n, layer in re.findall(r"neuron (\d+) of layer (\d+)", text)}


def neuron_table(html: str, model: str) -> set[tuple[int, int]]:
    """(layer, neuron) of each row of a model's C2 table (none where the page has no table for it)."""
    table = re.search(rf'<table[^>]*neuron-table--{model}".*?</table>', html, re.DOTALL)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)
            for row in re.findall(r"<tr.*?</tr>", table.group(0) if table else "", re.DOTALL)]
    return {(int(cells[0]), int(cells[1])) for cells in rows if cells}


FIGURE_FONT_PX = {8.0, 9.0}  # style.py: text 8 pt, titles 9 pt (matplotlib's SVG writes 1 pt as 1 px)
SUPERSCRIPT_PX = 5.6  # mathtext's exponent of an 8 pt log-scale tick label (10^3): 0.7 of it


def figure_font_sizes(html: str) -> set[float]:
    """Every font size used inside the page's inline SVG figures, in px."""
    sizes = set()
    for svg in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        sizes |= {float(s) for s in re.findall(r"font-size:\s*([0-9.]+)px", svg)}
        sizes |= {float(s) for s in re.findall(r"font:[^;\"']*?([0-9.]+)px", svg)}
    return sizes
