"""Reading UTF-8 text and JSON-lines files with one-line errors: data files and training logs alike.

The one difference between the two is a torn last line. A data file with one is broken, so it is
refused; a training log with one was being written when its run stopped (or is still running), so
that line is dropped and the records before it are kept.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import SinkscopeError


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SinkscopeError(f"{path} is not UTF-8 text; convert it or pass a .txt/.jsonl file") from None
    except OSError as err:
        raise SinkscopeError(f"cannot read {path}: {err.strerror}") from None


def jsonl_records(path: Path, *, torn_tail_ok: bool = False) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value) for every non-blank line; ``torn_tail_ok`` drops a torn last line."""
    lines = read_text(path).splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if torn_tail_ok and n == len(lines):
                return
            raise SinkscopeError(f"{path} line {n} is not valid JSON; each line must be one object") from None
        yield n, record


def read_log(path: Path) -> list[dict]:
    """A training log (metrics.jsonl, telemetry.jsonl) by step; [] when absent.

    A torn last line is dropped, and where a step repeats (a run resumed from a checkpoint older than
    its last records) the last record wins.
    """
    if not path.exists():
        return []
    by_step = {}
    for _, record in jsonl_records(path, torn_tail_ok=True):
        by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, synced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(path: str | Path) -> None:
    """Refuse an output path that exists as a file, or whose folder cannot be created, in one line.

    The missing folders are made and removed again, which is the one test of "can be created" that also
    holds for root and for special file systems; a run that fails later leaves no empty folder behind.
    A path ending in .json is a result file (``compare --out x.json``), so only its folder must be creatable.
    """
    path = Path(path).expanduser()
    folder = path.parent if path.suffix == ".json" else path
    if folder is path and _is_not_a_folder(path):
        raise SinkscopeError(f"--out {path}: {path} exists and is a file; pass a folder (it is created if missing)")
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if _is_not_a_folder(folder):
        raise SinkscopeError(f"--out {path} cannot be created: {folder} is a file, not a folder")
    made = []
    try:
        for part in reversed(missing):
            try:
                part.mkdir()
                made.append(part)
            except FileExistsError:  # made (and maybe removed again) meanwhile by another rank's check: creatable
                if _is_not_a_folder(part):
                    raise
    except OSError as err:
        raise SinkscopeError(f"--out {path} cannot be created: {err.strerror or err}") from None
    finally:
        for part in reversed(made):
            try:
                part.rmdir()
            except OSError:  # another process has begun writing there, or removed it: leave it to them
                pass


def _is_not_a_folder(path: Path) -> bool:
    """Whether ``path`` exists as something other than a folder, from a single stat.

    Every torchrun rank checks --out at once, and each makes and removes the missing folders: asking
    "exists?" and then "is a folder?" can see another rank's folder, then its absence, and call it a file.
    """
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")  # the files that hold a checkpoint's weights
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing: large files never sit in memory whole


def file_digest(path: Path, suffixes: tuple[str, ...] | None = None, *, cached: bool = True) -> str | None:
    """SHA-256 of a file, or of a folder's files (each one's relative name, then its bytes, in sorted order;
    only names ending in ``suffixes`` when given); None when the path does not exist or nothing matches.

    ``cached``: reuse the digest from :func:`digest_cache` while every file keeps its size, mtime and inode,
    as git's index does, so a 500 MB checkpoint is read once, not on every command. Pass False where the
    bytes themselves are in question (verifying a checkpoint against its manifest).
    """
    import hashlib

    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and (suffixes is None or p.suffix in suffixes))
        root = path
    else:
        return None
    if not files:
        return None
    names = [str(file.relative_to(root)) if path.is_dir() else "" for file in files]
    key = None
    if cached:
        stats = [(name, *(lambda s: (s.st_size, s.st_mtime_ns, s.st_ino, s.st_dev))(file.stat()))
                 for name, file in zip(names, files)]
        key = hashlib.sha256(json.dumps([str(path.resolve()), stats]).encode()).hexdigest()
        known = _read_digest_cache().get(key)
        if known is not None:
            return known
    digest = hashlib.sha256()
    for name, file in zip(names, files):
        if path.is_dir():
            digest.update(name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    if key is not None:
        _remember_digest(key, digest.hexdigest())
    return digest.hexdigest()


def digest_cache() -> Path:
    """Where file digests are remembered: $SINKSCOPE_CACHE, else $XDG_CACHE_HOME/sinkscope, else ~/.cache/sinkscope."""
    own = os.environ.get("SINKSCOPE_CACHE")
    root = Path(own) if own else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sinkscope"
    return root / "digests.json"


def _read_digest_cache() -> dict:
    try:
        cache = json.loads(digest_cache().read_text())
    except (OSError, ValueError):  # none yet, unreadable or torn: a cache only saves time, so start afresh
        return {}
    return cache if isinstance(cache, dict) else {}


def _remember_digest(key: str, digest: str) -> None:
    cache = _read_digest_cache()
    cache[key] = digest
    try:
        atomic_write_bytes(digest_cache(), json.dumps(cache).encode())
    except OSError:  # a read-only home: the digest is still right, only not remembered
        pass


def weights_digest(model: str | None) -> str | None:
    """SHA-256 of a local or embedded checkpoint's weight files (a folder or one GGUF file); None for a hub id
    or a model passed in memory, whose hub revision says which weights they were."""
    from .models import embedded_path

    if model is None:
        return None
    path = embedded_path(model) or Path(model)
    return file_digest(path, WEIGHT_SUFFIXES) if path.exists() else None
