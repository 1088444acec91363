"""The report: result files (probe.json, intervene.json, training logs, compare.json) in, one offline HTML page
with inline SVG figures out, plus PNG and SVG files of every figure beside it.

>>> from sinkscope.report import build_report  # doctest: +SKIP
>>> build_report(["runs/demo"], "runs/demo/report.html").figures[:2]  # doctest: +SKIP
['sink-rate', 'sink-heatmap--organism-softmax']
"""

from .build import SECTIONS, Report, build_report
from .figures_sink import MissingData
from .load import load_results

__all__ = ["SECTIONS", "MissingData", "Report", "build_report", "load_results"]
