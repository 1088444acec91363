"""Whole ``sinkscope probe`` processes against whole plain-forward processes, pair by pair.

    python benchmarks/probe_process.py /work/smollm2-hf --seq-len 2048 --samples 2 --repeats 3
    python benchmarks/probe_process.py /work/smollm2-hf --seq-len 2048 --samples 2 --repeats 3 --threads 1
    python benchmarks/probe_process.py /work/llama768 --seq-len 4096 --samples 1 --repeats 3

(``python benchmarks/plain_forward.py --save-llama /work/llama768`` writes the 12-layer d = 768 llama of
probe_cost.py.) Each repeat runs the probe (random tokens, the whole chain, a result folder written) and
then ``plain_forward.py`` on the same model and data, after one warm-up of each that is not counted, so
that drifting load hits both alike. What a user waits for is the whole process: imports, loading, data,
the sweep, the reduction and the result files. Reports the median wall and CPU (user + system) seconds of
each, the peak resident memory, and the median of the per-pair ratios. ``--threads N`` sets
OMP_NUM_THREADS for both; 0 keeps torch's default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(command: list[str], env: dict) -> dict:
    """Wall, CPU seconds and peak resident MiB of one whole process (the kernel's own accounting)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {child.stderr.read().decode()[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=0, help="0: all samples in one batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for both (0: torch's default)")
    args = parser.parse_args(argv)
    data = ["--random-tokens", "--seq-len", str(args.seq_len), "--samples", str(args.samples),
            "--batch-size", str(args.batch_size or args.samples)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as out:
        commands = {"probe": [sys.executable, "-m", "sinkscope", "probe", args.model, *data, "--out", out],
                    "plain": [sys.executable, str(HERE / "plain_forward.py"), args.model, *data]}
        for command in commands.values():  # warm-up: file caches, the digest cache, compiled bytecode
            run(command, env)
        runs = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                runs[name].append(run(command, env))
    print(f"{args.model}: {args.samples} x {args.seq_len} random tokens, threads "
          f"{args.threads or 'default'}, {args.repeats} pairs, load average {os.getloadavg()[0]:.1f}")
    for name, measured in runs.items():
        print(f"  {name:5s} wall {statistics.median(r['wall'] for r in measured):7.2f} s  "
              f"cpu {statistics.median(r['cpu'] for r in measured):7.2f} s  "
              f"peak {max(r['peak_mib'] for r in measured):6.0f} MiB")
    for key in ("wall", "cpu"):
        ratios = [p[key] / q[key] for p, q in zip(runs["probe"], runs["plain"])]
        print(f"  probe / plain {key}: median {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
