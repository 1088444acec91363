"""Baseline vs HeadNorm with seeds (configs/cpu-compare.yaml), then ``sinkscope compare``.

    python benchmarks/train_cpu_compare.py --runs runs/cpu-compare --target-loss 3.6

Runs are sequential (one training at a time, as a shared 2-core machine needs) and resumable:
a finished run is skipped, a killed one continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sinkscope.cli import main as cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu-compare.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu-compare"))
    parser.add_argument("--variants", nargs="+", default=["softmax", "headnorm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--target-loss", type=float, default=3.6)
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: the preset's)")
    args = parser.parse_args()
    threads = ["--threads", str(args.threads)] if args.threads else []
    folders = []
    for variant in args.variants:
        for seed in args.seeds:
            out = args.runs / f"{variant}-{seed}"
            folders.append(str(out))
            if (out / "run.json").exists():
                continue
            flags = ["--resume"] if (out / "latest.json").exists() else []
            code = cli_main(["train", "--config", str(CONFIG), "--variant", variant, "--seed", str(seed),
                             "--data-seed", str(seed), "--out", str(out), *threads, *flags])
            if code:
                raise SystemExit(code)
    cli_main(["compare", *folders, "--target-loss", str(args.target_loss), "--out", str(args.runs / "compare.json")])
    print(json.dumps(json.loads((args.runs / "compare.json").read_text())["variants"], indent=1))


if __name__ == "__main__":
    main()
