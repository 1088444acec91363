"""Atomic safetensors checkpoints (model, optimizer, RNG, data position) and the final export.

A checkpoint is a folder ``ckpt-NNNNNNN/`` written under a temporary name and renamed when
complete; ``latest.json`` (written atomically) names the newest one. A run killed at any moment
therefore resumes from a whole checkpoint. The data position is the step itself: batches are a
pure function of (data seed, step), see data.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import SinkscopeError
from ..results import SCHEMA_VERSION, read_json, write_json

KEEP_CHECKPOINTS = 2  # older checkpoints are deleted once a newer one is complete


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates (safetensors refuses shared storage)."""
    seen, tensors = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


def _optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, param in model.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"{name}::{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors["rng::torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng::cuda"] = torch.cuda.get_rng_state()
    return tensors


def save_checkpoint(out: Path, step: int, model: nn.Module, optimizer, state: dict, name: str | None = None) -> Path:
    """Write ``out/ckpt-<step>/`` atomically and point ``out/latest.json`` at it (unless ``name`` is given)."""
    folder = out / (name or f"ckpt-{step:07d}")
    tmp = out / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_model_tensors(model), str(tmp / "model.safetensors"))
    save_file(_optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    if name is None:
        write_json(out / "latest.json", {"schema_version": SCHEMA_VERSION, "kind": "checkpoint", "step": step,
                                         "folder": folder.name})
        for old in sorted(out.glob("ckpt-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out: Path) -> Path | None:
    if not (out / "latest.json").exists():
        return None
    return out / read_json(out / "latest.json", kind="checkpoint")["folder"]


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return keys


def load_checkpoint(folder: Path, model: nn.Module, optimizer, run_config: dict) -> dict:
    """Restore model, optimizer and RNG from ``folder``; refuse a checkpoint of another configuration."""
    state = json.loads((folder / "state.json").read_text())
    changed = _differences(state["config"], run_config)
    if changed:
        raise SinkscopeError(f"checkpoint {folder} comes from another config (changed: {', '.join(changed[:4])}); "
                             "use a new --out or the original config")
    tensors = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if k == "lm_head.weight"}
    if set(missing) - tied or unexpected:
        raise SinkscopeError(f"checkpoint {folder} does not fit this model (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
    opt = load_file(str(folder / "optimizer.safetensors"))
    for name, param in model.named_parameters():
        entry = {key.split("::", 1)[1]: value.to(param.device) for key, value in opt.items()
                 if key.split("::", 1)[0] == name}
        if entry:
            if "step" in entry:
                entry["step"] = entry["step"].cpu()  # AdamW keeps its step counter on the CPU
            optimizer.state[param] = entry
    torch.set_rng_state(opt["rng::torch"])
    if "rng::cuda" in opt and torch.cuda.is_available():
        torch.cuda.set_rng_state(opt["rng::cuda"])
    return state


def truncate_log(path: Path, step: int) -> None:
    """Drop the log records a killed run wrote after the checkpoint it resumes from."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
