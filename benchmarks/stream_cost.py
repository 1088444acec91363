"""What do stream's policies cost? Decoding through a SinkCache against a DynamicCache, and one policy pass
against one plain forward.

    python benchmarks/stream_cost.py --model SmolLM2-135M-Instruct.Q4_1.gguf --tokens 1024 --budget 128
    OMP_NUM_THREADS=1 python benchmarks/stream_cost.py --model ... --threads 1

1. Decoding (``--tokens`` tokens one at a time after a one-token prompt, teacher-forced on random ids so
   every run does the same work, batch ``--batch``): tokens per wall second and per CPU second through
   transformers' ``DynamicCache`` and through ``SinkCache(budget, keep_first)`` (cache positions); the ratio
   SinkCache / DynamicCache is the figure to read (issue 22 asks for at least 1x).
2. Policy passes (``--documents`` random documents of ``--tokens`` tokens, in one batch): seconds of one
   plain forward (the model's own attention, no cache, logits only) against ``stream``'s exact pass of each
   policy (logits and the NLL of every token), ``window`` and ``first-k`` in original and cache positions;
   the ratio policy / plain forward (issue 22 asks for at most 1.3x in original positions).

The last lines restate both ratios beside their targets, in wall and CPU time: on a shared machine, CPU time
moves less with other work. Model: ``--model`` (anything ``sinkscope`` loads: a folder, hub id, GGUF file or
embedded name) or, without it, a random-weight llama (``--layers``, ``--hidden``). Float32; CPU threads
``--threads`` (default: torch's own choice). Runs are interleaved and the best of ``--repeats`` kept, so that
other work on the machine disturbs baseline and candidate alike.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers
from transformers import DynamicCache

from sinkscope.config import LoadConfig
from sinkscope.loading import load_model, prepare_model
from sinkscope.stream.cache import SinkCache
from sinkscope.stream.config import StreamConfig
from sinkscope.stream.evaluate import policy_nll
from sinkscope.stream.policy import first_tokens


def build(args):
    if args.model:  # sinkscope's loader: a folder, hub id, GGUF file (dequantized) or embedded name
        return load_model(args.model, LoadConfig()).model
    config = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                                      vocab_size=32000, max_position_embeddings=1 << 16)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def timed(run) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def decode(model, ids: torch.Tensor, cache) -> None:
    with torch.no_grad():
        for i in range(ids.shape[1]):
            model(ids[:, i:i + 1], cache=cache, use_cache=True)


def interleaved(cases: dict, repeats: int) -> dict[str, dict]:
    """Best wall and CPU seconds of each case over ``repeats`` rounds, the cases run in turn within a round."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, run in cases.items():
            took = timed(run)
            best[name] = {k: min(v, best.get(name, took)[k]) for k, v in took.items()}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="folder, hub id, GGUF file or embedded name; default: a "
                        "random-weight llama")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--keep-first", type=int, default=4)
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-decoding", action="store_true", help="time the policy passes only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    print(f"{args.model or f'random llama {args.layers} layers, d={args.hidden}'}, {args.tokens} tokens, budget "
          f"{args.budget}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    results = {}
    if not args.skip_decoding:
        ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=generator)
        steps = args.batch * args.tokens
        decoding = interleaved({
            "DynamicCache": lambda: decode(model, ids, DynamicCache(config=model.config)),
            f"SinkCache first {args.keep_first}": lambda: decode(model, ids, SinkCache(model, args.budget,
                                                                                        args.keep_first))},
            args.repeats)
        base = decoding["DynamicCache"]
        print(f"\ndecoding, batch {args.batch}")
        print(f"{'cache':28s} {'tokens/s':>10s} {'tokens/CPU-s':>13s} {'vs DynamicCache (wall, CPU)':>30s}")
        for name, took in decoding.items():
            print(f"{name:28s} {steps / took['seconds']:10.1f} {steps / took['cpu_seconds']:13.1f} "
                  f"{base['seconds'] / took['seconds']:14.2f}x {base['cpu_seconds'] / took['cpu_seconds']:13.2f}x")
        results["decoding"] = decoding
    loaded = prepare_model(model, None, LoadConfig())
    docs = torch.randint(0, vocab, (args.documents, args.tokens), generator=generator)
    cfg = StreamConfig(batch_size=args.documents, budget=args.budget)

    def plain():
        with torch.no_grad():
            model(docs, use_cache=False)

    cases = {"plain forward": plain}
    for k in (0, 1, args.keep_first):
        kept = first_tokens(args.documents, args.tokens, k)
        for positions in ("original", "cache") if k else ("original",):
            cases[f"{'window' if k == 0 else f'first-{k}'} {positions}"] = \
                lambda kept=kept, positions=positions: policy_nll(loaded, docs, kept, args.budget, positions, cfg)
    passes = interleaved(cases, args.repeats)
    base = passes["plain forward"]
    print(f"\npolicy passes over {args.documents} x {args.tokens} tokens")
    print(f"{'pass':22s} {'seconds':>9s} {'CPU s':>9s} {'vs plain forward (wall, CPU)':>30s}")
    for name, took in passes.items():
        print(f"{name:22s} {took['seconds']:9.2f} {took['cpu_seconds']:9.2f} "
              f"{took['seconds'] / base['seconds']:14.2f}x {took['cpu_seconds'] / base['cpu_seconds']:13.2f}x")
    results["passes"] = passes
    print(json.dumps(results))
    print()
    for line in targets(results, args.keep_first):
        print(line)


def targets(results: dict, keep_first: int) -> list[str]:
    """Both ratios of issue 22 beside their targets: wall (CPU)."""
    def ratio(took, base, key):
        return took[key] / base[key]

    lines = []
    if "decoding" in results:
        base, sink = results["decoding"]["DynamicCache"], results["decoding"][f"SinkCache first {keep_first}"]
        wall, cpu = ratio(base, sink, "seconds"), ratio(base, sink, "cpu_seconds")
        lines.append(f"decoding, SinkCache / DynamicCache tokens/s: {wall:.2f}x wall ({cpu:.2f}x CPU); "
                     f"target >= 1: {'met' if min(wall, cpu) >= 1 else 'NOT met'}")
    base = results["passes"]["plain forward"]
    originals = {name: took for name, took in results["passes"].items() if name.endswith(" original")}
    for name, took in originals.items():
        wall, cpu = ratio(took, base, "seconds"), ratio(took, base, "cpu_seconds")
        lines.append(f"{name} pass / plain forward: {wall:.2f}x wall ({cpu:.2f}x CPU); "
                     f"target <= 1.3: {'met' if max(wall, cpu) <= 1.3 else 'NOT met'}")
    return lines

if __name__ == "__main__":
    main()
