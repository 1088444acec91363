"""Pretraining small models with head-wise RMSNorm and the rival sink fixes.

The names below load on first use, so ``import sinkscope.train.config`` (the CLI's help) needs no torch.
sinkscope's architecture is registered with transformers' Auto classes by ``import sinkscope`` itself
(see sinkscope/autoregister.py), not by importing this package.
"""

from importlib import import_module

_EXPORTS = {
    "VARIANTS": ".configuration_sinkscope", "SinkscopeConfig": ".configuration_sinkscope",
    "SinkscopeForCausalLM": ".model", "build_model": ".model",
    "add_headnorm": ".hf", "from_llama": ".hf", "to_llama": ".hf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
