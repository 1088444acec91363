"""Token sequences to probe with: files, folders, jsonl, random tokens or the embedded prompts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from .config import DataConfig
from .errors import SinkscopeError
from .files import file_digest, jsonl_records, read_text

PROMPTS_FILE = Path(__file__).parent / "assets" / "prompts.txt"
TEXT_SUFFIXES = (".txt",)


def read_documents(source: str) -> list[dict]:
    """Documents as {"text": str} or {"input_ids": list[int]} from a file, folder or .jsonl."""
    path = Path(source)
    if not path.exists():
        raise SinkscopeError(f"data path {source} does not exist; pass a .txt, .jsonl or a folder of .txt files")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise SinkscopeError(f"folder {source} has no .txt files; add some or pass a file")
        docs = [{"text": read_text(p)} for p in files]
    elif path.suffix == ".jsonl":
        docs = []
        for n, record in jsonl_records(path):
            if not isinstance(record, dict) or not ({"text", "input_ids"} & record.keys()):
                raise SinkscopeError(f"{source} line {n} needs a 'text' or an 'input_ids' field")
            docs.append({"input_ids": record["input_ids"]} if "input_ids" in record else {"text": record["text"]})
    else:
        docs = [{"text": read_text(path)}]
    docs = [d for d in docs if d.get("input_ids") or (d.get("text") or "").strip()]
    if not docs:
        raise SinkscopeError(f"{source} holds no text; pass a non-empty file")
    return docs


def embedded_prompts() -> list[dict]:
    """The shipped prompt set: short paragraphs of varied natural text, one document each."""
    paragraphs = [p.strip() for p in PROMPTS_FILE.read_text(encoding="utf-8").split("\n\n")]
    return [{"text": p} for p in paragraphs if p]


def special_tokens(tokenizer, bos: str, bos_token_id: int | None) -> tuple[list[int], list[int]]:
    """Token ids to put before and after each window, following --bos.

    auto: whatever the tokenizer adds by itself (BOS for Llama, [CLS] ... [SEP] for BERT, none for GPT-2);
    always: a BOS in front even if the tokenizer would not add one; never: nothing.
    """
    if bos == "never":
        return [], []
    prefix, suffix = _added_by_tokenizer(tokenizer) if tokenizer is not None else ([], [])
    if bos == "always" and not prefix:
        bos_token_id = bos_token_id if bos_token_id is not None else getattr(tokenizer, "bos_token_id", None)
        if bos_token_id is None:
            raise SinkscopeError("--bos always, but this model defines no BOS token; use --bos auto or never")
        prefix = [bos_token_id]
    return prefix, suffix


def _added_by_tokenizer(tokenizer) -> tuple[list[int], list[int]]:
    """Ids the tokenizer puts before and after a text by itself (transformers 5's fast tokenizers have no
    build_inputs_with_special_tokens, so compare one encoding with and without special tokens)."""
    body = tokenizer("x", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("x")["input_ids"]
    for cut in range(len(wrapped) - len(body) + 1):
        if wrapped[cut:cut + len(body)] == body:
            return list(wrapped[:cut]), list(wrapped[cut + len(body):])
    return [], []


def windows(ids: list[int], size: int, prefix: list[int], suffix: list[int], *, full_only: bool = False
            ) -> list[list[int]]:
    """``ids`` cut into consecutive windows of ``size`` tokens, special tokens included; the last one may be
    shorter unless ``full_only`` (stream and the demo need every window to reach the same positions)."""
    body = size - len(prefix) - len(suffix)
    stop = len(ids) - body + 1 if full_only else len(ids)
    return [prefix + ids[i:i + body] + suffix for i in range(0, max(stop, 0), body) if ids[i:i + body]]


def load_sequences(cfg: DataConfig, tokenizer, vocab_size: int, bos_token_id: int | None = None) -> list[list[int]]:
    """``cfg.samples`` token sequences of at most ``cfg.seq_len`` tokens, sampled deterministically by seed."""
    if cfg.seq_len < 2:
        raise SinkscopeError("--seq-len must be at least 2 (a sink needs a later query)")
    if cfg.samples < 1:
        raise SinkscopeError("--samples must be at least 1")
    generator = torch.Generator().manual_seed(cfg.seed)
    prefix, suffix = special_tokens(tokenizer, cfg.bos, bos_token_id)
    body = cfg.seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise SinkscopeError(f"--seq-len {cfg.seq_len} leaves no room beside the special tokens; raise it")
    if cfg.random_tokens:
        ids = torch.randint(0, vocab_size, (cfg.samples, body), generator=generator).tolist()
        return [prefix + row + suffix for row in ids]
    docs = read_documents(cfg.data) if cfg.data else embedded_prompts()
    found: list[list[int]] = []
    for doc in docs:
        if "input_ids" in doc:  # pre-tokenized: used as given, cut to seq_len
            ids = [int(i) for i in doc["input_ids"]]
            if ids and (min(ids) < 0 or max(ids) >= vocab_size):
                raise SinkscopeError(f"input_ids must lie in [0, {vocab_size}) for this model")
            found += windows(ids, cfg.seq_len, [], [])
            continue
        if tokenizer is None:
            raise SinkscopeError("this model folder has no tokenizer; pass --random-tokens or .jsonl with input_ids")
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        found += windows(ids, cfg.seq_len, prefix, suffix)
    if not found:
        raise SinkscopeError("the data produced no tokens; pass a non-empty file")
    if len(found) > cfg.samples:
        order = torch.randperm(len(found), generator=generator)[: cfg.samples].sort().values
        found = [found[i] for i in order.tolist()]
    return found


def describe_data(source: str | None, *, random_tokens: bool, bos: str, seq_len: int, sequences: list[list[int]],
                  default: tuple[str, Path | None] = ("embedded prompts", PROMPTS_FILE)) -> dict:
    """What a result file says about its data: the source (a file or folder with its SHA-256, the embedded
    prompts or random tokens; ``default`` names the data used when no source is given), the BOS setting and
    the counts, so a report can say which data each run used."""
    if random_tokens:
        name, digest = "random tokens", None
    elif source is None:
        name, digest = default[0], default[1] and file_digest(default[1])
    else:
        name, digest = Path(source).name, file_digest(Path(source))
    return {"source_name": name, "sha256": digest, "bos": bos, "seq_len": seq_len,
            "sequences": len(sequences), "tokens": sum(len(s) for s in sequences)}


def batches(sequences: list[list[int]], batch_size: int, pad_id: int, padding_side: str
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) batches, padded on ``padding_side`` to the longest sequence."""
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
            ids[row, span] = torch.tensor(seq)
            mask[row, span] = 1
        yield ids, mask
