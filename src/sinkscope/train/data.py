"""Training text: documents -> BPE tokenizer -> token streams -> seeded windows with a BOS in front.

Sources: Python's standard library (the default: present on every machine, no download), the user's
.txt/.jsonl files or folders, or a Hugging Face dataset streamed by name. Every N-th document is held
out for validation. A batch is a pure function of (data seed, step, micro-batch, rank), so a resumed
run sees exactly the batches it would have seen, with no sampler state to save.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import jsonl_records, read_text
from ..errors import SinkscopeError
from .config import TrainDataConfig

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")  # ids 0, 1, 2: the model config's bos/eos/pad
TOKENIZER_SAMPLE_CHARS = 8_000_000  # BPE merges are learnt from this many characters (deterministic prefix)


def cache_dir() -> Path:
    """Where tokenizers and token streams are cached: $SINKSCOPE_CACHE, else ~/.cache/sinkscope."""
    return Path(os.environ.get("SINKSCOPE_CACHE", Path.home() / ".cache" / "sinkscope"))


def stdlib_documents() -> list[str]:
    """Every .py file of this Python's standard library (sources and their docstrings), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def hf_documents(name: str, split: str, text_field: str, limit: int | None) -> list[str]:
    """Texts streamed from a Hugging Face dataset (hub name or local dataset folder), in stream order."""
    import datasets

    path, _, config_name = name.partition(":")
    try:
        stream = datasets.load_dataset(path, config_name or None, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001  (datasets raises many types for missing/offline/malformed sources)
        raise SinkscopeError(f"cannot stream dataset '{name}' split '{split}': {str(err).splitlines()[0]}") from None
    texts = []
    for record in stream:
        if text_field not in record:
            raise SinkscopeError(f"dataset '{name}' has no field '{text_field}'; pass --text-field "
                                 f"(fields: {', '.join(record)})")
        texts.append(str(record[text_field]))
        if limit is not None and len(texts) >= limit:
            break
    return texts


def file_documents(source: str, text_field: str) -> list[str]:
    """Texts of a .txt file, a .jsonl file (field ``text_field``) or a folder of .txt/.jsonl files."""
    path = Path(source)
    if not path.exists():
        raise SinkscopeError(f"data source {source} does not exist; pass 'stdlib', a .txt/.jsonl file or folder, "
                             "or hf:NAME")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file()) \
        if path.is_dir() else [path]
    texts = []
    for file in files:
        if file.suffix != ".jsonl":
            texts.append(read_text(file))
            continue
        for n, record in jsonl_records(file):
            if not isinstance(record, dict) or text_field not in record:
                raise SinkscopeError(f"{file} line {n} has no '{text_field}' field; pass --text-field")
            texts.append(str(record[text_field]))
    return [t for t in texts if t.strip()]


def training_texts(cfg: TrainDataConfig) -> list[str]:
    """The texts of a training source (stdlib, hf:NAME, a file or folder), blank ones dropped."""
    if cfg.source == "stdlib":
        docs = stdlib_documents()
    elif cfg.source.startswith("hf:"):
        docs = hf_documents(cfg.source[3:], cfg.split, cfg.text_field, cfg.max_documents)
    else:
        docs = file_documents(cfg.source, cfg.text_field)
    docs = docs[: cfg.max_documents] if cfg.max_documents else docs
    if not docs:
        raise SinkscopeError(f"data source {cfg.source} holds no text")
    return docs


def split_documents(docs: list[str], val_every: int) -> tuple[list[str], list[str]]:
    """(train, validation): every ``val_every``-th document (1st, (N+1)-th, ...) is held out."""
    if len(docs) < 2:  # one document: hold out its tail, so both splits exist
        text = docs[0]
        cut = len(text) - max(1, len(text) // val_every)
        return [text[:cut]], [text[cut:]]
    val = docs[::val_every]
    train = [d for i, d in enumerate(docs) if i % val_every]
    return train, val


def _fingerprint(docs: list[str], vocab_size: int) -> str:
    digest = hashlib.sha256(f"v1|{vocab_size}|{len(docs)}".encode())
    for doc in docs:
        digest.update(hashlib.sha256(doc.encode()).digest())
    return digest.hexdigest()[:16]


def train_tokenizer(docs: list[str], vocab_size: int, cache: Path | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` learnt from ``docs`` (cached by content), adding BOS.

    The special tokens come first, so <|bos|> = 0, <|eos|> = 1, <|pad|> = 2 whatever the data.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    path = (cache or cache_dir()) / "tokenizers" / f"bpe-{_fingerprint(docs, vocab_size)}.json"
    if not path.exists():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(_sample(docs), trainer)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{SPECIAL_TOKENS[0]} $A", pair=f"{SPECIAL_TOKENS[0]} $A $B", special_tokens=[(SPECIAL_TOKENS[0], 0)])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1],
                                   pad_token=SPECIAL_TOKENS[2], add_bos_token=True)


def _stop_adding_bos(tokenizer, name: str) -> None:
    """A tokenizer that prepends BOS must stop: it is saved with a model trained without BOS, so that
    probes encode text exactly as training did."""
    tokenizer.add_bos_token = False
    if tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        raise SinkscopeError(f"the tokenizer {name} still prepends BOS after add_bos_token=False, so a model "
                             "trained with --no-bos would be probed with BOS; give a tokenizer without a BOS template")


def _sample(docs: list[str]):
    budget = TOKENIZER_SAMPLE_CHARS
    for doc in docs:
        if budget <= 0:
            return
        yield doc[:budget]
        budget -= len(doc)


def encode(docs: list[str], tokenizer) -> torch.Tensor:
    """One stream: each document's ids followed by EOS, (N,) int32."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        for row in tokenizer(docs[start:start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            if eos is not None:
                ids.append(eos)
    return torch.tensor(ids, dtype=torch.int32)


@dataclass
class TokenData:
    """Train and validation token streams and the window recipe; batches are pure functions of their index."""

    train: torch.Tensor  # (N_train,) int32
    val: torch.Tensor  # (N_val,) int32
    seq_len: int
    bos_id: int | None  # None: windows are plain stream tokens, the first one arbitrary
    seed: int

    def __post_init__(self):
        body = self.seq_len - (self.bos_id is not None)
        for name, stream in (("training", self.train), ("validation", self.val)):
            if len(stream) <= body:
                raise SinkscopeError(f"the {name} split has {len(stream)} tokens, too few for one window of "
                                     f"{self.seq_len}; add data or lower --seq-len")

    def windows(self, stream: torch.Tensor, starts: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(B, length) windows: BOS (if any) then stream tokens from each start."""
        length = length or self.seq_len
        if self.bos_id is None:
            return stream[starts[:, None] + torch.arange(length)].long()
        body = stream[starts[:, None] + torch.arange(length - 1)].long()
        return torch.cat([torch.full((len(starts), 1), self.bos_id, dtype=torch.long), body], dim=1)

    def batch(self, index: int, batch_size: int) -> torch.Tensor:
        """The ``index``-th (B, T) micro-batch of the run: index = (step * accum + micro) * world + rank.

        Numbering micro-batches globally makes N processes with accumulation A see exactly the batches
        of one process with accumulation N * A.
        """
        generator = torch.Generator().manual_seed(self.seed * 1_000_000_007 + index)
        starts = torch.randint(0, len(self.train) - self.seq_len + 1, (batch_size,), generator=generator)
        return self.windows(self.train, starts)

    def fixed_val(self, n: int, length: int | None = None, seed_offset: int = 0) -> torch.Tensor:
        """(n, length) held-out windows, the same for every call (validation and telemetry batches)."""
        length = min(length or self.seq_len, len(self.val))
        generator = torch.Generator().manual_seed(self.seed + 7919 + seed_offset)
        starts = torch.randint(0, len(self.val) - length + 1, (n,), generator=generator)
        return self.windows(self.val, starts, length)


def prepare_data(cfg: TrainDataConfig, vocab_size: int, cache: Path | None = None):
    """(tokenizer, TokenData) for a run: documents read, split, tokenizer trained or loaded, streams cached."""
    docs = training_texts(cfg)
    train_docs, val_docs = split_documents(docs, cfg.val_every_doc)
    if cfg.tokenizer:
        from ..loading import load_tokenizer, resolve_source

        tokenizer = load_tokenizer(resolve_source(cfg.tokenizer), required=True)
        tag = hashlib.sha256(cfg.tokenizer.encode()).hexdigest()[:8]
    else:
        tokenizer = train_tokenizer(train_docs, vocab_size, cache)
        tag = f"bpe{vocab_size}"
    streams = (cache or cache_dir()) / "streams" / f"{_fingerprint(docs, cfg.val_every_doc)}-{tag}.pt"
    if streams.exists():
        train, val = torch.load(streams)
    else:
        train, val = encode(train_docs, tokenizer), encode(val_docs, tokenizer)
        streams.parent.mkdir(parents=True, exist_ok=True)
        tmp = streams.with_suffix(f".{os.getpid()}.tmp")
        torch.save((train, val), tmp)
        os.replace(tmp, streams)
    bos = tokenizer.bos_token_id
    if cfg.bos and bos is None:
        raise SinkscopeError("the tokenizer defines no BOS token; pass --no-bos to train on windows without one")
    if not cfg.bos:
        _stop_adding_bos(tokenizer, cfg.tokenizer or "trained on the data")
    return tokenizer, TokenData(train=train, val=val, seq_len=cfg.seq_len, bos_id=bos if cfg.bos else None,
                                seed=cfg.data_seed)
