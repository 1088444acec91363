"""A real pretrained model from a GGUF file: SmolLM2-135M-Instruct, as llama.cpp users keep it.

The reference folder is built here with transformers alone (its GGUF reader, then save_pretrained), so
probe on the GGUF file is checked against a load path that shares no sinkscope code.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from sinkscope.cli import main

pytestmark = pytest.mark.slow
PROBE = ["--samples", "8", "--seq-len", "32", "--no-chain"]


@pytest.fixture(scope="module")
def dequantized_folder(smollm2_gguf, tmp_path_factory):
    """The dequantized model and its tokenizer written by save_pretrained, through transformers only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2-hf")
    source, name = str(smollm2_gguf.parent), smollm2_gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source, gguf_file=name)
    if hasattr(config, "quantization_config"):  # transformers refuses to save a model it thinks quantized
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, gguf_file=name).save_pretrained(folder)
    return folder


def _probe(model, out) -> dict:
    assert main(["probe", str(model), *PROBE, "--out", str(out)]) == 0
    return json.loads((out / "probe.json").read_text())


def test_probe_on_the_gguf_file_matches_its_save_pretrained_folder(smollm2_gguf, dequantized_folder, tmp_path,
                                                                   monkeypatch):
    from gguf import GGUFReader

    parses = []
    parse = GGUFReader.__init__
    monkeypatch.setattr(GGUFReader, "__init__", lambda self, *a, **k: parses.append(a) or parse(self, *a, **k))
    from_gguf = _probe(smollm2_gguf, tmp_path / "gguf")
    assert len(parses) == 1  # config, tokenizer, weights and the check share one reader (about 3 s each)
    monkeypatch.undo()
    from_folder = _probe(dequantized_folder, tmp_path / "folder")
    assert from_gguf["data"]["sequences"] == from_folder["data"]["sequences"] == 8
    torch.testing.assert_close(torch.tensor(from_gguf["sink_score"]), torch.tensor(from_folder["sink_score"]),
                               atol=1e-4, rtol=0)
    weights = from_gguf["provenance"]["weights"]
    with open(smollm2_gguf, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    types = sorted({t.tensor_type.name for t in GGUFReader(str(smollm2_gguf)).tensors})
    assert weights == {"format": "gguf", "file": smollm2_gguf.name, "bytes": os.path.getsize(smollm2_gguf),
                       "sha256": digest, "quantization": types, "dequantized": True}
    assert "Q4_1" in types and from_folder["provenance"]["weights"] is None


def test_a_folder_holding_the_gguf_file_is_the_model(smollm2_gguf, tmp_path):
    folder = tmp_path / "ollama-like"
    folder.mkdir()
    (folder / smollm2_gguf.name).symlink_to(smollm2_gguf)
    payload = _probe(folder, tmp_path / "out")
    assert payload["model"]["n_layers"] == 30 and payload["provenance"]["weights"]["file"] == smollm2_gguf.name


def test_a_truncated_real_gguf_is_torn(smollm2_gguf, tmp_path, capsys):
    cut = tmp_path / smollm2_gguf.name
    with open(smollm2_gguf, "rb") as src:
        cut.write_bytes(src.read(smollm2_gguf.stat().st_size * 2 // 3))
    assert main(["probe", str(cut), *PROBE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cut} is torn or corrupt" in err


def test_demo_tells_the_whole_story_on_the_gguf_file(smollm2_gguf, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", str(smollm2_gguf), "--quiet", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    label = smollm2_gguf.name.removesuffix(".gguf")
    for step in ("probe", "probe-random", "isolate", "amplify", "ablate", "stream"):
        assert list((out / label / step).glob("*.json")), step
    assert (out / "report.html").is_file()
    summary = "\n".join(lines)
    for start in ("sink: The attention sink sits on the first token: it sets in at layer 3", "episodes: dim 507",
                  "[onset]", "C1 variance (random tokens, no BOS)", "isolate: Isolating token 9",
                  "amplify: Amplifying token 9", "ablate (--neurons auto): Ablating", "stream: Under a KV budget of",
                  "StreamingLLM's dependence"):
        assert start in summary, start
    assert "1.0x" not in summary and "not monotonically" not in summary  # issue 24's words
