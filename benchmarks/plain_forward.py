"""The floor a whole ``sinkscope probe`` process is compared with: the same process doing only the forward.

    python benchmarks/plain_forward.py MODEL --random-tokens --seq-len 4096 --samples 1
    python benchmarks/plain_forward.py --save-llama DIR   # the 12-layer d = 768 llama of probe_cost.py

It loads MODEL exactly as ``sinkscope probe`` does (hub id, folder, GGUF file, embedded name), builds
the same sequences from the same data flags, and runs one plain SDPA forward per batch under
``no_grad``, with no capture and no result file. Timing both as whole processes (imports, loading and
data included) gives the ratio a user sees:

    time sinkscope probe MODEL --random-tokens --seq-len 4096 --samples 1 --out /tmp/p
    time python benchmarks/plain_forward.py MODEL --random-tokens --seq-len 4096 --samples 1
"""

from __future__ import annotations

import argparse
import sys


def save_llama(folder: str, seq_len: int) -> None:
    from probe_cost import _model

    _model(seq_len, "sdpa").save_pretrained(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--save-llama", metavar="DIR", help="write probe_cost.py's random llama to DIR and stop")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--random-tokens", action="store_true")
    parser.add_argument("--bos", default="auto", choices=("auto", "always", "never"))
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    if args.save_llama:
        save_llama(args.save_llama, max(args.seq_len, 32768))
        return 0
    import torch

    from sinkscope.capture.runner import pad_id
    from sinkscope.config import DataConfig, LoadConfig
    from sinkscope.data import batches
    from sinkscope.loading import prepare_model
    from sinkscope.probe import sequences_for

    loaded = prepare_model(args.model, None, LoadConfig())
    data = DataConfig(data=args.data, seq_len=args.seq_len, samples=args.samples, batch_size=args.batch_size,
                      random_tokens=args.random_tokens, bos=args.bos)
    sequences = sequences_for(None, loaded, data)
    pad = pad_id(loaded.tokenizer, loaded.model.config)
    with torch.no_grad():
        for input_ids, attention_mask in batches(sequences, args.batch_size, pad, "right"):
            loaded.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
