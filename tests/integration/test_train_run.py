"""sinkscope train / compare end to end on a tiny model and a tiny corpus (seconds each)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sinkscope.cli import main
from sinkscope.config import build, load_yaml
from sinkscope.errors import SinkscopeError
from sinkscope.results import SCHEMA_VERSION, write_json
from sinkscope.train.config import ModelSpec, OptimConfig, TrainConfig, TrainDataConfig
from sinkscope.train.loop import Trainer, train

from conftest import require_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny(corpus, out, **over) -> TrainConfig:
    values = {
        "model": {"layers": 2, "hidden_size": 32, "heads": 4, "kv_heads": 2, "vocab_size": 300, "max_len": 64},
        "data": {"source": str(corpus), "seq_len": 24, "val_every_doc": 4},
        "optim": {"lr": 3e-3, "warmup": 3, "batch_size": 4, "steps": 12},
        "out": str(out), "log_every": 1, "eval_every": 4, "eval_batches": 1, "telemetry_every": 6,
        "telemetry_samples": 4, "telemetry_len": 16, "checkpoint_every": 6,
    }
    sections = {"model": ModelSpec, "data": TrainDataConfig, "optim": OptimConfig}
    for key, value in over.items():
        section = next((s for s, cls in sections.items() if key in cls.__dataclass_fields__), None)
        (values[section] if section else values)[key] = value
    return build(TrainConfig, values)


def losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


def test_run_writes_logs_telemetry_checkpoint_and_loadable_model(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = train(tiny(corpus, tmp_path / "run", variant="headnorm"))
    run = tmp_path / "run"
    assert summary["steps"] == 12 and math.isfinite(summary["final_val_loss"])
    assert json.loads((run / "run.json").read_text())["provenance"]["config"]["model"]["variant"] == "headnorm"
    telemetry = [json.loads(line) for line in (run / "telemetry.jsonl").read_text().splitlines()]
    assert [t["step"] for t in telemetry] == [0, 6, 12]
    for key in ("sink_score", "norm_ratio", "dom_ratio", "max_activation", "effective_rank"):
        assert len(telemetry[-1][key]) == 2
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "sinkscope" and model.config.attention_variant == "headnorm"
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    card = json.loads((run / "model" / "sinkscope.json").read_text())
    assert card["variant"] == "headnorm" and card["parameters"] == summary["parameters"]


def test_tensorboard_gets_the_telemetry_scalars(corpus, tmp_path):
    event_accumulator = require_module("tensorboard.backend.event_processing.event_accumulator")

    train(tiny(corpus, tmp_path / "run", steps=6))
    board = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    logged = [json.loads(line) for line in (tmp_path / "run" / "telemetry.jsonl").read_text().splitlines()]
    for layer in range(2):
        events = board.Scalars(f"sink/sink_score/layer{layer}")
        assert [e.step for e in events] == [t["step"] for t in logged]
        assert [e.value for e in events] == pytest.approx([t["sink_score"][layer] for t in logged], rel=1e-6)
    assert "loss" in board.Tags()["scalars"]


def test_telemetry_matches_a_direct_probe(corpus, tmp_path):
    """The telemetry is the probe's numbers on the fixed held-out batch, not a copy of the metrics."""
    import sinkscope

    trainer = Trainer(tiny(corpus, tmp_path / "run", steps=2, telemetry_every=0))
    trainer.run()
    from sinkscope.train.telemetry import sink_telemetry

    record = sink_telemetry(trainer.model, trainer.telemetry_batch)
    direct = sinkscope.probe(trainer.model, trainer.telemetry_batch, chain=False)
    assert record["sink_score"] == pytest.approx(direct["layer_sink_score"])
    assert record["dom_ratio"] == pytest.approx(direct["sink_dom_ratio"])
    outputs = {}  # brute force: every block output, then numpy's singular values per sequence
    handles = [block.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0] if isinstance(o, tuple) else o))
               for i, block in enumerate(trainer.model.model.layers)]
    with torch.no_grad():
        trainer.model(trainer.telemetry_batch)
    for h in handles:
        h.remove()
    for layer, out in outputs.items():
        s = [np.linalg.svd(x.double().numpy(), compute_uv=False) for x in out]
        expect = np.mean([np.exp(-(p * np.log(p)).sum()) for p in (v / v.sum() for v in s)])
        assert record["effective_rank"][layer] == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("trainable", [None, "model.layers.1."])
def test_resume_continues_the_same_loss_curve(corpus, tmp_path, trainable):
    reference = tmp_path / "ref"
    train(tiny(corpus, reference, checkpoint_every=6, trainable=trainable))
    # a run killed somewhere after step 6: only ckpt-6 and the logs written so far survive
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)
    shutil.rmtree(killed / "ckpt-0000012")
    write_json(killed / "latest.json", {"schema_version": 1, "kind": "checkpoint", "step": 6, "folder": "ckpt-0000006"})
    (killed / "run.json").unlink()
    train(tiny(corpus, killed, checkpoint_every=6, resume=True, trainable=trainable))
    ref, resumed = losses(reference), losses(killed)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(7, 13):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6)


def test_resume_refuses_a_checkpoint_from_another_config(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "run", steps=6))
    with pytest.raises(SinkscopeError, match="another config.*hidden_size"):
        Trainer(tiny(corpus, tmp_path / "run", steps=6, resume=True, hidden_size=64))
    with pytest.raises(SinkscopeError, match="already holds a run"):
        Trainer(tiny(corpus, tmp_path / "run", steps=6))


def test_non_finite_loss_stops_saves_and_names_the_step(corpus, tmp_path, monkeypatch):
    trainer = Trainer(tiny(corpus, tmp_path / "run"))
    real = trainer._loss
    monkeypatch.setattr(trainer, "_loss", lambda ids: real(ids) * (float("nan") if trainer.step == 4 else 1.0))
    with pytest.raises(SinkscopeError, match="non-finite at step 5"):
        trainer.run()
    assert (tmp_path / "run" / "nonfinite-step-5" / "model.safetensors").exists()


def test_cli_errors_exit_2(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # argparse refuses the choice, with exit code 2
        main(["train", "--source", str(corpus), "--variant", "nope"])
    assert refused.value.code == 2
    variant = tmp_path / "variant.yaml"
    variant.write_text("model:\n  variant: relu\n")
    assert main(["train", "--config", str(variant)]) == 2
    assert "model.variant' must be one of softmax" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  layerz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown config key 'model.layerz'" in capsys.readouterr().err
    assert main(["train", "--source", str(corpus), "--seq-len", "100000", "--max-len", "200000",
                 "--vocab-size", "300", "--out", str(tmp_path / "r")]) == 2
    assert "too few for one window" in capsys.readouterr().err
    assert main(["train", "--source", str(corpus), "--steps", "50", "--warmup", "10", "--cooldown", "60",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--cooldown 60 must lie between 0 and --steps minus --warmup (40)" in capsys.readouterr().err


def test_cli_train_then_compare(corpus, tmp_path, capsys):
    common = ["--source", str(corpus), "--layers", "2", "--hidden-size", "32", "--heads", "4", "--vocab-size", "300",
              "--seq-len", "24", "--batch-size", "4", "--steps", "8", "--eval-every", "2", "--eval-batches", "1",
              "--telemetry-every", "4", "--telemetry-samples", "4", "--telemetry-len", "16"]
    runs = []
    for variant in ("softmax", "headnorm"):
        for seed in (1, 2):
            out = tmp_path / f"{variant}{seed}"
            assert main(["train", *common, "--variant", variant, "--seed", str(seed), "--out", str(out)]) == 0
            runs.append(str(out))
    assert main(["compare", *runs, "--target-loss", "100", "--out", str(tmp_path / "cmp")]) == 0
    payload = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert payload["schema_version"] == SCHEMA_VERSION and "provenance" in payload
    rows = payload["variants"]
    assert set(rows) == {"softmax", "headnorm"}
    vals = [json.loads((Path(r) / "run.json").read_text())["final_val_loss"] for r in runs[:2]]
    assert rows["softmax"]["final_val_loss"]["mean"] == pytest.approx(sum(vals) / 2)
    assert rows["softmax"]["final_val_loss"]["std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
    assert rows["softmax"]["steps_to_target"]["mean"] == 2  # the first validation is already under 100
    assert rows["headnorm"]["speedup_vs_baseline"] == pytest.approx(1.0)
    best = sorted(min(r["val_loss"] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())
                      if "val_loss" in r) for run in runs[:2])
    capsys.readouterr()
    assert main(["compare", *runs[:2], "--target-loss", str(sum(best) / 2)]) == 0  # one seed of two gets there
    assert "(1/2 runs)" in capsys.readouterr().out
    assert main(["compare", runs[0], "--out", str(tmp_path / "one")]) == 0
    single = json.loads((tmp_path / "one" / "compare.json").read_text())["variants"]["softmax"]["final_val_loss"]
    assert single == {"mean": vals[0], "std": None, "n": 1}  # one seed has no spread
    table = capsys.readouterr().out
    assert f"{vals[0]:.3f}" in table and f"{vals[0]:.3f} ±" not in table
    assert main(["compare", runs[0], str(tmp_path / "cmp" / "compare.json")]) == 2  # a file is not a run
    assert "is not a finished training run (no run.json)" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_builds(preset):
    values = load_yaml(CONFIGS / preset)
    if set(values) == {"criteria"}:  # a criteria preset: every command that judges takes it
        from sinkscope.config import ProbeConfig
        from sinkscope.demo import DemoConfig
        from sinkscope.intervene import InterveneConfig

        for cls in (ProbeConfig, InterveneConfig, DemoConfig, TrainConfig):
            assert build(cls, values).criteria.rules == values["criteria"]["rules"]
        return
    config = build(TrainConfig, values)
    assert config.model.variant in ("softmax", "headnorm")
    assert config.data.seq_len <= config.model.max_len


def test_presets_exist():
    assert {"paper-152m.yaml", "organism.yaml", "cpu-compare.yaml", "criteria-paper.yaml"} <= {
        p.name for p in CONFIGS.glob("*.yaml")}


def test_the_paper_preset_is_the_papers_setup():
    """method.md section 6: 12 x 768, 12 heads, SwiGLU 3072, tied, ~152M parameters; AdamW (0.9, 0.95), lr 1e-3,
    2k warm-up, cosine, decay 0.1, clip 1.0."""
    import torch
    from types import SimpleNamespace

    from sinkscope.train.loop import model_config
    from sinkscope.train.model import SinkscopeForCausalLM

    cfg = build(TrainConfig, load_yaml(CONFIGS / "paper-152m.yaml"))
    m, o = cfg.model, cfg.optim
    assert (m.layers, m.hidden_size, m.heads, m.ffn_size, m.tie_embeddings, m.rope) == (12, 768, 12, 3072, True, True)
    assert (o.lr, o.warmup, o.beta1, o.beta2, o.weight_decay, o.clip, o.cooldown) == (1e-3, 2000, 0.9, 0.95, 0.1, 1.0, 0)
    tokenizer = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device("meta"):  # the parameter count without allocating 600 MB
        model = SinkscopeForCausalLM(model_config(cfg, m.vocab_size, tokenizer))
    n = sum(p.numel() for p in model.parameters())
    assert 150e6 < n < 154e6


def test_trainable_trains_only_the_named_parameters(corpus, tmp_path):
    import torch

    trainer = Trainer(tiny(corpus, tmp_path / "run", steps=3, trainable="model.layers.0."))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    summary = trainer.run()
    after = dict(trainer.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith("model.layers.0.")}
    assert summary["trainable_parameters"] == sum(before[name].numel() for name in changed) < summary["parameters"]
    with pytest.raises(SinkscopeError, match="model.layer.9 matches no parameter; names look like model"):
        Trainer(tiny(corpus, tmp_path / "run2", trainable="model.layers.0.,model.layer.9"))


def test_init_from_a_llama_checkpoint_continues_with_headnorm(corpus, tmp_path):
    import transformers

    from sinkscope.train.data import prepare_data

    tokenizer, _ = prepare_data(TrainDataConfig(source=str(corpus), val_every_doc=4), 300)
    folder = tmp_path / "llama"
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    summary = train(tiny(corpus, tmp_path / "run", variant="headnorm", init_from=str(folder), tokenizer=str(folder),
                         steps=3))
    assert summary["steps"] == 3
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert model.config.attention_variant == "headnorm" and model.config.hidden_size == 32
    small = tmp_path / "small"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=10, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
    )).save_pretrained(small)
    with pytest.raises(SinkscopeError, match="pass --tokenizer"):
        Trainer(tiny(corpus, tmp_path / "run2", init_from=str(small)))
