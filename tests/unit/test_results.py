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
