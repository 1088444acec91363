"""HTML assembly: one self-contained page, figures as inline SVG, no scripts, no external resources."""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 0; color: #222;
       background: #fafafa; line-height: 1.45; }
header { background: #1f2d3d; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; opacity: 0.85; font-size: 13px; }
nav { background: #fff; border-bottom: 1px solid #ddd; padding: 8px 28px; font-size: 13px; position: sticky; top: 0;
      z-index: 1; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
main { padding: 8px 28px 40px 28px; max-width: 1800px; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 6px 18px 16px 18px; margin: 18px 0; }
section h2 { font-size: 18px; margin: 10px 0 4px 0; }
section > p.intro { margin: 0 0 10px 0; color: #555; font-size: 13px; max-width: 1100px; }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; align-items: start; }
.column h3 { font-size: 14px; margin: 6px 0; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
figure { margin: 0 0 12px 0; }
figure svg { max-width: 100%; height: auto; display: block; }  /* drawn at its own size: one font size */
figcaption { font-size: 12px; color: #555; margin-top: 2px; }
.missing { font-size: 12px; color: #8a5a00; background: #fff7e6; border-left: 3px solid #e6a100; padding: 6px 10px;
           margin: 6px 0 12px 0; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0 12px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f2f4f7; }
td.text, th.text { text-align: left; }
p.verdict { font-size: 13px; background: #f5f8fc; border-left: 3px solid #1f5fa8; padding: 6px 10px; }
code { font-size: 12px; }
p.headline { font-size: 15px; line-height: 1.55; max-width: 1100px; margin: 6px 0 10px 0; }
p.model, p.training, p.convention { font-size: 12px; color: #444; max-width: 1100px; }
article.story { margin: 0 0 18px 0; }
ul.flags { font-size: 12px; color: #8a2a00; }
"""


@dataclass
class Slot:
    """One figure place: the inline SVG, or (left out of the page) why there is none."""

    figure_id: str  # unique in the page, also the file stem under the figures folder
    kind: str  # which figure (sink-heatmap, variance, ...), shared by the runs drawn side by side
    caption: str
    svg: str | None = None
    missing: str | None = None
    link_dir: str = ""  # the figures folder, relative to the page


    def render(self) -> str:
        if self.svg is None:  # a figure without data is left out; Report.missing says why
            return ""
        return (f'<figure class="figure" id="fig-{self.figure_id}" data-figure="{self.kind}">{self.svg}'
                f"<figcaption>{html.escape(self.caption)} "
                f'(<a href="{self._link("svg")}">SVG</a>, <a href="{self._link("png")}">PNG</a>)'
                "</figcaption></figure>")

    def _link(self, ext: str) -> str:
        return html.escape(f"{self.link_dir}/{self.figure_id}.{ext}" if self.link_dir else f"{self.figure_id}.{ext}")


@dataclass
class Column:
    """What one run contributes to a section (side by side with the other runs)."""

    title: str
    colour: str
    parts: list = field(default_factory=list)  # Slot or raw HTML strings

    @property
    def empty(self) -> bool:
        """Nothing to show: every figure left out and no table or text."""
        return not any(p.svg is not None if isinstance(p, Slot) else p for p in self.parts)

    def render(self) -> str:
        body = "".join(p.render() if isinstance(p, Slot) else p for p in self.parts)
        return (f'<div class="column"><h3><span class="swatch" style="background:{self.colour}"></span>'
                f"{html.escape(self.title)}</h3>{body}</div>")


@dataclass
class Section:
    id: str
    title: str
    intro: str
    parts: list = field(default_factory=list)  # Slot, Column list (a row), or raw HTML

    @property
    def empty(self) -> bool:
        return not any(_shows(part) for part in self.parts)

    def render(self) -> str:
        body = []
        for part in self.parts:
            if isinstance(part, list):
                columns = [c for c in part if not c.empty]
                if columns:
                    body.append('<div class="row">' + "".join(c.render() for c in columns) + "</div>")
            elif isinstance(part, Slot):
                body.append(part.render())
            else:
                body.append(part)
        return (f'<section id="{self.id}" data-section="{self.id}"><h2>{html.escape(self.title)}</h2>'
                + (f'<p class="intro">{html.escape(self.intro)}</p>' if self.intro else "")
                + f'{"".join(body)}</section>')


class Raw(str):
    """A table cell that is already HTML (a digest with its tooltip, a cited number)."""


def slug(text: str) -> str:
    """An id-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _shows(part) -> bool:
    """Whether a section part has something to show (a drawn figure, a column that does, or HTML)."""
    if isinstance(part, list):
        return any(not c.empty for c in part)
    if isinstance(part, Slot):
        return part.svg is not None
    return bool(part)


def cell(value) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.4g}"
    if isinstance(value, dict) and "mean" in value and "std" in value:  # compare.json's mean ± std cells
        if value["mean"] is None:
            return "–"
        return f"{value['mean']:.4g} ± {value['std']:.2g}" if value["std"] is not None else f"{value['mean']:.4g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return html.escape(text if len(text) <= 80 else text[:77] + "...")
    return html.escape(str(value))


def table(rows: list[dict], table_id: str, columns: list[str] | None = None) -> str:
    """An HTML table of dict rows; text columns are left-aligned."""
    if not rows:
        return ""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f'<th class="{_align(rows, c)}">{html.escape(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{_align(rows, c)}">{cell(r.get(c))}</td>' for c in columns) + "</tr>"
                   for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _align(rows: list[dict], column: str) -> str:
    return "num" if all(isinstance(r.get(column), (int, float)) or r.get(column) is None for r in rows) else "text"


def json_tables(payload: dict, prefix: str) -> str:
    """A result file of unknown layout (compare.json) as tables: lists of records, mappings of records, scalars."""
    parts, scalars = [], []
    for key, value in payload.items():
        if key in ("schema_version", "kind", "provenance"):
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"<p><b>{html.escape(key)}</b></p>" + table(value, f"{prefix}-{key}"))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            rows = [{"name": name, **{k: v for k, v in row.items()}} for name, row in value.items()]
            parts.append(f"<p><b>{html.escape(key)}</b></p>" + table(rows, f"{prefix}-{key}"))
        else:
            scalars.append({"key": key, "value": value})
    if scalars:
        parts.insert(0, table(scalars, f"{prefix}-scalars"))
    return "".join(parts)


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The page; a section with nothing to show is left out."""
    sections = [s for s in sections if not s.empty]
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(s.render() for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"</header><nav>{nav}</nav><main>{body}</main></body></html>\n")
