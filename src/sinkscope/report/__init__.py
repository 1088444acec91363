"""The report: result files (probe.json, intervene.json, training logs, compare.json) in, one offline HTML page
with inline SVG figures out, plus PNG and SVG files of every figure beside it.

>>> import tempfile, torch, transformers, sinkscope
>>> from sinkscope.report import build_report
>>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
>>> out = tempfile.mkdtemp()
>>> _ = sinkscope.probe(transformers.AutoModelForCausalLM.from_config(cfg), torch.randint(0, 64, (4, 16)),
...                     chain=False, out=out)
>>> build_report([out], out + "/report.html").figures[:2]
['sink-rate', 'sink-heatmap--llamaforcausallm']
"""

from .build import SECTIONS, Report, build_report
from .payload import MissingData
from .load import load_results

__all__ = ["SECTIONS", "MissingData", "Report", "build_report", "load_results"]
