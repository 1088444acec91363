"""Inputs: files, folders, jsonl, random tokens, --bos handling and padded batches."""

from __future__ import annotations

import json

import pytest
import torch

from sinkscope.config import DataConfig
from sinkscope.data import (
    batches,
    embedded_prompts,
    load_sequences,
    read_documents,
    special_tokens,
)
from sinkscope.errors import SinkscopeError
from sinkscope.testing import VOCAB, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(add_bos=True)


# ---------------------------------------------------------------- documents
def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello world\nsecond line")
    assert read_documents(str(path)) == [{"text": "hello world\nsecond line"}]


def test_folder_reads_every_txt_file_in_name_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "sub" / "a.txt").write_text("ant")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "empty.txt").write_text("   \n")
    assert read_documents(str(tmp_path)) == [{"text": "bee"}, {"text": "ant"}]


def test_jsonl_with_text_or_input_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [{"text": "one"}, {"input_ids": [5, 6, 7]}, {"text": "two", "meta": 1}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert read_documents(str(path)) == [{"text": "one"}, {"input_ids": [5, 6, 7]}, {"text": "two"}]


@pytest.mark.parametrize(("content", "message"), [
    (b"", "holds no text"),
    (b"  \n\t\n", "holds no text"),
    (b"\xff\xfe\x00\x81binary\x00\xc3", "not UTF-8"),
])
def test_empty_or_binary_text_file_is_refused(tmp_path, content, message):
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    with pytest.raises(SinkscopeError, match=message):
        read_documents(str(path))


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "line 2 is not valid JSON"),
    ('{"body": "x"}', "line 2 needs a 'text' or an 'input_ids' field"),
    ("[1, 2]", "line 2 needs"),
])
def test_bad_jsonl_line_is_named(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(SinkscopeError, match=message):
        read_documents(str(path))


def test_missing_path_and_folder_without_text(tmp_path):
    with pytest.raises(SinkscopeError, match="does not exist"):
        read_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(SinkscopeError, match="no .txt files"):
        read_documents(str(tmp_path))


def test_embedded_prompts_need_no_download():
    prompts = embedded_prompts()
    assert len(prompts) >= 4 and all(p["text"].strip() for p in prompts)


# ---------------------------------------------------------------- --bos
def test_bos_auto_follows_the_tokenizer(tok):
    assert special_tokens(tok, "auto", None) == ([1], [])
    assert special_tokens(tiny_tokenizer(add_bos=False), "auto", None) == ([], [])
    assert special_tokens(None, "auto", 1) == ([], [])


def test_bos_always_adds_one_and_never_adds_none(tok):
    assert special_tokens(tiny_tokenizer(add_bos=False), "always", 1) == ([1], [])
    assert special_tokens(tok, "always", 1) == ([1], [])  # not twice
    assert special_tokens(None, "always", 7) == ([7], [])
    assert special_tokens(tok, "never", 1) == ([], [])


def test_bos_always_without_any_bos_token_is_refused():
    with pytest.raises(SinkscopeError, match="no BOS token"):
        special_tokens(None, "always", None)


# ---------------------------------------------------------------- sequences
def test_random_tokens_are_uniform_ids_fixed_by_seed():
    cfg = DataConfig(random_tokens=True, seq_len=12, samples=5, bos="never", seed=3)
    seqs = load_sequences(cfg, None, VOCAB)
    assert len(seqs) == 5 and all(len(s) == 12 for s in seqs)
    assert all(0 <= t < VOCAB for s in seqs for t in s)
    assert load_sequences(cfg, None, VOCAB) == seqs
    other = DataConfig(random_tokens=True, seq_len=12, samples=5, bos="never", seed=4)
    assert load_sequences(other, None, VOCAB) != seqs


def test_random_tokens_with_bos_always_start_with_it():
    cfg = DataConfig(random_tokens=True, seq_len=8, samples=3, bos="always")
    seqs = load_sequences(cfg, None, VOCAB, bos_token_id=1)
    assert all(s[0] == 1 and len(s) == 8 for s in seqs)


def test_text_is_cut_into_windows_each_with_the_prefix(tmp_path, tok):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 3)
    seqs = load_sequences(DataConfig(data=str(path), seq_len=8, samples=100), tok, VOCAB)
    body = [t for s in seqs for t in s[1:]]
    assert all(s[0] == 1 and len(s) <= 8 for s in seqs)
    assert body == tok("abcdefghij" * 3, add_special_tokens=False)["input_ids"]
    never = load_sequences(DataConfig(data=str(path), seq_len=8, bos="never"), tok, VOCAB)
    assert [t for s in never for t in s] == body


def test_pretokenized_ids_are_used_as_given(tmp_path, tok):
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"input_ids": list(range(10, 30))}) + "\n")
    seqs = load_sequences(DataConfig(data=str(path), seq_len=8, bos="always"), tok, VOCAB, 1)
    assert seqs == [list(range(10, 18)), list(range(18, 26)), list(range(26, 30))]


def test_pretokenized_ids_outside_the_vocabulary_are_refused(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"input_ids": [1, VOCAB]}) + "\n")
    with pytest.raises(SinkscopeError, match=r"input_ids must lie in \[0, 96\)"):
        load_sequences(DataConfig(data=str(path)), None, VOCAB)


def test_samples_are_drawn_by_seed_in_document_order(tmp_path, tok):
    path = tmp_path / "t.txt"
    letters = torch.randint(0, 26, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    path.write_text("".join(chr(97 + i) for i in letters))  # no two windows alike
    cfg = DataConfig(data=str(path), seq_len=10, samples=7, seed=5)
    every = load_sequences(DataConfig(data=str(path), seq_len=10, samples=1000), tok, VOCAB)
    picked = load_sequences(cfg, tok, VOCAB)
    assert len(picked) == 7 and picked == load_sequences(cfg, tok, VOCAB)
    positions = [every.index(s) for s in picked]
    assert positions == sorted(positions)


def test_text_without_a_tokenizer_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("some text")
    with pytest.raises(SinkscopeError, match="no tokenizer"):
        load_sequences(DataConfig(data=str(path)), None, VOCAB)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seq_len": 1}, "at least 2"), ({"samples": 0}, "at least 1"),
])
def test_bad_sizes_are_refused(kwargs, message):
    with pytest.raises(SinkscopeError, match=message):
        load_sequences(DataConfig(random_tokens=True, **kwargs), None, VOCAB)


# ---------------------------------------------------------------- batches
@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_pad_on_the_asked_side(side):
    seqs = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
    got = list(batches(seqs, 3, pad_id=0, padding_side=side))
    assert [ids.shape for ids, _ in got] == [torch.Size([3, 3]), torch.Size([1, 4])]
    ids, mask = got[0]
    if side == "right":
        assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
        assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    else:
        assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
        assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert got[1][0].tolist() == [[11, 12, 13, 14]] and got[1][1].all()
