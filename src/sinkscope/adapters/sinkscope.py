"""sinkscope's own pretraining model (sinkscope.train.model): Llama's module tree, every attention variant."""

import dataclasses

from .base import register_adapter
from .llama import LLAMA

SINKSCOPE = register_adapter(dataclasses.replace(LLAMA, model_type="sinkscope"))
