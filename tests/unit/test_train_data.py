"""Training data: tokenizer, splits, deterministic windows with BOS, sources and their errors."""

from __future__ import annotations

import json

import pytest
import torch

from sinkscope.errors import SinkscopeError
from sinkscope.testing import CODE_TEXT
from sinkscope.train.config import TrainDataConfig
from sinkscope.train.data import (
    TokenData,
    prepare_data,
    split_documents,
    stdlib_documents,
)


def test_tokenizer_round_trips_and_loads_with_auto_tokenizer(corpus, tmp_path):
    from transformers import AutoTokenizer

    tokenizer, _ = prepare_data(TrainDataConfig(source=str(corpus), seq_len=16, val_every_doc=5), 300)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    ids = tokenizer("def f(x):")["input_ids"]
    assert ids[0] == 0 and tokenizer.decode(ids[1:]) == "def f(x):"
    tokenizer.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again("def f(x):")["input_ids"] == ids
    assert len(tokenizer) <= 300


def test_windows_start_with_bos_and_are_deterministic(corpus):
    _, data = prepare_data(TrainDataConfig(source=str(corpus), seq_len=16, val_every_doc=5, data_seed=3), 300)
    a, b = data.batch(7, 4), data.batch(7, 4)
    assert torch.equal(a, b) and a.shape == (4, 16) and (a[:, 0] == 0).all()
    assert not torch.equal(data.batch(8, 4), a)
    # each window is BOS followed by a contiguous slice of the training stream
    row = a[0, 1:].to(torch.int32)
    starts = [i for i in range(len(data.train) - 15) if torch.equal(data.train[i:i + 15], row)]
    assert starts
    torch.testing.assert_close(data.fixed_val(5), data.fixed_val(5))


def test_no_bos_windows_are_plain_stream_slices_and_the_saved_tokenizer_agrees(corpus, tmp_path):
    from transformers import AutoTokenizer

    tokenizer, data = prepare_data(TrainDataConfig(source=str(corpus), seq_len=16, val_every_doc=5, bos=False), 300)
    batch = data.batch(7, 4)
    assert batch.shape == (4, 16)
    for row in batch.to(torch.int32):
        assert any(torch.equal(data.train[i:i + 16], row) for i in range(len(data.train) - 15))
    assert data.fixed_val(3, 10).shape == (3, 10)
    tokenizer.save_pretrained(tmp_path / "tok")
    ids = AutoTokenizer.from_pretrained(tmp_path / "tok")("def f(x):")["input_ids"]
    assert ids == tokenizer("def f(x):", add_special_tokens=False)["input_ids"] and 0 not in ids


def test_no_bos_with_a_loaded_tokenizer_saves_one_that_stops_adding_bos(corpus, tmp_path):
    from transformers import AutoTokenizer

    with_bos, _ = prepare_data(TrainDataConfig(source=str(corpus), seq_len=16, val_every_doc=5), 300)
    with_bos.save_pretrained(tmp_path / "with-bos")
    assert AutoTokenizer.from_pretrained(tmp_path / "with-bos")("def")["input_ids"][0] == 0
    tokenizer, data = prepare_data(TrainDataConfig(source=str(corpus), seq_len=16, val_every_doc=5, bos=False,
                                                   tokenizer=str(tmp_path / "with-bos")), 300)
    assert data.bos_id is None
    tokenizer.save_pretrained(tmp_path / "tok")
    ids = AutoTokenizer.from_pretrained(tmp_path / "tok")("def f(x):")["input_ids"]
    assert ids == tokenizer("def f(x):", add_special_tokens=False)["input_ids"] and 0 not in ids


def test_split_holds_out_every_nth_document():
    docs = [f"d{i}" for i in range(10)]
    train, val = split_documents(docs, 4)
    assert val == ["d0", "d4", "d8"] and set(train) | set(val) == set(docs) and not set(train) & set(val)
    one_train, one_val = split_documents(["abcdefghij"], 5)
    assert one_train[0] + one_val[0] == "abcdefghij" and one_val[0]


def test_jsonl_source_uses_text_field(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKSCOPE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"body": CODE_TEXT[i * 500:(i + 1) * 500]}) for i in range(12)))
    with pytest.raises(SinkscopeError, match="no 'text' field"):
        prepare_data(TrainDataConfig(source=str(path), seq_len=16), 300)
    _, data = prepare_data(TrainDataConfig(source=str(path), seq_len=16, text_field="body", val_every_doc=4), 300)
    assert len(data.train) > len(data.val) > 16


def test_hf_dataset_streams_from_a_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKSCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my_dataset"
    (folder / "data").mkdir(parents=True)
    rows = [{"content": CODE_TEXT[i * 400:(i + 1) * 400], "n": i} for i in range(30)]
    (folder / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TrainDataConfig(source=f"hf:{folder}", text_field="content", max_documents=20, seq_len=16, val_every_doc=5)
    tokenizer, data = prepare_data(cfg, 300)
    expected = sum(len(tokenizer(r["content"], add_special_tokens=False)["input_ids"]) + 1
                   for i, r in enumerate(rows[:20]) if i % 5)
    assert len(data.train) == expected
    with pytest.raises(SinkscopeError, match="no field 'missing'"):
        prepare_data(TrainDataConfig(source=f"hf:{folder}", text_field="missing", max_documents=3), 300)


def test_too_little_data_for_one_window_is_refused():
    with pytest.raises(SinkscopeError, match="too few for one window"):
        TokenData(train=torch.arange(10, dtype=torch.int32), val=torch.arange(100, dtype=torch.int32),
                  seq_len=32, bos_id=0, seed=0)


def test_missing_source_is_refused():
    with pytest.raises(SinkscopeError, match="does not exist"):
        prepare_data(TrainDataConfig(source="/no/such/folder"), 300)


def test_stdlib_documents_are_sorted_python_sources():
    docs = stdlib_documents()
    assert len(docs) > 100
    assert any("def " in d for d in docs[:50])
