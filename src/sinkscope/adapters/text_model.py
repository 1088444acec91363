"""The text decoder of a multimodal model as a causal LM of its own, sharing the wrapper's weights."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SinkscopeError
from .base import Adapter


def text_decoder(model: nn.Module, adapter: Adapter) -> nn.Module:
    """A ``*ForCausalLM`` whose decoder and output head are ``model``'s own modules (nothing copied).

    Its config is the wrapper's text config object, which the shared modules already read, so
    switching the attention implementation of one switches it for both, and back.

    >>> import transformers
    >>> from sinkscope.adapters import adapter_for
    >>> from sinkscope.testing import tiny_model
    >>> full = tiny_model("gemma3")
    >>> text = text_decoder(full, adapter_for(full))
    >>> text.model is full.model.language_model, text.lm_head is full.lm_head, text.config.model_type
    (True, True, 'gemma3_text')
    """
    from transformers import AutoModelForCausalLM

    config = model.config.get_text_config()
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)
    view.model = model.get_submodule(adapter.text_model)
    view.lm_head = model.get_output_embeddings()
    if any(p.is_meta for p in view.parameters()) or any(b.is_meta for b in view.buffers()):
        raise SinkscopeError(f"{type(model).__name__}'s text decoder at {adapter.text_model} does not fill a "
                             f"{type(view).__name__}; probe the text model directly")
    return view.train(model.training)
