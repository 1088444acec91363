"""``sinkscope stream`` configuration (kept apart from the runner so ``--help`` imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LoadConfig, field
from ..criteria import Criteria

POSITIONS = ("original", "cache")
# Calibration text by default: 4 windows of 64 tokens (192 targets a policy can change) chose the wrong
# sink on an organism, 16 chose right; 4 windows of 1,024 tokens choose right on SmolLM2.
CALIBRATION_TOKENS = 4096
MIN_CALIBRATION = 4


@dataclass
class StreamConfig:
    """``sinkscope stream``: perplexity over long text under a KV budget, per cache policy."""

    load: LoadConfig = field(default_factory=LoadConfig, why="model loading options")
    criteria: Criteria = field(default_factory=Criteria, why="decision rules; stream reads the secondary-sink ones")
    data: str | None = field(None, why="text file, folder of .txt or .jsonl ('text' or 'input_ids'); default: the "
                             "held-out stdlib documents the embedded organisms were validated on")
    seq_len: int = field(256, why="tokens per evaluated document (windows shorter than this are skipped)", min=2)
    samples: int = field(32, why="documents to evaluate; the confidence interval is a bootstrap over them", min=1)
    bos: str = field("auto", why="prepend the BOS token: auto follows the tokenizer's own habit",
                     choices=("auto", "always", "never"))
    budget: int = field(32, why="KV budget B: most keys any query may attend (kept tokens + recent window)", min=1)
    keep_first: tuple[int, ...] = field((0, 1, 4), why="policies keeping the first k tokens (0 = plain window)")
    discovered: bool = field(True, why="also evaluate the policy that keeps the discovered sinks that pay off instead",
                             off="skip the discovered policy (and its calibration documents)")
    sink_slots: int = field(4, why="most token classes the discovered policy may keep beside its window: StreamingLLM "
                            "keeps 4 initial tokens (Xiao et al. 2023), and each kept sink costs the window a slot",
                            min=1)
    calibration: int | None = field(None, why="documents, disjoint from the evaluated ones, on which sinks are "
                                    "discovered and each candidate must lower perplexity to be kept; default: "
                                    f"enough for {CALIBRATION_TOKENS:,} tokens, at least {MIN_CALIBRATION}", min=1)
    positions: tuple[str, ...] = field(("original",), why="original: each token keeps its position (exact mask "
                                       "simulation); cache: positions re-assigned within the cache (StreamingLLM)")
    batch_size: int = field(8, why="documents per forward pass; lower it if memory runs out", min=1)
    query_chunk: int = field(256, why="queries per chunk in the exact discovery pass; bounds memory to B*H*chunk*T",
                             min=1)
    seed: int = field(0, why="seed for document sampling and the bootstrap; same seed, same numbers")
    out: str | None = field(None, why="output folder for stream.json")

    def calibration_documents(self) -> tuple[int, int]:
        """(wanted, least acceptable) calibration documents: ``calibration`` exactly when given, else enough for
        ``CALIBRATION_TOKENS`` tokens where the text has them, and never fewer than ``MIN_CALIBRATION``."""
        if self.calibration is not None:
            return self.calibration, self.calibration
        return max(MIN_CALIBRATION, -(-CALIBRATION_TOKENS // self.seq_len)), MIN_CALIBRATION
