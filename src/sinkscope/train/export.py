"""The final model folder of a run: weights, tokenizer and a ``sinkscope.json`` card.

``softmax`` runs (without qk_norm) are written as a plain ``LlamaForCausalLM`` folder, loadable with
no sinkscope installed. Every other variant is the ``sinkscope`` architecture: sinkscope's Auto-class
registration loads it, and the folder also carries the two model files and an ``auto_map``, as custom
architectures on the Hugging Face Hub do, so that ``from_pretrained(folder, trust_remote_code=True)``
works where sinkscope is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from torch import nn

from ..results import to_jsonable, write_json
from .hf import to_llama

HERE = Path(__file__).parent
# file in the run folder <- sinkscope's source (model.py imports its sibling as .configuration_sinkscope)
REMOTE_CODE = {"configuration_sinkscope.py": HERE / "configuration_sinkscope.py", "modeling_sinkscope.py": HERE / "model.py"}
AUTO_MAP = {"AutoConfig": "configuration_sinkscope.SinkscopeConfig",
            "AutoModelForCausalLM": "modeling_sinkscope.SinkscopeForCausalLM"}


def add_remote_code(folder: Path) -> None:
    """Copy the model files into a ``sinkscope`` model folder and name them in its config.json's auto_map.

    Only config.json and the two .py files are written, so weights stay byte-identical (how the embedded
    organism-headnorm was brought up to date).
    """
    folder = Path(folder)
    for name, source in REMOTE_CODE.items():
        shutil.copyfile(source, folder / name)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = AUTO_MAP
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config_path)


def export_model(model: nn.Module, tokenizer, folder: Path, cfg=None, card: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, card) to ``folder`` atomically (temporary folder, then rename)."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    config = model.config
    plain = (config.model_type == "sinkscope" and config.attention_variant == "softmax" and not config.qk_norm
             and config.rope)
    (to_llama(model) if plain else model).save_pretrained(tmp, safe_serialization=True)
    if config.model_type == "sinkscope" and not plain:
        add_remote_code(tmp)
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
