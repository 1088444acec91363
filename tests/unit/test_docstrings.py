"""Every module whose docstrings carry ``>>>`` examples runs them: an example that rots fails here."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import sinkscope

ROOT = Path(sinkscope.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(ROOT)], prefix="sinkscope."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        source = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
        if ">>>" in source.read_text():
            names.append(info.name)
    return sorted(names)


def test_the_discovery_sees_the_known_examples():
    assert {"sinkscope.probe", "sinkscope.fixtures", "sinkscope.report"} <= set(_modules_with_examples())


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
