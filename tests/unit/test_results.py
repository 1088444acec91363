"""Result files: which schema versions this sinkscope reads."""

import json

import pytest

from sinkscope.errors import SinkscopeError
from sinkscope.results import CHANGED_KINDS, SCHEMA_VERSION, read_json


def test_an_old_schema_is_refused_only_for_the_kinds_a_later_bump_changed(tmp_path):
    changed = sorted(CHANGED_KINDS[SCHEMA_VERSION])[0]
    for kind, readable in ((changed, False), ("checkpoint", True)):
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps({"schema_version": SCHEMA_VERSION - 1, "kind": kind}))
        if readable:
            assert read_json(path, kind)["kind"] == kind
        else:
            with pytest.raises(SinkscopeError, match="re-run the command"):
                read_json(path, kind)
    for version in (SCHEMA_VERSION + 1, 0, "2", None):  # a newer sinkscope's file, or no version at all
        path = tmp_path / "odd.json"
        path.write_text(json.dumps({"schema_version": version, "kind": "checkpoint"}))
        with pytest.raises(SinkscopeError, match="schema_version"):
            read_json(path)


def test_parquet_columns_are_typed_alike_from_arrays_and_lists_without_importing_pandas(tmp_path):
    """A float column with NaN is double with nulls, an int column int64, from a numpy array or a list alike;
    and writing never imports pandas (half a second of every probe, only for pyarrow's series check)."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
import pyarrow.parquet as pq
from sinkscope.results import write_parquet
columns = {{"layer": np.array([0, 1, 2]), "score": np.array([0.5, float("nan"), 2.0])}}
lists = {{"layer": [0, 1, 2], "score": [0.5, None, 2.0]}}
written = write_parquet(r"{tmp_path}/a.parquet", columns), write_parquet(r"{tmp_path}/b.parquet", lists)
assert "pandas" not in sys.modules
a, b = (pq.read_table(path) for path in written)  # reading may import it
assert a.equals(b), (a, b)
assert [str(t) for t in a.schema.types] == ["int64", "double"]
assert a.column("score").to_pylist() == [0.5, None, 2.0]
"""
    subprocess.run([sys.executable, "-c", script], check=True)
