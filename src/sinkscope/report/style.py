"""Shared look of every report figure: one colour per attention variant, sizes, and SVG/PNG output.

The same variant always gets the same colour in every figure (softmax blue, headnorm orange, ...),
so a reader can follow the baseline and the fix across the page without reading legends twice.
"""

from __future__ import annotations

import io
import re

import matplotlib
from matplotlib.figure import (
    Figure,  # a bare Figure draws with Agg and never opens a window
)

# One colour per attention variant (the names of sinkscope.train.model.VARIANTS), colour-blind safe
# (Okabe-Ito). Runs whose variant is unknown take the OTHER_COLOURS in order.
VARIANT_COLOURS = {
    "softmax": "#0072B2",  # blue: the baseline with a sink
    "headnorm": "#E69F00",  # orange: the fix
    "gated": "#009E73",
    "sigmoid": "#CC79A7",
    "softmax1": "#56B4E9",
    "sink_logit": "#D55E00",
}
OTHER_COLOURS = ("#444444", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF")
HIGHLIGHT = "#D62728"  # massive dims, onset markers, locked heads
NEUTRAL = "#9A9A9A"  # "the other tokens", controls
FIT_COLOUR = "#222222"  # fitted curves, full attention
# Things that are not runs get colours no run, and no other role, ever takes, so a colour means one thing
# on the whole page (tests/unit/test_report.py checks the roles are disjoint).
DIM_COLOURS = (HIGHLIGHT, "#7F0000", "#F4A582", "#B2182B")  # massive dims: reds, the first is HIGHLIGHT
POLICY_COLOURS = {"window": "#6A3D9A", "discovered": "#1A1A6E"}  # KV policies: purple, navy; first-k: browns
FIRST_K_COLOURS = ("#A6761D", "#5C3A0E", "#D9A441", "#8C6D31")

RANDOM_STYLE = "--"  # random-token inputs are dashed, natural text solid, in every figure
CACHE_STYLE = "-."  # stream's cache positions (original positions solid); dashes stay random tokens'
RANDOM_HATCH = "///"  # ... and hatched where drawn as bars
NATURAL_STYLE = "-"

FIG_WIDTH = 6.4  # inches; two runs side by side fit a laptop screen at 100 % zoom
WIDE_WIDTH = 7.6  # inches, for two panels that each carry a colour bar
FIG_DPI = 110

matplotlib.rcParams.update({
    "svg.fonttype": "none",  # text stays text: smaller files, searchable, selectable
    "svg.hashsalt": "sinkscope",  # deterministic SVG ids, so a report is reproducible byte for byte
    "axes.spines.top": False,
    "axes.spines.right": False,
    # one font size across figures: text 8 pt, titles 9 pt (each figure is drawn at its own size, never stretched)
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 9,
    "font.family": "DejaVu Sans",
})


def policy_colour(name: str, first_k_index: int = 0) -> str:
    """The colour of a KV policy: window and discovered fixed, the first-k policies in FIRST_K_COLOURS order."""
    return POLICY_COLOURS.get(name) or FIRST_K_COLOURS[first_k_index % len(FIRST_K_COLOURS)]


def variant_colour(variant: str | None, index: int = 0) -> str:
    """The colour of ``variant``; unknown variants cycle through OTHER_COLOURS by ``index``."""
    if variant in VARIANT_COLOURS:
        return VARIANT_COLOURS[variant]
    return OTHER_COLOURS[index % len(OTHER_COLOURS)]


def new_figure(rows: int = 1, cols: int = 1, height: float = 3.6, width: float = FIG_WIDTH, **kwargs):
    """A figure not registered with pyplot (so nothing leaks between figures) and its axes."""
    fig = Figure(figsize=(width, height), dpi=FIG_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def svg_text(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # no timestamp: same files, same bytes
    return buffer.getvalue()


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')


def inline_svg(svg: str, prefix: str) -> str:
    """SVG text ready to sit inside HTML: no XML prolog, every id prefixed so figures cannot clash.

    Matplotlib names elements ``figure_1``, ``patch_1`` ... in every file, and clip paths by hash;
    prefixing ids and the references to them keeps each figure's ids unique in one page.
    """
    start = svg.find("<svg")
    body = svg[start:] if start >= 0 else svg
    body = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', body)
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", body)


MAX_LAYER_TICKS = 16  # a tick for every layer up to here; beyond, every 2nd, 5th ... so 30+ labels never touch
LAYER_AXIS = "layer k (0-based)"
LAYER_INPUT_AXIS = "layer input k (k + 1 = block k's output; last = final norm)"
LOG_DECADES = 2  # values spanning more than this many decades get a log axis, so small ones are not flattened


def integer_axis(axis, max_ticks: int = MAX_LAYER_TICKS) -> None:
    """Layers, heads and positions are whole numbers: no 0.5 ticks, and at most ``max_ticks`` labels."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=max_ticks, integer=True, steps=[1, 2, 5, 10]))


def log_axis(ax, axis: str = "y") -> None:
    """A log scale labelled 1, 2, 5, 10, 20 ...: over less than a decade matplotlib labels its minor ticks
    in long scientific form, and neighbouring labels run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_formatter(NullFormatter())


def log_if_wide(ax, values, axis: str = "y") -> bool:
    """A log scale when the positive finite ``values`` span more than LOG_DECADES decades; returns whether set."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    wide = v.size > 1 and np.log10(v.max() / v.min()) > LOG_DECADES
    if wide:
        log_axis(ax, axis)
    return bool(wide)



def tag(artist, gid: str):
    """Give an artist an SVG id; a bar container tags each bar ``gid``, ``gid-1``, ``gid-2`` ..."""
    patches = getattr(artist, "patches", None)
    if patches is not None:
        for i, patch in enumerate(patches):
            patch.set_gid(gid if i == 0 else f"{gid}-{i}")
    else:
        artist.set_gid(gid)
    return artist
