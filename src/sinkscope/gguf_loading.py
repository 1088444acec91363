"""GGUF files (llama.cpp, Ollama, LM Studio) as models: find the file, check it is whole, and say what it holds.

transformers reads a GGUF file itself (``from_pretrained(folder, gguf_file=name)``) and dequantizes every
tensor; this module only decides which file a source names, refuses a torn or foreign file in one line
before transformers meets it, and writes the provenance record of the file (name, size, SHA-256, the
quantization types inside it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import SinkscopeError
from .files import file_digest

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (llama.cpp's gguf.h)
SNIFF_BYTES = 4096  # bytes read to tell a text file from a binary one
# Keys of transformers' GGUF config mapping that are metadata sections, not model families.
GGUF_METADATA_SECTIONS = ("general", "tokenizer")
EXTRA = "pip install 'sinkscope[gguf]'"


@dataclass(frozen=True)
class GgufFile:
    """A GGUF model: the folder transformers is given and the file's name inside it."""

    folder: str
    name: str

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.name


def find_gguf(source: str) -> GgufFile | None:
    """The GGUF file ``source`` names: a ``.gguf`` file, or a folder without config.json holding exactly one.

    Any other file is refused with what it is; a folder holding several GGUF files names them.
    """
    path = Path(source).expanduser()
    if path.is_file():
        if not _has_magic(path):
            raise SinkscopeError(f"{path} is {describe_file(path)}, not a model; pass a .gguf file, a folder written "
                                 "by save_pretrained, or a hub id")
        return GgufFile(str(path.parent), path.name)
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p.name for p in path.glob("*.gguf"))
    if len(found) > 1:
        raise SinkscopeError(f"{path} holds {len(found)} GGUF files ({', '.join(found)}); pass one of them")
    return GgufFile(str(path), found[0]) if found else None


@contextmanager
def one_reader(found: GgufFile | None) -> Iterator[None]:
    """Within this scope, every ``gguf.GGUFReader`` of ``found``'s file is one object, and gguf's tensor-name
    map of an architecture is built once.

    transformers parses the file anew for the config, the tokenizer and the weights, and our check before
    them is a fourth parse; each walks every metadata field (SmolLM2's 49,152-token vocabulary and its merges:
    sharing the reader took its load from 17.6 s to 11.3 s on 2 cores). Matching the weights then builds the
    same name map once per module (397 times for SmolLM2; building it once: 11.3 s to 7.1 s). Nothing writes
    to a reader or a map, so sharing them changes the time and nothing else.
    """
    if found is None:
        yield
        return
    require_gguf()
    import gguf

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    path, shared = os.path.realpath(found.path), []

    def reader(file, *args, **kwargs):
        if args or kwargs or os.path.realpath(file) != path:
            return original_reader(file, *args, **kwargs)
        if not shared:
            shared.append(original_reader(file))
        return shared[0]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def _has_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def describe_file(path: Path) -> str:
    """What a file that is not a model is, in a few words ("a text file", "a safetensors file", ...)."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        return "an empty file"
    if path.suffix == ".safetensors":
        return "a safetensors file without its folder's config.json (pass the folder)"
    if head[:2] == b"PK":
        return "a zip archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # a multi-byte character cut at the sniff's end is still text
            return "a binary file of unknown format"
        text = head[: err.start].decode("utf-8")
    return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file"


def torn(path: Path, reason: str) -> SinkscopeError:
    return SinkscopeError(f"{path} is torn or corrupt ({reason}); download or copy the GGUF file again")


def require_gguf() -> None:
    """Refuse in one line when the optional ``gguf`` package is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SinkscopeError(f"reading GGUF files needs the gguf package: {EXTRA}") from None


@functools.lru_cache(maxsize=8)
def _contents(path: str, size: int, mtime_ns: int) -> tuple[str, tuple[str, ...]]:
    """(architecture, quantization types) of a GGUF file; cached by size and mtime, since parsing takes seconds."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        architecture = reader.fields["general.architecture"].contents()
        types = {t.tensor_type.name for t in reader.tensors}
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError) as err:
        raise torn(Path(path), f"unreadable GGUF: {str(err).splitlines()[0] or type(err).__name__}") from None
    if end > size:
        raise torn(Path(path), f"its tensors need {end:,} bytes, the file has {size:,}")
    return architecture, tuple(sorted(types))


def contents(path: Path) -> tuple[str, tuple[str, ...]]:
    require_gguf()
    stat = path.stat()
    return _contents(str(path), stat.st_size, stat.st_mtime_ns)


def check_gguf(found: GgufFile) -> None:
    """Refuse a torn GGUF file, or one whose architecture transformers cannot read, naming those it can."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture, _ = contents(found.path)
    readable = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in GGUF_METADATA_SECTIONS]
    # llama.cpp spells a few families without the underscore transformers uses (qwen2moe, gpt-oss)
    spelled = {a.replace("_", "").replace("-", "") for a in readable}
    if architecture not in readable and architecture.replace("-", "").replace("_", "") not in spelled:
        raise unsupported(found.path, architecture)


def unsupported(path: Path, architecture: str) -> SinkscopeError:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    readable = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in GGUF_METADATA_SECTIONS)
    return SinkscopeError(f"{path} holds a {architecture!r} model, which transformers cannot read from GGUF; it "
                          f"reads {readable} (convert the model to safetensors to use it)")


def weights_record(model: str | None) -> dict | None:
    """Provenance of a GGUF model's weights (file name, bytes, SHA-256, quantization types); None otherwise.

    The weights were dequantized on load (to ``--dtype``), so results describe the dequantized model.
    """
    if not model:
        return None
    try:
        found = find_gguf(model)
    except (SinkscopeError, OSError):
        return None
    if found is None:
        return None
    path, stat = found.path, found.path.stat()
    _, types = contents(path)
    return {"format": "gguf", "file": found.name, "bytes": stat.st_size,
            "sha256": file_digest(path), "quantization": list(types),
            "dequantized": True}
