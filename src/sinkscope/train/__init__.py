"""Pretraining small models with head-wise RMSNorm and the rival sink fixes.

Importing this package registers the ``sinkscope`` architecture with transformers' Auto classes,
so ``AutoModelForCausalLM.from_pretrained(folder)`` loads every variant a run writes.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .hf import add_headnorm, from_llama, to_llama
from .model import VARIANTS, SinkscopeConfig, SinkscopeForCausalLM, build_model

AutoConfig.register(SinkscopeConfig.model_type, SinkscopeConfig, exist_ok=True)
AutoModelForCausalLM.register(SinkscopeConfig, SinkscopeForCausalLM, exist_ok=True)

__all__ = ["VARIANTS", "SinkscopeConfig", "SinkscopeForCausalLM", "add_headnorm", "build_model", "from_llama",
           "to_llama"]
