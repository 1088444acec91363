"""The training parts of benchmarks/gpu_check.py: paper-152m throughput and MFU, and the short C6 run."""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from gpu_check_common import Context, gib, ratio, timed
from sinkscope.config import build, load_yaml
from sinkscope.train.compare import compare, read_run
from sinkscope.train.config import CompareConfig, TrainConfig
from sinkscope.train.data import SPECIAL_TOKENS
from sinkscope.train.loop import Trainer, model_config, train
from sinkscope.train.model import build_model
from train_throughput import PEAK_FLOPS, tokens_per_second, train_flops_per_token

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "paper-152m.yaml"
VARIANTS = ("softmax", "headnorm")  # the baseline and the paper's fix, compared throughout
# --smoke: the paper's recipe at a size two CPU cores train in seconds
SMOKE_MODEL = {"layers": 2, "hidden_size": 64, "heads": 4, "ffn_size": 128, "vocab_size": 512, "max_len": 64}
SMOKE_DATA = {"seq_len": 64, "max_documents": 200}
SMOKE_OPTIM = {"batch_size": 4}
THROUGHPUT_STEPS, THROUGHPUT_WARMUP = 10, 3  # timed forward + backward steps (median), after warm-up (compile included)
SMOKE_STEPS, SMOKE_WARMUP = 2, 1
MATMUL_SIZE, MATMUL_REPEATS = 8192, 10  # a bf16 matrix product large enough to show the chip's real ceiling
# C6: the loss curve has this many points; the sink telemetry this many records per run
CURVE_POINTS, TELEMETRY_POINTS = 20, 4
C6_SEED = 0  # one seed, the same for both variants: initialisation and batches
C6_COMPILE = False  # eager: no compile time comes out of the budget, and both variants start at once
CALIBRATION_WARMUP, CALIBRATION_STEPS = 2, 5  # HeadNorm train steps timed to size the runs (it is the slower one)
SAFETY = 0.8  # of each run's share of the budget planned as train steps; the rest covers validation and telemetry
RUN_OVERHEAD_S = 15  # per run: the last checkpoint (model + AdamW state, ~1.8 GB at 152M) and the exported model
SMOKE_C6_STEPS = 12  # --smoke trains a fixed few steps instead of filling its budget
PAPER_GPUS = 8  # configs/paper-152m.yaml: 8 GPUs x 16 x 4 accumulation x 1024 = 524k tokens per step


def paper(smoke: bool) -> TrainConfig:
    """configs/paper-152m.yaml as ``sinkscope train --config`` reads it; tiny under ``smoke``."""
    cfg = build(TrainConfig, load_yaml(PAPER_CONFIG))
    if not smoke:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **SMOKE_MODEL),
                               data=dataclasses.replace(cfg.data, **SMOKE_DATA),
                               optim=dataclasses.replace(cfg.optim, **SMOKE_OPTIM))


def build_variant(cfg: TrainConfig, variant: str, device: str):
    """The preset's model as ``sinkscope train`` builds it (special tokens as its BPE numbers them)."""
    ids = SimpleNamespace(**{f"{name}_token_id": SPECIAL_TOKENS.index(f"<|{name}|>") for name in ("bos", "eos", "pad")})
    spec = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, variant=variant))
    return build_model(model_config(spec, cfg.model.vocab_size, ids), seed=cfg.seed).to(device)


# ---------------------------------------------------------------- training throughput
def throughput(ctx: Context) -> dict:
    """Forward + backward tokens/s of paper-152m, softmax and headnorm, eager and compiled, with MFU."""
    cfg = paper(ctx.smoke)
    batch, seq_len = cfg.optim.batch_size, cfg.data.seq_len
    ids = torch.randint(0, cfg.model.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(ctx.device)
    name = torch.cuda.get_device_name() if ctx.device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    steps, warmup = (SMOKE_STEPS, SMOKE_WARMUP) if ctx.smoke else (THROUGHPUT_STEPS, THROUGHPUT_WARMUP)
    backend = "eager" if ctx.smoke else "inductor"  # smoke: dynamo traces the model; inductor's codegen is the GPU's
    rows, out = [], {"device": name, "peak_flops": peak, "batch": batch, "seq_len": seq_len,
                     "matmul_tflops": ctx.needs_cuda(None)}
    for compiled in (False, True):
        for variant in VARIANTS:
            model = build_variant(cfg, variant, ctx.device)
            params = sum(p.numel() for p in model.parameters())
            forward = torch.compile(model, backend=backend) if compiled else model
            got = {}
            seconds, memory = timed(lambda: got.update(tps=tokens_per_second(forward, ids, steps, warmup,
                                                                             torch.bfloat16)), ctx.device)
            flops = train_flops_per_token(params, cfg.model.layers, cfg.model.hidden_size, seq_len)
            rows.append({"variant": variant, "compile": compiled, "tokens_per_second": got["tps"],
                         "mfu": ctx.needs_cuda(got["tps"] * flops / peak if peak else None),
                         "peak_gib": ctx.needs_cuda(gib(memory)), "wall_seconds": seconds, "parameters": params})
            del model, forward
            _free(ctx.device)
            ctx.record({**out, "tables": {"throughput": rows}})
        if not compiled and ctx.device == "cuda":
            out["matmul_tflops"] = _matmul_tflops()
    tps = {(r["variant"], r["compile"]): r["tokens_per_second"] for r in rows}
    speedup = ratio(tps[("softmax", True)], tps[("softmax", False)])
    overhead = [{"compile": c, "headnorm_overhead": 1 - ratio(tps[("headnorm", c)], tps[("softmax", c)]),
                 "compile_speedup_softmax": speedup} for c in (False, True)]
    return {**out, "tables": {"throughput": rows, "headnorm_overhead": overhead},
            "notes": [f"forward + backward of one {batch} x {seq_len} micro-batch (bf16 autocast, float32 weights, no "
                      f"optimizer step), median of {steps} steps after {warmup} warm-up steps (compile included "
                      "there); "
                      f"wall_seconds is the whole measurement with model build excluded",
                      f"MFU = tokens/s x (6 N + 12 L d T) FLOPs per token / {peak or 'no known'} FLOP/s "
                      "(PEAK_FLOPS in benchmarks/train_throughput.py: the datasheet's dense bf16 peak); matmul_tflops "
                      f"is a {MATMUL_SIZE}^3 bf16 product on this GPU, the ceiling really reachable",
                      f"compiled with backend {backend!r}" + (" (smoke: dynamo only)" if ctx.smoke else "")]}


def _matmul_tflops() -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    seconds, _ = timed(lambda: [a @ a for _ in range(MATMUL_REPEATS)], "cuda")
    return 2 * MATMUL_SIZE**3 * MATMUL_REPEATS / seconds / 1e12


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- convergence (C6)
def convergence(ctx: Context) -> dict:
    """Baseline and HeadNorm from one seed on the same token budget, sized to fill this part's time."""
    os.environ.setdefault("SINKSCOPE_CACHE", str(ctx.work / "cache"))  # its tokenizer and streams stay in --work
    base = paper(ctx.smoke)
    start = time.time()
    calibration = Trainer(c6_config(base, "headnorm", 1, ctx.work / "calibration", ctx.device))
    prepared = time.time() - start  # reading and tokenizing the text, the first time
    for _ in range(CALIBRATION_WARMUP):
        calibration.train_step()
    seconds, memory = timed(lambda: [calibration.train_step() for _ in range(CALIBRATION_STEPS)], ctx.device)
    per_step = seconds / CALIBRATION_STEPS
    del calibration
    _free(ctx.device)
    overhead = 3 if ctx.smoke else RUN_OVERHEAD_S
    per_run = (ctx.seconds_left() - 2 * overhead) / len(VARIANTS)
    if per_run < CURVE_POINTS * per_step / SAFETY:
        raise RuntimeError(f"reading and tokenizing the text took {prepared:.0f} s, which leaves {per_run:.0f} s "
                           f"per run: too little for {CURVE_POINTS} validation points; run it again (the tokenizer is "
                           f"cached in {os.environ['SINKSCOPE_CACHE']}) or raise the budget in gpu_check.PARTS")
    steps = SMOKE_C6_STEPS if ctx.smoke else max(CURVE_POINTS, int(SAFETY * per_run / per_step))
    plan = {"steps": steps, "seconds_per_step_headnorm": per_step, "data_seconds": prepared,
            "planned_seconds_per_run": per_run, "peak_gib_headnorm_step": ctx.needs_cuda(gib(memory))}
    summaries = {}
    for variant in VARIANTS:
        cfg = c6_config(base, variant, steps, ctx.work / f"c6-{variant}", ctx.device, max_minutes=1.25 * per_run / 60)
        summaries[variant] = train(cfg)
        ctx.record({"plan": plan, "runs": summaries})
    return {"plan": plan, **c6_result(ctx, base, steps, summaries)}


def c6_config(base: TrainConfig, variant: str, steps: int, out: Path, device: str,
              max_minutes: float | None = None) -> TrainConfig:
    """The preset's model, optimiser and data, shortened to ``steps`` with the paper's warm-up share."""
    share = base.optim.warmup / base.optim.steps  # paper-152m: 2,000 of 20,000 steps
    optim = dataclasses.replace(base.optim, steps=steps, warmup=max(1, round(share * steps)), grad_accum=1)
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, variant=variant), optim=optim, out=str(out), device=device,
        compile=C6_COMPILE, seed=C6_SEED, max_minutes=max_minutes, eval_every=max(1, steps // CURVE_POINTS),
        log_every=max(1, steps // CURVE_POINTS), telemetry_every=max(1, steps // TELEMETRY_POINTS),
        checkpoint_every=steps)


def c6_result(ctx: Context, base: TrainConfig, steps: int, summaries: dict) -> dict:
    """The curve at fixed intervals, and the tokens each variant needs to reach the baseline's final loss."""
    folders = [str(ctx.work / f"c6-{v}") for v in VARIANTS]
    target = summaries[VARIANTS[0]]["final_val_loss"]
    rows = compare(folders, CompareConfig(target_loss=target, baseline=VARIANTS[0]))["variants"]
    curves = {v: read_run(folder)["val_curve"] for v, folder in zip(VARIANTS, folders)}
    curve = [{"step": record["step"], "tokens": record["tokens"],
              **{v: next((r["val_loss"] for r in curves[v] if r["step"] == record["step"]), None) for v in VARIANTS}}
             for record in curves[VARIANTS[0]]]
    table = [{"variant": v, "final_val_loss": rows[v]["final_val_loss"]["mean"],
              "tokens_to_baseline_final": rows[v]["tokens_to_target"]["mean"],
              "speedup_vs_baseline": rows[v]["speedup_vs_baseline"],
              "max_layer_sink_score": rows[v]["max_layer_sink_score"]["mean"],
              "tokens_per_second": summaries[v]["tokens_per_second"], "tokens": summaries[v]["tokens"],
              "stopped_early": summaries[v]["stopped_early"]} for v in VARIANTS]
    verdict = _verdict(table, target)
    return {"baseline_final_val_loss": target, "verdict": verdict, "tables": {"c6": table, "c6_curve": curve},
            "notes": [verdict, _short_run_note(base, steps, summaries[VARIANTS[0]]["tokens"]),
                      "tokens_to_baseline_final: tokens until the validation loss first reaches the baseline's final "
                      "validation loss (None: not within the budget); speedup = baseline tokens / variant tokens"]}


def _verdict(table: list[dict], target: float) -> str:
    """One sentence: does HeadNorm get to the baseline's final loss sooner, on this short run?"""
    base, other = table
    if other["tokens_to_baseline_final"] is None:
        return (f"{other['variant']} does not reach the {base['variant']} run's final validation loss {target:.4f} "
                f"within {other['tokens']} tokens (its own final loss: {other['final_val_loss']:.4f}).")
    return (f"{other['variant']} reaches the {base['variant']} run's final validation loss {target:.4f} after "
            f"{other['tokens_to_baseline_final']:.0f} of {other['tokens']} tokens: {other['speedup_vs_baseline']:.2f}x "
            f"the baseline's speed on this run (one seed).")


def _short_run_note(base: TrainConfig, steps: int, tokens: int) -> str:
    """What this run is, set beside what the paper ran: the two must not be mistaken for each other."""
    mine, recipe = c6_config(base, VARIANTS[0], steps, Path("."), "cpu").optim, paper(smoke=False)
    o = recipe.optim
    step = f"{PAPER_GPUS} GPUs x {o.batch_size} x {o.grad_accum} x {recipe.data.seq_len}"
    paper_tokens = o.steps * PAPER_GPUS * o.batch_size * o.grad_accum * recipe.data.seq_len
    return (f"A SHORT RUN, NOT THE PAPER'S: {steps} steps of {mine.batch_size} x {base.data.seq_len} tokens "
            f"({tokens / 1e6:.1f}M tokens per variant), one seed, stdlib text, lr {mine.lr}, {mine.warmup} warm-up "
            f"steps, cosine. The paper trains {o.steps} steps of {step} tokens ({paper_tokens / 1e9:.1f}B) "
            "on OpenWebText.")
