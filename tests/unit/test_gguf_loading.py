"""Loading a GGUF file parses it once: transformers' three readers (config, tokenizer, weights) and sinkscope's
check share one, and gguf's tensor-name map is built once, within the load's scope only."""

from __future__ import annotations

import pytest

from sinkscope.gguf_loading import GgufFile, one_reader
from sinkscope.testing import write_gguf

gguf = pytest.importorskip("gguf")


def test_one_reader_per_file_within_the_scope_only(tmp_path):
    first, other = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_gguf(first)
    write_gguf(other)
    original, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with one_reader(GgufFile(str(tmp_path), "a.gguf")):
        llama = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is llama
        assert llama.get_name("blk.1.attn_q") == name_map(gguf.MODEL_ARCH.LLAMA, 2).get_name("blk.1.attn_q")
        shared = gguf.GGUFReader(str(first))
        assert gguf.GGUFReader(str(tmp_path / "." / "a.gguf")) is shared  # the same file by another spelling
        assert isinstance(shared, original) and shared.fields["general.architecture"].contents() == "llama"
        assert gguf.GGUFReader(str(other)) is not gguf.GGUFReader(str(other))  # another file: not shared
    assert gguf.GGUFReader is original and gguf.get_tensor_name_map is name_map
    with pytest.raises(RuntimeError), one_reader(GgufFile(str(tmp_path), "a.gguf")):
        raise RuntimeError("a failed load")
    assert gguf.GGUFReader is original  # restored however the scope ends
    with one_reader(None):
        assert gguf.GGUFReader is original  # not a GGUF model: nothing changes
