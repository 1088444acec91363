"""Training throughput: sinkscope's baseline vs HF LlamaForCausalLM (same config, same batch), and HeadNorm overhead.

Forward + backward tokens per second, median of timed repeats after warm-up. Prints one JSON line
per model and the ratios; ``--out FILE.json`` also writes them with provenance.

    python benchmarks/train_throughput.py --layers 6 --hidden-size 192 --heads 6 --batch 16 --seq-len 128
    python benchmarks/train_throughput.py --device cuda --layers 12 --hidden-size 768 --heads 12 --batch 16 --seq-len 1024 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers

from sinkscope.results import provenance, write_json
from sinkscope.train.model import SinkscopeConfig, build_model

# Peak dense bf16 tensor-core FLOP/s, the MFU denominator on CUDA, matched against torch.cuda.get_device_name().
# NVIDIA's datasheets give bf16 "with sparsity"; dense is half: H100 SXM and H200 SXM 1,979 -> 989 TFLOPS
# (the H200 has the H100's compute, with more and faster memory); A100 624 -> 312 TFLOPS.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def train_flops_per_token(parameters: int, layers: int, hidden: int, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 per parameter, plus attention's 12 * L * d * T (PaLM, appendix B)."""
    return 6 * parameters + 12 * layers * hidden * seq_len


def llama_twin(config: SinkscopeConfig) -> transformers.LlamaForCausalLM:
    twin = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True, rms_norm_eps=config.rms_norm_eps)
    model = transformers.LlamaForCausalLM(twin)
    model.config._attn_implementation = "sdpa"
    return model


def tokens_per_second(model, ids, steps: int, warmup: int, dtype) -> float:
    model.train()
    times = []
    for i in range(warmup + steps):
        if ids.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if ids.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return ids.numel() / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    base = dict(vocab_size=args.vocab, hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=args.seq_len)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    models = {
        "hf_llama": llama_twin(SinkscopeConfig(**base)),
        "sinkscope_softmax": build_model(SinkscopeConfig(**base, attention_variant="softmax")),
        "sinkscope_headnorm": build_model(SinkscopeConfig(**base, attention_variant="headnorm")),
    }
    results = {}
    for name, model in models.items():  # interleave repeats so background load hits every model alike
        results[name] = []
    for _ in range(3):
        for name, model in models.items():
            results[name].append(tokens_per_second(model.to(device), ids, args.steps, args.warmup, dtype))
    figures = {name: statistics.median(v) for name, v in results.items()}
    params = sum(p.numel() for p in models["sinkscope_softmax"].parameters())
    payload = {
        "tokens_per_second": figures,
        "baseline_vs_hf": figures["sinkscope_softmax"] / figures["hf_llama"],
        "headnorm_overhead": 1 - figures["sinkscope_headnorm"] / figures["sinkscope_softmax"],
        "parameters": params,
        "args": vars(args),
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        flops_per_token = train_flops_per_token(params, args.layers, args.hidden_size, args.seq_len)
        payload["mfu"] = {k: v * flops_per_token / peak for k, v in figures.items()} if peak else None
    print(json.dumps(payload, indent=1))
    if args.out:
        write_json(args.out, {"schema_version": 1, "kind": "benchmark", "provenance": provenance(config=vars(args)),
                              **payload})


if __name__ == "__main__":
    main()
