"""Startup: `sinkscope --help`, every `sinkscope <command> --help` and `import sinkscope`, against
`python -c "import torch, transformers"`, each a fresh process, interleaved, best of ``--repeats``.

    python benchmarks/startup.py --repeats 5

Prints one line per case (best and median wall seconds, ratio of the best to the baseline's best).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from sinkscope.commands import COMMANDS

BASELINE = ("baseline: import torch, transformers", [sys.executable, "-c", "import torch, transformers"])


def cases() -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "sinkscope"]
    rows = [BASELINE, ("import sinkscope", [sys.executable, "-c", "import sinkscope"]),
            ("sinkscope --help", [*cli, "--help"])]
    return rows + [(f"sinkscope {c.name} --help", [*cli, c.name, "--help"]) for c in COMMANDS]


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each case (interleaved)")
    args = parser.parse_args()
    rows = cases()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(args.repeats):
        for name, argv in rows:
            times[name].append(wall(argv))
    base = min(times[BASELINE[0]])
    for name, _ in rows:
        print(f"{name:45s} best {min(times[name]):6.2f} s  median {statistics.median(times[name]):6.2f} s  "
              f"{min(times[name]) / base:5.2f}x baseline")


if __name__ == "__main__":
    main()
