"""The peers' results from the command line: a probe names a published checkpoint's match, intervene massive runs."""

from __future__ import annotations

import json

import pytest

from sinkscope import peers
from sinkscope.cli import main
from sinkscope.fixtures import planted_sink_model


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    """The planted model saved under a folder named like a published checkpoint, and its token ids."""
    model, answer = planted_sink_model()
    folder = tmp_path_factory.mktemp("models") / "planted-sink"
    model.save_pretrained(folder)
    data = folder.parent / "ids.jsonl"
    data.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in answer.inputs(8, 24)))
    return folder, data, answer


def test_probe_says_the_published_coordinate_matches(planted_dir, tmp_path, capsys, monkeypatch):
    folder, data, answer = planted_dir
    triple = [answer.layer, answer.dim, answer.neuron]
    monkeypatch.setattr(peers, "published_table", lambda: {"tests/planted-sink": {"coordinates": [triple],
                                                                                  "source": "planted fixture"}})
    assert main(["probe", str(folder), "--data", str(data), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "published super weights of tests/planted-sink" in printed and "found" in printed
    payload = json.loads((tmp_path / "probe.json").read_text())
    assert payload["published_super_weights"]["matches"] is True
    assert payload["layer_magnitudes"]["top1_dim"][answer.layer] == answer.dim


def test_intervene_massive_prints_sun_table(planted_dir, tmp_path, capsys):
    folder, data, answer = planted_dir
    code = main(["intervene", str(folder), "massive", "--data", str(data), "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    for run in ("original", "zero", "mean"):
        assert run in printed
    payload = json.loads((tmp_path / "intervene.json").read_text())
    assert payload["kind"] == "massive" and payload["dims"] == [answer.dim] and payload["layer"] == answer.layer
