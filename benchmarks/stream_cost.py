"""What does a SinkCache cost? Token-by-token decoding through it against plain decoding with a DynamicCache.

    python benchmarks/stream_cost.py --tokens 1024 --budget 64 256

Model: random-weight llama (``--layers``, ``--hidden``; heads of 64 dims, SwiGLU 4x, vocab 32000),
float32, batch ``--batch``, CPU threads ``--threads``. Each run decodes ``--tokens`` tokens one at a
time (teacher-forced on random ids, so every run does the same work), after a one-token prompt.
Reported: decoding tokens per wall second and per CPU second (best of ``--repeats``, runs
interleaved so other work on the machine disturbs all alike; with one thread CPU time is the steadier
figure on a busy machine), ms per step in the last quarter of the run (where the DynamicCache is
longest), and the cache's key/value bytes at the end. The SinkCache re-rotates its cached keys at
every step (O(budget * head_dim) per layer and head), the price of StreamingLLM's re-assigned positions.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers
from transformers import DynamicCache

from sinkscope.stream.cache import SinkCache


def build(layers: int, hidden: int, vocab: int = 32000):
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                      num_attention_heads=hidden // 64, vocab_size=vocab,
                                      max_position_embeddings=1 << 16)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def decode(model, ids: torch.Tensor, cache) -> dict:
    steps = []
    with torch.no_grad():
        model(ids[:, :1], cache=cache, use_cache=True)
        cpu = time.process_time()
        for i in range(1, ids.shape[1]):
            start = time.perf_counter()
            model(ids[:, i:i + 1], cache=cache, use_cache=True)
            steps.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu
    tail = steps[-max(1, len(steps) // 4):]
    return {"tokens_per_second": ids.shape[0] * len(steps) / sum(steps),
            "cpu_tokens_per_second": ids.shape[0] * len(steps) / cpu,
            "ms_per_step_last_quarter": 1000 * sum(tail) / len(tail), "cache_mib": cache_bytes(cache) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--budget", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--keep-first", type=int, default=4)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.layers, args.hidden)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    modes = {"DynamicCache (plain decoding)": lambda: DynamicCache(config=model.config)}
    for budget in args.budget:
        modes[f"SinkCache budget {budget}, first {args.keep_first}"] = \
            lambda b=budget: SinkCache(model, budget=b, keep_first=args.keep_first)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, make in modes.items():
            run = decode(model, ids, make())
            if name not in best or run["tokens_per_second"] > best[name]["tokens_per_second"]:
                best[name] = run
    print(f"llama {args.layers} layers, d={args.hidden}, batch {args.batch}, {args.tokens} tokens, "
          f"{args.threads} thread(s), torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'mode':40s} {'tokens/s':>10s} {'tokens/CPU-s':>13s} {'ms/step (last 1/4)':>20s} {'cache MiB':>10s}")
    for name, run in best.items():
        print(f"{name:40s} {run['tokens_per_second']:10.1f} {run['cpu_tokens_per_second']:13.1f} "
              f"{run['ms_per_step_last_quarter']:20.2f} {run['cache_mib']:10.2f}")
    print(json.dumps(best))


if __name__ == "__main__":
    main()
