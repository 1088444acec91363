"""What result files say about their data and weights: digests against hashlib, counts against a loop."""

from __future__ import annotations

import hashlib

from sinkscope.data import PROMPTS_FILE, describe_data
from sinkscope.files import weights_digest


def test_a_data_file_is_named_and_hashed_and_counted(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("some text")
    sequences = [[1, 2, 3], [4, 5], [6]]
    described = describe_data(str(data), random_tokens=False, bos="never", seq_len=3, sequences=sequences)
    assert described == {"source_name": "corpus.txt", "sha256": hashlib.sha256(b"some text").hexdigest(),
                         "bos": "never", "seq_len": 3, "sequences": 3, "tokens": 6}


def test_embedded_prompts_and_random_tokens_are_named():
    prompts = describe_data(None, random_tokens=False, bos="auto", seq_len=8, sequences=[[1]])
    assert prompts["source_name"] == "embedded prompts"
    assert prompts["sha256"] == hashlib.sha256(PROMPTS_FILE.read_bytes()).hexdigest()
    random = describe_data("ignored.txt", random_tokens=True, bos="auto", seq_len=8, sequences=[[1]])
    assert (random["source_name"], random["sha256"]) == ("random tokens", None)


def test_weights_digest_hashes_the_weight_files_only(tmp_path):
    """Catches hashing every file of the folder (a changed README would change the weights' hash)."""
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("card")
    expected = hashlib.sha256(b"model.safetensors\0weights").hexdigest()
    assert weights_digest(str(tmp_path)) == expected
    (tmp_path / "README.md").write_text("another card")
    assert weights_digest(str(tmp_path)) == expected
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf bytes")
    assert weights_digest(str(gguf)) == hashlib.sha256(b"gguf bytes").hexdigest()
    assert weights_digest("HuggingFaceTB/SmolLM2-135M") is None
