"""Load a model and tokenizer from the hub, a local folder, a GGUF file, or an embedded checkpoint name."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters import Adapter, adapter_for
from .adapters.text_model import text_decoder
from .config import LoadConfig
from .errors import SinkscopeError
from .gguf_loading import GgufFile, check_gguf, contents, find_gguf, one_reader, unsupported

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object | None
    adapter: Adapter
    name: str  # hub id, folder, GGUF file or embedded name, as given
    revision: str | None


def resolve_source(name: str) -> str:
    """An embedded checkpoint name maps to its folder; anything else passes through."""
    from .models import embedded_path

    path = embedded_path(name)
    return str(path) if path is not None else name


def _looks_like_path(source: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else (./x, /x, a/b/c, ~/x) can only be a folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


# The JSON files transformers reads from a model folder; a torn one would surface as a library traceback
# or, for the tokenizer, silently as "no tokenizer".
FOLDER_JSON = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "model.safetensors.index.json")


def _torn(path: Path, reason: str) -> SinkscopeError:
    return SinkscopeError(f"{path} is torn or corrupt ({reason}); copy the model folder again, or re-save it "
                          "with save_pretrained")


def check_folder(source: str, weights: bool = True) -> None:
    """Refuse a local model folder whose JSON files do not parse or whose safetensors are cut short, a
    torn GGUF file, or a file that is no model at all (each in one line naming what it is).

    Each safetensors file is opened (header and the extent it promises, no tensor read), which is how a
    torn copy or garbage bytes show up; the other files are parsed as JSON. ``weights=False``: the
    tokenizer alone is wanted, so the safetensors are not looked at.
    """
    from safetensors import SafetensorError, safe_open

    found = find_gguf(source)
    if found is not None:
        check_gguf(found)  # the tokenizer lives in the same file, so it is checked whole either way
        return
    folder = Path(source)
    if not folder.is_dir():
        return
    for name in FOLDER_JSON:
        path = folder / name
        if path.exists():
            stat = path.stat()
            _check_json(str(path), stat.st_size, stat.st_mtime_ns)
    for path in sorted(folder.glob("*.safetensors")) if weights else ():
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise _torn(path, f"unreadable safetensors: {str(err).splitlines()[0]}") from None


@functools.lru_cache(maxsize=32)
def _check_json(path: str, size: int, mtime_ns: int) -> None:
    """Refuse a JSON file that does not parse; remembered by size and mtime, since a load checks its folder
    twice (the model, then the tokenizer) and tokenizer.json takes 0.1 s to parse."""
    try:
        json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, ValueError) as err:
        raise _torn(Path(path), f"not valid JSON: {str(err).splitlines()[0]}") from None


def _read_config(source: str, cfg: LoadConfig, gguf: GgufFile | None):
    from transformers import AutoConfig

    if gguf is not None:
        try:
            return AutoConfig.from_pretrained(gguf.folder, gguf_file=gguf.name)
        except ValueError as err:  # an architecture transformers' GGUF reader lacks, beyond the names it lists
            if "not supported" not in str(err):
                raise
            raise unsupported(gguf.path, contents(gguf.path)[0]) from None
    local = Path(source)
    if not local.exists() and _looks_like_path(source):
        raise SinkscopeError(f"model {source} does not exist; pass a folder written by save_pretrained "
                             "(config.json + safetensors), a .gguf file, or a hub id like org/name")
    if local.exists() and not (local / "config.json").exists():
        raise SinkscopeError(f"{source} is a folder without config.json or a .gguf file; point at a folder written "
                             "by save_pretrained or at a GGUF file")
    try:
        return AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        if local.exists():
            raise SinkscopeError(f"cannot read the model config in {source}: {str(err).splitlines()[0]}") from None
        raise SinkscopeError(
            f"cannot reach '{source}' on the Hugging Face Hub (offline, misspelt or gated); "
            "download it elsewhere and pass its local folder instead"
        ) from None
    except ValueError as err:
        message = str(err).splitlines()[0]
        if "trust_remote_code" in message:
            raise SinkscopeError(f"{source} needs its own modeling code; pass --trust-remote-code if you trust it") from None
        raise SinkscopeError(f"unsupported or unknown model config in {source}: {message}") from None


def load_model(name: str, cfg: LoadConfig | None = None) -> LoadedModel:
    """Load ``name`` (hub id, local folder, GGUF file or embedded checkpoint) for analysis, in eval mode.

    Decoders load with AutoModelForCausalLM, encoders with AutoModel; weights come from
    safetensors, or from a GGUF file dequantized to ``cfg.dtype``, and remote code runs only when
    ``cfg.trust_remote_code`` is set.
    """
    cfg = cfg or LoadConfig()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SinkscopeError("--device cuda was asked for but this torch build sees no CUDA device; use --device cpu")
    source = resolve_source(name)
    gguf = find_gguf(source)
    with one_reader(gguf):
        return _load(name, source, gguf, cfg)


def _load(name: str, source: str, gguf: GgufFile | None, cfg: LoadConfig) -> LoadedModel:
    from transformers import AutoModel, AutoModelForCausalLM

    check_folder(source)
    config = _read_config(source, cfg, gguf)
    adapter = adapter_for(config)
    auto = AutoModelForCausalLM if adapter.causal else AutoModel
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=DTYPES[cfg.dtype],
                  attn_implementation="sdpa" if _supports_sdpa(config, auto) else "eager")
    if gguf:
        kwargs["gguf_file"] = gguf.name
    else:
        kwargs["use_safetensors"] = True
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    try:
        model = auto.from_pretrained(gguf.folder if gguf else source, config=config, **kwargs)
    except (OSError, EnvironmentError) as err:
        raise SinkscopeError(f"cannot load weights of {name}: {str(err).splitlines()[0]} "
                             "(sinkscope loads safetensors and GGUF only)") from None
    if gguf:
        _forget_quantization(model)
    if not cfg.device_map:
        model.to(cfg.device)
    model.eval()
    model, adapter = _text_part(model, adapter)
    return LoadedModel(model=model, tokenizer=load_tokenizer(source, cfg), adapter=adapter, name=name,
                       revision=cfg.revision)


def _forget_quantization(model: nn.Module) -> None:
    """A GGUF model's weights are dequantized on load, so it is a plain model: without this, transformers
    treats it as quantized and refuses ``save_pretrained`` (train --init-from saves it)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def _text_part(model: nn.Module, adapter):
    """A multimodal wrapper's text decoder and its adapter (the model itself for text-only families)."""
    if adapter.text_model is None:
        return model, adapter
    text = text_decoder(model, adapter)
    return text, adapter_for(text)


def _supports_sdpa(config, auto) -> bool:
    """SDPA unless the logits are soft-capped or the class has no SDPA path (gpt-oss: its sink logit)."""
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    model_class = auto._model_mapping.get(type(config), None)  # None for remote code: transformers decides
    return model_class is None or bool(getattr(model_class, "_supports_sdpa", True))


def load_tokenizer(source: str, cfg: LoadConfig | None = None, *, required: bool = False):
    """The tokenizer of a (resolved) folder or hub id; None when it has none (random tokens still work),
    unless ``required`` (training with --tokenizer), which makes that an error naming the source."""
    from transformers import AutoTokenizer

    cfg = cfg or LoadConfig()
    check_folder(source, weights=False)
    gguf = find_gguf(source)
    try:
        if gguf is not None:  # the tokenizer lives in the GGUF file's metadata
            return AutoTokenizer.from_pretrained(gguf.folder, gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        if required:
            raise SinkscopeError(f"cannot load tokenizer {source}: {str(err).splitlines()[0]}") from None
        return None


def prepare_model(model, tokenizer, cfg: LoadConfig) -> LoadedModel:
    """Accept a loaded transformers model (used as is) or a name/path (loaded with ``cfg``)."""
    if isinstance(model, (str, Path)):
        return load_model(str(model), cfg)
    if not isinstance(model, nn.Module):
        raise SinkscopeError("pass a loaded transformers model or a hub id / folder path")
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    model, adapter = _text_part(model, adapter_for(model))
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, name=name, revision=None)
