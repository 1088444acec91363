"""Register sinkscope's architecture with transformers' Auto classes, without importing transformers.

``import sinkscope`` must stay cheap (no torch), yet afterwards ``AutoConfig`` and
``AutoModelForCausalLM`` must know model_type "sinkscope". So each registration waits for its Auto
module (configuration_auto, modeling_auto): it runs at once if that has loaded, otherwise as soon as it
has and transformers is between imports. A ``sys.meta_path`` finder wraps the loaders of transformers'
modules to see both. Waiting until no transformers module is half-loaded matters: transformers imports
its auto modules half-way through modeling_utils, where importing our model would fail. Only the model
files are imported, never the trainer.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

def _register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .train.configuration_sinkscope import SinkscopeConfig

    AutoConfig.register(SinkscopeConfig.model_type, SinkscopeConfig, exist_ok=True)


def _register_model() -> None:
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    from .train.model import SinkscopeConfig, SinkscopeForCausalLM

    AutoModelForCausalLM.register(SinkscopeConfig, SinkscopeForCausalLM, exist_ok=True)


_pending: list[tuple[str, Callable[[], None]]] = []  # (the Auto module it needs, registration)
_loading = 0  # transformers modules whose code is running under our loader (nested imports)


def _run_ready() -> None:
    for item in list(_pending):
        trigger, register = item
        if _loading == 0 and item in _pending and trigger in sys.modules:
            _pending.remove(item)
            try:
                register()
            except Exception as err:  # a failed registration must never break the user's own import
                warnings.warn(f"sinkscope could not register its architecture with transformers: {err}",
                              stacklevel=2)
    if not _pending and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


class _NotifyingLoader:
    """The module's own loader, plus a call to :func:`_run_ready` once its code has run."""

    def __init__(self, inner, name: str):
        self._inner, self._name = inner, name

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        global _loading
        _loading += 1
        try:
            self._inner.exec_module(module)
        finally:
            _loading -= 1
        _run_ready()

    def __getattr__(self, attr):  # get_source, get_resource_reader ... as the real loader has them
        return getattr(self._inner, attr)


class _Finder:  # a meta path finder needs only find_spec (importlib.abc would cost 0.1 s of imports)
    def find_spec(self, name, path, target=None):
        if name != "transformers" and not name.startswith("transformers."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader, name)
                return spec
        return None


_FINDER = _Finder()


def install() -> None:
    """Register now where transformers has loaded, else as soon as it does (idempotent)."""
    if _pending or _FINDER in sys.meta_path:
        return
    _pending.extend([("transformers.models.auto.configuration_auto", _register_config),
                     ("transformers.models.auto.modeling_auto", _register_model)])
    sys.meta_path.insert(0, _FINDER)
    _run_ready()
