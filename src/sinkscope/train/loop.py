"""``sinkscope train``: AdamW + warm-up/cosine, accumulation, clipping, DDP, telemetry, checkpoints, resume.

Run folder layout (``--out``):
  metrics.jsonl     one record per logged step: loss, lr, grad norm, tokens, seconds (+ val_loss)
  telemetry.jsonl   sink telemetry on a fixed held-out batch (see telemetry.py)
  ckpt-NNNNNNN/     safetensors checkpoints; latest.json names the newest
  model/            the final model + tokenizer + sinkscope.json card (softmax: a plain Llama folder)
  run.json          config, provenance and final figures (read by ``sinkscope compare``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..config import check_bounds
from ..distributed import init_from_env
from ..errors import SinkscopeError
from ..results import SCHEMA_VERSION, provenance, to_jsonable, write_json
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    newest_good_checkpoint,
    save_checkpoint,
    truncate_log,
)
from .config import TrainConfig
from .data import prepare_data
from .model import RMSNorm, SinkscopeConfig, build_model
from .telemetry import TensorBoard, sink_telemetry


def lr_at(step: int, cfg) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to min_lr_ratio * lr, or
    with ``cooldown`` steps (warm-up, stable, decay) constant lr and a linear decay over the last ``cooldown``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.cooldown:
        progress = min(1.0, max(0.0, (step - (cfg.steps - cfg.cooldown)) / cfg.cooldown))
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * progress)
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only, never on norms, gains, biases or sink logits.

    HeadNorm's gamma (H, D) is a matrix by shape but a gain by role: decaying it would pull every head's
    output towards zero, so norm modules are excluded by type, not by shape.
    """
    gains = {id(p) for module in model.modules() if isinstance(module, RMSNorm) for p in module.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2 and id(p) not in gains]
    rest = [p for p in trainable if p.dim() < 2 or id(p) in gains]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


def freeze_all_but(model: nn.Module, prefixes: str) -> None:
    """Train only the parameters whose names start with one of the comma-separated ``prefixes``."""
    wanted = tuple(prefix.strip() for prefix in prefixes.split(",") if prefix.strip())
    names = [name for name, _ in model.named_parameters()]
    unmatched = [prefix for prefix in wanted if not any(name.startswith(prefix) for name in names)]
    if not wanted or unmatched:
        raise SinkscopeError(f"--trainable: {', '.join(unmatched) or repr(prefixes)} matches no parameter; "
                             f"names look like {names[1]}")
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(wanted))


def model_config(cfg: TrainConfig, vocab_size: int, tokenizer) -> SinkscopeConfig:
    m = cfg.model
    if m.hidden_size % m.heads:
        raise SinkscopeError(f"--hidden-size {m.hidden_size} must be a multiple of --heads {m.heads}")
    if m.kv_heads is not None and m.heads % m.kv_heads:
        raise SinkscopeError(f"--heads {m.heads} must be a multiple of --kv-heads {m.kv_heads}")
    if cfg.data.seq_len > m.max_len:
        raise SinkscopeError(f"--seq-len {cfg.data.seq_len} exceeds --max-len {m.max_len}")
    return SinkscopeConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_size or 4 * m.hidden_size,
        num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
        max_position_embeddings=m.max_len, rope_theta=m.rope_theta, rope=m.rope, tie_word_embeddings=m.tie_embeddings,
        attention_variant=m.variant, qk_norm=m.qk_norm, headnorm_shared=m.headnorm_shared, gate=m.gate,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def make_model(cfg: TrainConfig, tokenizer) -> nn.Module:
    """A fresh seeded model, or ``init_from`` loaded (and given HeadNorm when the variant asks)."""
    if cfg.model.init_from is None:
        return build_model(model_config(cfg, len(tokenizer), tokenizer), seed=cfg.seed)
    from ..loading import load_model
    from .hf import from_llama

    loaded = load_model(cfg.model.init_from)
    if len(tokenizer) > loaded.model.config.vocab_size:
        raise SinkscopeError(f"the tokenizer has {len(tokenizer)} tokens but {cfg.model.init_from} only "
                             f"{loaded.model.config.vocab_size}; pass --tokenizer {cfg.model.init_from}")
    return from_llama(loaded.model.train(), variant=cfg.model.variant, seed=cfg.seed)


def _check_sources(cfg: TrainConfig) -> None:
    """Refuse torn model or tokenizer folders now, not after minutes of reading and tokenising the data."""
    from ..loading import check_folder, resolve_source

    if cfg.model.init_from:
        check_folder(resolve_source(cfg.model.init_from))
    if cfg.data.tokenizer:
        check_folder(resolve_source(cfg.data.tokenizer), weights=False)


def _device(cfg: TrainConfig, rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SinkscopeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _mean_across(value: torch.Tensor, world: int) -> float:
    if world > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value.item()


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(to_jsonable(record)) + "\n")


def resume_key(cfg: TrainConfig) -> dict:
    """The config fields a checkpoint must share with the run that resumes it (not logging or out)."""
    values = dataclasses.asdict(cfg)
    return {k: values[k] for k in ("model", "data", "optim", "seed")}


class Trainer:
    """One training run. ``run()`` trains to ``optim.steps`` (or ``max_minutes``) and returns run.json."""

    def __init__(self, cfg: TrainConfig):
        check_bounds(cfg)  # --steps 0 and friends, also for configs built in Python
        o = cfg.optim
        if o.cooldown < 0 or o.cooldown > max(0, o.steps - o.warmup):
            raise SinkscopeError(f"--cooldown {o.cooldown} must lie between 0 and --steps minus --warmup "
                                 f"({o.steps - o.warmup})")
        self.cfg = cfg
        _check_sources(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world = init_from_env()
        self.device = _device(cfg, self.rank)
        self.out = Path(cfg.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.world > 1:  # rank 0 trains and caches the tokenizer, the others then read the cache
            import torch.distributed as dist

            if self.rank == 0:
                self.tokenizer, self.data = prepare_data(cfg.data, cfg.model.vocab_size)
            dist.barrier()
            if self.rank != 0:
                self.tokenizer, self.data = prepare_data(cfg.data, cfg.model.vocab_size)
        else:
            self.tokenizer, self.data = prepare_data(cfg.data, cfg.model.vocab_size)
        self.model = make_model(cfg, self.tokenizer).to(self.device)
        if cfg.optim.trainable:
            freeze_all_but(self.model, cfg.optim.trainable)
        self.model.train()
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.step, self.elapsed = 0, 0.0
        if cfg.resume:
            self._resume()
        elif self.rank == 0 and latest_checkpoint(self.out) is not None:
            raise SinkscopeError(f"{self.out} already holds a run; pass --resume to continue it or a new --out")
        self.forward = self.ddp = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = self.ddp = DistributedDataParallel(self.model)
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        self.val_batch = self.data.fixed_val(cfg.eval_batches * cfg.optim.batch_size)
        self.telemetry_batch = self.data.fixed_val(cfg.telemetry_samples, cfg.telemetry_len, seed_offset=1)
        self.autocast = self.device.type == "cuda"  # bf16 autocast on GPU, plain float32 on CPU

    def _resume(self) -> None:
        folder, torn = newest_good_checkpoint(self.out)
        if folder is None and not torn:
            raise SinkscopeError(f"--resume: {self.out} has no checkpoint yet; drop --resume to start the run")
        if folder is None:
            raise SinkscopeError(f"--resume: no checkpoint in {self.out} is whole ({torn[0][0].name}: {torn[0][1]}); "
                                 "start again with a new --out")
        if torn and self.rank == 0:
            others = f" (and {len(torn) - 1} older)" if len(torn) > 1 else ""
            print(f"sinkscope train: {torn[0][0].name} is torn ({torn[0][1]}){others}; resuming from the newest "
                  f"whole checkpoint, {folder.name}", file=sys.stderr)
        state = load_checkpoint(folder, self.model, self.optimizer, to_jsonable(resume_key(self.cfg)))
        self.step, self.elapsed = state["step"], state["elapsed"]
        if self.rank == 0:
            for log in ("metrics.jsonl", "telemetry.jsonl"):
                truncate_log(self.out / log, self.step)

    def _loss(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.forward(input_ids=ids, labels=ids).loss

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        losses = []
        for chunk in self.val_batch.split(self.cfg.optim.batch_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                losses.append(self.model(input_ids=chunk.to(self.device), labels=chunk.to(self.device)).loss.float())
        self.model.train()
        return torch.stack(losses).mean().item()

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm)."""
        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, o)
        total = torch.zeros((), device=self.device)
        for micro in range(o.grad_accum):
            index = (self.step * o.grad_accum + micro) * self.world + self.rank
            ids = self.data.batch(index, o.batch_size).to(self.device)
            last = micro == o.grad_accum - 1
            sync = self.ddp.no_sync() if self.world > 1 and not last else contextlib.nullcontext()
            with sync:
                loss = self._loss(ids)
                (loss / o.grad_accum).backward()
            total += loss.detach().float() / o.grad_accum
        loss = _mean_across(total, self.world)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            folder = save_checkpoint(self.out, self.step, self.model, self.optimizer, self._state(),
                                     name=f"nonfinite-step-{self.step + 1}") if self.rank == 0 else self.out
            raise SinkscopeError(f"loss became non-finite at step {self.step + 1}; the state before it is saved in "
                                 f"{folder}; lower --lr or raise --warmup")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip if o.clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, grad_norm.item()

    def _state(self) -> dict:
        return {"config": to_jsonable(resume_key(self.cfg)), "elapsed": self.elapsed,
                "tokens": self.tokens(self.step)}

    def tokens(self, step: int) -> int:
        o = self.cfg.optim
        return step * o.batch_size * o.grad_accum * self.world * self.data.seq_len

    def run(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        lead = self.rank == 0  # only rank 0 writes; every rank joins validation and telemetry (probe all-reduces)
        board = TensorBoard(self.out / "tensorboard") if lead else None
        metrics, telemetry = self.out / "metrics.jsonl", self.out / "telemetry.jsonl"
        if self.step >= o.steps:
            raise SinkscopeError(f"{self.out} already finished its {o.steps} steps; nothing to resume")
        if self.step == 0:
            if lead:
                for log in (metrics, telemetry):
                    log.unlink(missing_ok=True)
            if cfg.telemetry_every:
                self._telemetry(telemetry, board)
        start = time.perf_counter() - self.elapsed
        stopped_early = False
        while self.step < o.steps:
            loss, grad_norm = self.train_step()
            self.elapsed = time.perf_counter() - start
            record = {"step": self.step, "tokens": self.tokens(self.step), "loss": loss, "lr": lr_at(self.step - 1, o),
                      "grad_norm": grad_norm, "seconds": round(self.elapsed, 2)}
            stopped_early = cfg.max_minutes is not None and self.elapsed > 60 * cfg.max_minutes
            last = self.step == o.steps or stopped_early
            if self.step % cfg.eval_every == 0 or last:
                record["val_loss"] = self.validate()
            if lead and (self.step % cfg.log_every == 0 or "val_loss" in record):
                _append(metrics, record)
                board.scalars(self.step, record)
            if cfg.telemetry_every and (self.step % cfg.telemetry_every == 0 or last):
                self._telemetry(telemetry, board)
            if lead and (self.step % cfg.checkpoint_every == 0 or last):
                save_checkpoint(self.out, self.step, self.model, self.optimizer, self._state())
            if stopped_early:
                break
        if not lead:
            return {}
        board.close()
        return self._finish(record, stopped_early)

    def _telemetry(self, path: Path, board) -> None:
        figures = sink_telemetry(self.model, self.telemetry_batch, self.cfg.criteria)
        if self.rank != 0:
            return
        record = {"step": self.step, "tokens": self.tokens(self.step), "seconds": round(self.elapsed, 2), **figures}
        _append(path, record)
        board.scalars(self.step, {f"sink/{k}": v for k, v in record.items() if isinstance(v, list)})

    def _finish(self, last: dict, stopped_early: bool) -> dict:
        from .export import export_model

        folder = export_model(self.model, self.tokenizer, self.out / "model", self.cfg)
        tokens = self.tokens(self.step)
        summary = {
            "schema_version": SCHEMA_VERSION,
            "kind": "train",
            "provenance": provenance(model=self.cfg.model.init_from, config=self.cfg, seed=self.cfg.seed,
                                     dtype="bfloat16-autocast" if self.autocast else "float32",
                                     device=str(self.device), model_config=self.model.config.to_dict()),
            "variant": self.cfg.model.variant,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "steps": self.step,
            "tokens": tokens,
            "seconds": self.elapsed,
            "tokens_per_second": tokens / max(self.elapsed, 1e-9),
            "final_train_loss": last["loss"],
            "final_val_loss": last["val_loss"],
            "stopped_early": stopped_early,
            "model_folder": str(folder),
        }
        write_json(self.out / "run.json", summary)
        return summary


def train(cfg: TrainConfig) -> dict:
    """Train one run as configured; returns the content of run.json (empty on ranks > 0)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
