"""What every part of benchmarks/gpu_check.py shares: its context, the CUDA-aware timer, a one-line error."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sinkscope.results import write_json

NEEDS_CUDA = "needs CUDA"  # what a figure only a GPU can give (peak CUDA memory, MFU) says in a --smoke run


@dataclass
class Context:
    """One part's run: its size, device, scratch folder, deadline, and where its partial result goes."""

    smoke: bool  # tiny sizes on the CPU: the script is checked, nothing is measured
    device: str  # "cuda", or "cpu" for --smoke
    work: Path  # scratch folder of this part (saved models, training runs), never the results folder
    deadline: float  # time.time() at which the parent stops this part
    result: Path  # the part's JSON, rewritten after each finished piece so that a timeout keeps it

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def record(self, entry: dict) -> None:
        """Keep what is finished so far: the parent reads it even if the part is stopped later."""
        write_json(self.result, {"status": "running", **entry})

    def needs_cuda(self, value):
        """``value`` on a GPU; in --smoke the CPU's stand-in is no measurement, so it says why it is absent."""
        return value if self.device == "cuda" else NEEDS_CUDA


def timed(run: Callable[[], object], device: str) -> tuple[float, int | None]:
    """(wall seconds, peak bytes allocated by torch during ``run``); the peak is None off CUDA."""
    import torch

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated() if cuda else None


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def gib(n: int | None) -> float | None:
    return None if n is None else n / 2**30


def ratio(x: float | None, y: float | None) -> float | None:
    return None if x is None or not y else x / y
