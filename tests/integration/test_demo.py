"""``sinkscope demo`` end to end on tiny saved models: the planted-sink fixture and a random tiny llama."""

from __future__ import annotations

import json
import re

import pytest

from sinkscope.cli import main
from sinkscope.demo import DEFAULT_STRUCTURAL, amplify_plan
from sinkscope.demo_summary import ModelResults, chain_summary
from sinkscope.fixtures import planted_sink_model
from sinkscope.models import embedded_path
from sinkscope.testing import save_tiny

from report_pages import headline, named_neurons, neuron_table

FAST = ["--samples", "6", "--seq-len", "24", "--lambdas", "1,10", "--value-mean-tokens", "96", "--quiet",
        "--structural", "none"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted-sink llama saved as a folder (no tokenizer) and BOS-first token ids as .jsonl data."""
    folder = tmp_path_factory.mktemp("planted")
    model, answer = planted_sink_model(layer=1, neuron=5, dim=3)
    model.save_pretrained(folder / "planted")
    data = folder / "ids.jsonl"
    data.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in answer.inputs(6, 24)))
    return folder / "planted", data, answer


def test_demo_finds_the_planted_chain_and_draws_it_beside_the_twin(planted, tmp_path, capsys):
    model, data, answer = planted
    twin = tmp_path / "tiny-llama"
    save_tiny("llama", twin)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--model", str(model), "--twin", str(twin), "--data", str(data), *FAST])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"report: {out / 'report.html'}"
    summary = lines[1:11]
    assert len(summary) == 10 and lines[11].startswith("demo finished in")
    assert summary[0].startswith("demo: planted vs tiny-llama")
    assert f"layer {answer.layer} neuron {answer.neuron} -> dim {answer.dim}" in summary[3]
    assert f"onset at layer {answer.onset_layer}" in summary[1]
    assert summary[2].startswith("C1 variance (random tokens, no BOS): at the o_proj input of layer")
    assert "consistent with the paper" in summary[5]
    assert summary[9].startswith("tiny-llama:")
    for kind in ("probe/probe.json", "probe-random/probe.json", "isolate/intervene.json",
                 "amplify/intervene.json", "ablate/intervene.json"):
        assert (out / "planted" / kind).exists(), kind
    html = (out / "report.html").read_text()
    for kind in ("sink-heatmap", "variance", "super-neurons", "dom-ratio", "massive", "qk-locking", "chain",
                 "amplify", "isolate", "ablate"):
        assert f'id="fig-{kind}--planted"' in html, kind
    assert 'id="fig-sink-heatmap--tiny-llama"' in html
    named = named_neurons(headline(html, "planted"))  # the headline's writers are rows of the C2 table
    assert named == {(answer.layer, answer.neuron)} and named <= neuron_table(html, "planted")
    assert (out / "report_figures" / "chain--planted.png").exists()
    # the random twin has no super neuron: its ablation is skipped and its figure left out of the page
    assert not (out / "tiny-llama" / "ablate").exists()
    assert 'id="fig-ablate--tiny-llama"' not in html and not (out / "report_figures" / "ablate--tiny-llama.png").exists()


def test_demo_runs_on_natural_text_without_a_twin_and_isolates_on_the_structural_model(tmp_path, capsys):
    model = tmp_path / "tiny"
    save_tiny("llama", model)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(model), "--twin", "none", "--samples", "4",
                 "--seq-len", "16", "--lambdas", "1,5", "--value-mean-tokens", "64", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[10] == "twin: none compared (--twin none)"
    assert embedded_path(DEFAULT_STRUCTURAL) is not None  # shipped in the package, so the demo always runs it
    assert f"; {DEFAULT_STRUCTURAL} (first-position sink by structure): isolating token 9" in lines[7]
    isolate = json.loads((out / DEFAULT_STRUCTURAL / "isolate" / "intervene.json").read_text())
    assert isolate["provenance"]["model"] == DEFAULT_STRUCTURAL
    assert f'id="fig-isolate--{DEFAULT_STRUCTURAL}"' in (out / "report.html").read_text()
    payload = json.loads((out / "tiny" / "probe" / "probe.json").read_text())
    assert payload["data"]["source"].endswith("embedded-prompts-windows.jsonl")  # the prompts, cut to full windows
    windows = [json.loads(line)["input_ids"]
               for line in (out / "tiny" / "embedded-prompts-windows.jsonl").read_text().splitlines()]
    assert len(windows) == 4 and all(len(w) == 16 for w in windows)
    assert json.loads((out / "tiny" / "probe-random" / "probe.json").read_text())["data"]["source"] == "random-tokens"


def test_demo_refuses_the_same_model_twice(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--model", "a/m", "--twin", "b/m", "--quiet"]) == 2
    assert "must differ" in capsys.readouterr().err


def test_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--model", str(tmp_path / "nope"), "--twin", "none", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"does not exist|not found|cannot", err)


@pytest.mark.parametrize(("onset", "layers", "expected"), [
    (2, 6, (2, (0, 1))),  # the paper: observe 2, amplify 0 and 1
    (4, 6, (4, (0, 1, 2, 3))),
    (None, 6, (2, (0, 1))),
    (0, 2, (1, (0,))),
])
def test_amplify_plan(onset, layers, expected):
    assert amplify_plan(onset, layers) == expected


def test_summary_has_ten_lines_even_when_nothing_was_found():
    empty = {"data": {"sequences": 2, "max_len": 8}, "layer_sink_score": [0.1, 0.1], "onset_layer": None,
             "sink_rate": 0.0}
    lines = chain_summary([ModelResults("m", empty, empty, note="no super neuron found, so nothing to ablate")])
    assert len(lines) == 10
    assert lines[1].startswith("sink: none") and "none found" in lines[3]
    assert lines[2].startswith("C1 variance: not measured")
    assert lines[8] == "ablate: skipped, no super neuron found, so nothing to ablate"
