"""One JSON-lines reader for data files and training logs; they differ only on a torn last line."""

import pytest

from sinkscope.errors import SinkscopeError
from sinkscope.files import jsonl_records, read_log


def test_a_log_drops_its_torn_last_line_and_keeps_the_last_record_of_a_repeated_step(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 2, "loss": 5}\n{"step": 1, "loss": 9}\n\n{"step": 2, "loss": 4}\n{"step": 3, "lo')
    assert read_log(log) == [{"step": 1, "loss": 9}, {"step": 2, "loss": 4}]
    assert read_log(tmp_path / "absent.jsonl") == []


def test_a_torn_line_inside_a_log_or_anywhere_in_a_data_file_is_refused_with_its_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(SinkscopeError, match="line 2 is not valid JSON"):
        read_log(log)
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b')
    with pytest.raises(SinkscopeError, match="line 2 is not valid JSON"):
        list(jsonl_records(data))
    assert [n for n, _ in jsonl_records(data, torn_tail_ok=True)] == [1]



def test_a_remembered_digest_is_reused_only_while_the_files_are_unchanged(tmp_path, monkeypatch):
    """The digest cache saves re-reading a checkpoint; it must never hide a changed file."""
    import hashlib
    import os

    from sinkscope import files

    monkeypatch.setenv("SINKSCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    (folder / "notes.txt").write_text("not weights")

    def brute(content: bytes) -> str:
        return hashlib.sha256(b"model.safetensors\0" + content).hexdigest()

    assert files.file_digest(folder, files.WEIGHT_SUFFIXES) == brute(b"a" * 1000)
    assert files.digest_cache().is_file()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: reads.append(str(f)) or real_open(f, *a, **k))
    assert files.file_digest(folder, files.WEIGHT_SUFFIXES) == brute(b"a" * 1000)
    assert str(weights) not in reads  # remembered: the weights were not read again
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size; a new mtime says it changed
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert files.file_digest(folder, files.WEIGHT_SUFFIXES) == brute(b"b" * 1000)
    assert files.file_digest(weights, cached=False) == hashlib.sha256(b"b" * 1000).hexdigest()
    files.digest_cache().write_text("{torn")  # a torn cache is ignored and rewritten
    assert files.file_digest(weights) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_checking_an_out_folder_tolerates_another_process_checking_it_at_once(tmp_path, monkeypatch):
    """Every torchrun rank checks --out: a folder made (or removed) by another rank in between is no error."""
    from pathlib import Path

    from sinkscope.files import check_output

    target = tmp_path / "a" / "b"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):  # the other rank makes each folder first, then we try
        real_mkdir(self, *args, **kwargs)
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    check_output(target)  # FileExistsError from the race must not become "cannot be created"

    def made_and_removed(self, *args, **kwargs):  # the other rank made the folder and removed it again before we looked
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(Path, "mkdir", made_and_removed)
    check_output(tmp_path / "e" / "f")
    monkeypatch.undo()

    # The other rank makes --out just before we look and removes it just after (CI's torchrun failure):
    # a check that asks twice sees a folder, then nothing, and calls it a file.
    real_stat = Path.stat
    looks = []

    def made_then_removed(self, *args, **kwargs):
        if self.name != "g" or looks:
            return real_stat(self, *args, **kwargs)
        looks.append(self)  # only the first look finds the other rank's folder
        self.mkdir()
        try:
            return real_stat(self, *args, **kwargs)
        finally:
            self.rmdir()

    monkeypatch.setattr(Path, "stat", made_then_removed)
    check_output(tmp_path / "g")
    monkeypatch.undo()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "file").write_text("x")
    with pytest.raises(SinkscopeError, match="cannot be created"):
        check_output(tmp_path / "c" / "file" / "d")
