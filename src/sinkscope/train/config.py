"""``sinkscope train`` / ``compare`` configs. Every field has its reason; the CLI flags come from them.

Leaf names are unique across the sections, because each becomes one flag (``--variant``, ``--lr``).
YAML presets in configs/ nest them by section (``model:``, ``data:``, ``optim:``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import field
from ..criteria import Criteria

# The names of train/model.py's VARIANTS, repeated here so that `train --help` needs no torch (model.py is
# also the self-contained modeling file of exported runs, so it cannot import this); a test keeps them equal.
VARIANTS = ("softmax", "headnorm", "gated", "sigmoid", "softmax1", "sink_logit")


@dataclass
class ModelSpec:
    """The decoder to build (ignored for the shape when ``init_from`` names a checkpoint)."""

    variant: str = field("softmax", why="attention variant (method.md sections 6-7)", choices=VARIANTS)
    qk_norm: bool = field(False, why="add RMSNorm on queries and keys; combines with every variant")
    layers: int = field(6, why="decoder blocks; the sink forms in the middle layers, so a few are needed", min=1)
    hidden_size: int = field(192, why="residual width C", min=1)
    heads: int = field(6, why="query heads H (head_dim = hidden_size / heads)", min=1)
    kv_heads: int | None = field(None, why="key/value heads for grouped-query attention; default = heads", min=1)
    ffn_size: int | None = field(None, why="SwiGLU inner width; default 4 * hidden_size", min=1)
    vocab_size: int = field(2048, why="BPE vocabulary trained on the data (ignored with --tokenizer)")
    max_len: int = field(512, why="longest sequence the model accepts (rotary needs no table)", min=2)
    rope_theta: float = field(10000.0, why="rotary base frequency")
    rope: bool = field(True, why="rotary position embedding on queries and keys",
                       off="no positional encoding (NoPE): positions come only from the causal mask, so the first "
                       "position is marked by its structure alone")
    tie_embeddings: bool = field(True, why="share input and output embeddings (paper setup)",
                                 off="give the output layer its own weights instead of sharing the input embeddings")
    headnorm_shared: bool = field(False, why="headnorm: share one gamma (head_dim,) across heads instead of one per "
                                  "head (H, head_dim)")
    gate: str = field("elementwise", why="gated: one gate per channel or one per head", choices=("elementwise", "headwise"))
    init_from: str | None = field(None, why="continue-pretrain this llama-family folder, GGUF file or hub "
                                  "id; headnorm adds HeadNorm")


@dataclass
class TrainDataConfig:
    """Where training text comes from and how windows are cut."""

    source: str = field("stdlib", why="stdlib (Python's sources, offline), a .txt/.jsonl file or folder, or "
                        "hf:NAME[:CONFIG] (streamed)")
    split: str = field("train", why="hf: dataset split to stream")
    text_field: str = field("text", why="hf/jsonl: record field holding the text")
    max_documents: int | None = field(None, why="read at most this many documents (hf streams need a bound)", min=1)
    tokenizer: str | None = field(None, why="use this tokenizer (folder or hub id) instead of training a BPE one")
    seq_len: int = field(128, why="tokens per training window, the BOS token included", min=2)
    bos: bool = field(True, why="start every window with <|bos|>",
                      off="start windows with arbitrary text instead of <|bos|>, so a sink on the first token can come "
                      "only from its position (method.md section 2)")
    val_every_doc: int = field(50, why="every N-th document is held out for validation (deterministic)", min=2)
    data_seed: int = field(0, why="seed of window sampling; with the step it fixes every batch")


@dataclass
class OptimConfig:
    """AdamW with warm-up, then cosine decay or (with ``cooldown``) stable lr and a linear decay."""

    lr: float = field(3e-3, why="peak learning rate")
    min_lr_ratio: float = field(0.1, why="the schedule decays to lr * this")
    cooldown: int = field(0, why="> 0: constant lr, then linear decay over these last steps "
                          "(extendable runs); 0: cosine")
    warmup: int = field(100, why="linear warm-up steps", min=0)
    weight_decay: float = field(0.1, why="AdamW decay, matrices only (not norms, gains, biases, sink logits)")
    beta1: float = field(0.9, why="AdamW beta1 (paper: 0.9)")
    beta2: float = field(0.95, why="AdamW beta2 (paper: 0.95)")
    clip: float = field(1.0, why="global gradient-norm clip; 0 turns it off")
    batch_size: int = field(32, why="sequences per micro-batch per process", min=1)
    grad_accum: int = field(1, why="micro-batches per optimizer step", min=1)
    steps: int = field(1000, why="optimizer steps in total (the cosine ends here)", min=1)
    trainable: str | None = field(None, why="parameter-name prefixes to train (comma-separated, e.g. "
                                  "model.layers.0.); default: all")


@dataclass
class TrainConfig:
    """``sinkscope train``: pretrain one variant, with sink telemetry, checkpoints and resume."""

    model: ModelSpec = field(default_factory=ModelSpec, why="architecture")
    data: TrainDataConfig = field(default_factory=TrainDataConfig, why="training text")
    optim: OptimConfig = field(default_factory=OptimConfig, why="optimiser and schedule")
    seed: int = field(0, why="seed of the initialisation")
    out: str = field("runs/run", why="run folder: checkpoints, logs, the final model")
    log_every: int = field(10, why="steps between train-loss log lines", min=1)
    eval_every: int = field(100, why="steps between validation passes", min=1)
    eval_batches: int = field(4, why="validation batches (fixed windows) per pass", min=1)
    telemetry_every: int = field(100, why="steps between sink telemetry records; 0 turns it off", min=0)
    telemetry_samples: int = field(32, why="held-out windows in the fixed telemetry batch", min=1)
    telemetry_len: int = field(64, why="tokens per telemetry window (the paper measures at T = 64)", min=2)
    criteria: Criteria = field(default_factory=Criteria, why="the rules of the sink verdict in the telemetry")
    checkpoint_every: int = field(200, why="steps between checkpoints", min=1)
    resume: bool = field(False, why="continue from the run folder's latest checkpoint")
    compile: bool = field(False, why="torch.compile the model (faster on GPU, slow start)")
    device: str = field("auto", why="cpu, cuda, or auto (cuda when available)", choices=("auto", "cpu", "cuda"))
    threads: int | None = field(None, why="CPU threads for torch; default: torch's choice", min=1)
    max_minutes: float | None = field(None, why="stop (and save) after this much wall-clock time")


@dataclass
class CompareConfig:
    """``sinkscope compare``: runs grouped by variant, loss and sink figures side by side."""

    target_loss: float | None = field(None, why="report steps/tokens until the val loss first reaches this")
    baseline: str = field("softmax", why="variant whose steps-to-target the speedup divides")
    out: str | None = field(None, why="write compare.json here (a file path or folder)")
