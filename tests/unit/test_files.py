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

