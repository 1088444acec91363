"""sinkscope: find, explain and control attention sinks in transformer language models."""

__version__ = "0.1.0"

from . import adapters  # noqa: E402,F401  (registers the built-in model families)
from .errors import SinkscopeError  # noqa: E402
from .probe import ProbeResult, probe  # noqa: E402

__all__ = ["ProbeResult", "SinkscopeError", "adapters", "probe", "__version__"]
