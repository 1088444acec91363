"""The final model folder of a run: weights, tokenizer and a ``sinkscope.json`` card.

``softmax`` runs (without qk_norm) are written as a plain ``LlamaForCausalLM`` folder, loadable with
no sinkscope installed; every other variant as the registered ``sinkscope`` architecture.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from ..results import to_jsonable, write_json
from .hf import to_llama


def export_model(model: nn.Module, tokenizer, folder: Path, cfg=None, card: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, card) to ``folder`` atomically (temporary folder, then rename)."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    config = model.config
    plain = (config.model_type == "sinkscope" and config.attention_variant == "softmax" and not config.qk_norm
             and config.rope)
    (to_llama(model) if plain else model).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "sinkscope.json", {
        "variant": getattr(config, "attention_variant", "softmax"),
        "qk_norm": getattr(config, "qk_norm", False),
        "architecture": "LlamaForCausalLM" if plain else type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_config": to_jsonable(cfg) if cfg is not None else None,
        **(card or {}),
    })
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
