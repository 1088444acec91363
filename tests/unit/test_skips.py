"""A test that needs something missing skips on a laptop and fails in CI (CI=true), never skips quietly there."""

import pytest

from conftest import missing, require_module


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception),
                                             ("false", pytest.skip.Exception)])
def test_missing_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    either = (pytest.fail.Exception, pytest.skip.Exception)  # catch both, so a wrong skip cannot skip this test
    with pytest.raises(either, match="no_such_module") as raised:
        require_module("no_such_module_sinkscope")
    assert raised.type is outcome
    with pytest.raises(either, match="checkpoint") as raised:
        missing("the embedded checkpoint")
    assert raised.type is outcome


def test_require_module_returns_the_module():
    assert require_module("math").sqrt(4.0) == 2.0
