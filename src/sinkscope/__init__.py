"""sinkscope: find, explain and control attention sinks in transformer language models.

``import sinkscope`` is cheap (about 10 ms, no torch; docs/benchmarks.md): ``probe``, ``ProbeResult`` and
``adapters`` load on first use, and sinkscope's architecture is registered with transformers' Auto
classes as soon as transformers itself loads (autoregister.py).
"""

import sys
import types
from importlib import import_module

from . import autoregister
from .errors import SinkscopeError

__version__ = "0.1.0"
__all__ = ["ProbeResult", "SinkscopeError", "adapters", "probe", "__version__"]

_LAZY = {"probe": (".probe", "probe"), "ProbeResult": (".probe", "ProbeResult"), "adapters": (".adapters", None)}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = import_module(module, __name__)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``sinkscope.probe`` the function: importing the submodule of that name would replace it."""

    def __setattr__(self, name, value):
        if name == "probe" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
autoregister.install()
