"""Atomic, verified safetensors checkpoints (model, optimizer, RNG, data position) and resume.

A checkpoint is a folder ``ckpt-NNNNNNN/`` written under a temporary name, with a ``manifest.json``
holding each file's size and SHA-256, and renamed when complete; ``latest.json`` names the newest one.
Resume takes the newest checkpoint whose every file matches its manifest, so a torn newest checkpoint
(a kill mid-write, a cut copy) costs one checkpoint interval, and retention keeps two good ones. The data
position is the step itself: batches are a pure function of (data seed, step), see data.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import SinkscopeError
from ..files import file_digest
from ..results import SCHEMA_VERSION, read_json, write_json

KEEP_GOOD = 2  # whole checkpoints kept; older ones (and torn ones) are deleted once a newer one is complete
MANIFEST = "manifest.json"
# Test hook: a process with this variable set to a step SIGKILLs itself half-way through writing that
# step's checkpoint (model written, optimizer not), as a crash or a pre-empted job would.
KILL_IN_CHECKPOINT = "SINKSCOPE_KILL_IN_CHECKPOINT"


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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out: Path, step: int, model: nn.Module, optimizer, state: dict, name: str | None = None) -> Path:
    """Write ``out/ckpt-<step>/`` atomically with its manifest and point ``out/latest.json`` at it (unless ``name``)."""
    folder = out / (name or f"ckpt-{step:07d}")
    tmp = out / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_model_tensors(model), str(tmp / "model.safetensors"))
    if os.environ.get(KILL_IN_CHECKPOINT) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    save_file(_optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    files = {f.name: {"bytes": f.stat().st_size, "sha256": file_digest(f, cached=False)} for f in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "step": step, "files": files}, indent=1))
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    _fsync(out)
    problem = verify_checkpoint(folder)
    if problem:
        raise SinkscopeError(f"the checkpoint just written to {folder} does not read back ({problem}); "
                             "check the disk (full, failing, or a network mount)")
    if name is None:
        write_json(out / "latest.json", {"schema_version": SCHEMA_VERSION, "kind": "checkpoint", "step": step,
                                         "folder": folder.name})
        _prune(out)
    return folder


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint folders, newest first (temporary folders of interrupted writes excluded)."""
    return sorted((p for p in Path(out).glob("ckpt-*") if p.is_dir()), reverse=True)


def verify_checkpoint(folder: Path, checksums: bool = True) -> str | None:
    """None when every file of ``folder`` matches its manifest, else what is wrong (one phrase).

    ``checksums=False`` compares sizes only, the cheap check that retention runs at every save.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}: the write did not finish"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{MANIFEST} is torn"
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} of {expected['bytes']} bytes"
        if checksums and file_digest(path, cached=False) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def newest_good_checkpoint(out: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest whole checkpoint, and the newer ones passed over with the reason of each."""
    bad = []
    for folder in checkpoints(out):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder, bad
        bad.append((folder, problem))
    return None, bad


def _prune(out: Path) -> None:
    """Keep the KEEP_GOOD newest whole checkpoints; delete older ones, torn ones and abandoned temporaries."""
    good = 0
    for folder in checkpoints(out):
        if good < KEEP_GOOD and verify_checkpoint(folder, checksums=False) is None:
            good += 1
        else:
            shutil.rmtree(folder, ignore_errors=True)
    for tmp in out.glob(".ckpt-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint folder, whole or not (for "this run folder is taken")."""
    found = checkpoints(out)
    if found:
        return found[0]
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
    lines = [line for line in path.read_text().splitlines() if _step_of(line) is not None and _step_of(line) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _step_of(line: str) -> int | None:
    """The step of one log record; None for a blank or torn line (a kill mid-append)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
