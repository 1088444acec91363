"""Training's numbers against hand computations: one accumulated step equals one big batch, and
``compare``'s speedup, tokens to target and sink columns equal what the run files say, worked out here."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest
import torch

from sinkscope.results import SCHEMA_VERSION, write_json
from sinkscope.train.compare import compare
from sinkscope.train.config import CompareConfig
from sinkscope.train.loop import Trainer

from test_train_run import tiny


def _step_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The gradients train_step hands the optimizer (its step recorded, not taken)."""
    seen = {}
    trainer.optimizer.step = lambda: seen.update(
        {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None})
    return seen


def test_gradient_accumulation_equals_one_big_batch(corpus, tmp_path):
    """Two micro-batches of 2 accumulated give the gradient (and loss) of their 4 sequences in one batch."""
    trainer = Trainer(tiny(corpus, tmp_path / "run", batch_size=2, grad_accum=2, clip=0.0, steps=1))
    reference = copy.deepcopy(trainer.model)
    seen = _step_gradients(trainer)
    loss, _ = trainer.train_step()
    big = torch.cat([trainer.data.batch(0, 2), trainer.data.batch(1, 2)])  # micro-batches 0 and 1 of step 0
    want = reference(input_ids=big, labels=big).loss
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-5)
    grads = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert seen.keys() == grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(seen[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _run(folder: Path, variant: str, seed: int, val: list[tuple[int, float]], telemetry: dict, tokens_per_step: int,
         train_loss: float = 3.0, speed: float = 100.0) -> str:
    """A finished run's files as `sinkscope train` writes them, with a validation curve of (step, loss)."""
    folder.mkdir(parents=True)
    write_json(folder / "run.json", {"schema_version": SCHEMA_VERSION, "kind": "train", "variant": variant,
                                     "provenance": {"seed": seed}, "final_train_loss": train_loss,
                                     "final_val_loss": val[-1][1], "tokens_per_second": speed})
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "tokens": s * tokens_per_step, "loss": loss + 0.1, "val_loss": loss}) + "\n"
        for s, loss in val))
    (folder / "telemetry.jsonl").write_text(json.dumps({"step": 0, "sink_score": [0.0], "dom_ratio": [1.0],
                                                        "effective_rank": [1.0]}) + "\n"
                                            + json.dumps({"step": val[-1][0], **telemetry}) + "\n")
    return str(folder)


def test_compare_speedup_tokens_to_target_and_sink_columns(tmp_path):
    target = 2.0
    runs = [  # softmax (the baseline) reaches 2.0 at steps 8 and 12; headnorm at 4 and 4; gated never
        _run(tmp_path / "s1", "softmax", 1, [(4, 2.6), (8, 2.0), (12, 1.8)],
             {"sink_score": [0.2, 0.7, 0.5], "dom_ratio": [3.0, 40.0, 9.0], "effective_rank": [5.0, 6.0, 10.0]}, 64),
        _run(tmp_path / "s2", "softmax", 2, [(4, 2.5), (8, 2.1), (12, 1.9)],
             {"sink_score": [0.9, 0.1, 0.3], "dom_ratio": [30.0, 2.0, 1.0], "effective_rank": [3.0, 3.0, 3.0]}, 64),
        _run(tmp_path / "h1", "headnorm", 1, [(4, 1.9), (8, 1.7)],
             {"sink_score": [0.1, 0.2, 0.15], "dom_ratio": [2.0, 5.0, 3.0], "effective_rank": [7.0, 8.0, 9.0]}, 64),
        _run(tmp_path / "h2", "headnorm", 2, [(4, 2.0), (8, 1.8)],
             {"sink_score": [0.05, 0.3, 0.1], "dom_ratio": [4.0, 1.0, 2.0], "effective_rank": [6.0, 6.0, 9.0]}, 64),
        _run(tmp_path / "g1", "gated", 1, [(4, 2.9), (8, 2.4)],
             {"sink_score": [0.1], "dom_ratio": [1.0], "effective_rank": [2.0]}, 64),
    ]
    rows = compare(runs, CompareConfig(target_loss=target, baseline="softmax"))["variants"]
    soft, head, gated = rows["softmax"], rows["headnorm"], rows["gated"]
    assert soft["steps_to_target"] == {"mean": 10.0, "std": statistics.stdev([8, 12]), "n": 2}
    assert soft["tokens_to_target"] == {"mean": 640.0, "std": statistics.stdev([512, 768]), "n": 2}
    assert head["steps_to_target"]["mean"] == 4.0 and head["tokens_to_target"]["mean"] == 256.0  # <= target counts
    assert head["speedup_vs_baseline"] == pytest.approx(10.0 / 4.0)  # baseline steps over the variant's
    assert soft["speedup_vs_baseline"] == pytest.approx(1.0)
    assert gated["speedup_vs_baseline"] is None and gated["runs_reaching_target"] == 0
    assert gated["steps_to_target"] == {"mean": None, "std": None, "n": 0}
    assert soft["runs_reaching_target"] == head["runs_reaching_target"] == 2
    # the sink columns: per run, the last telemetry record's max (or mean) over layers; then mean and std
    assert soft["max_layer_sink_score"]["mean"] == pytest.approx((0.7 + 0.9) / 2)
    assert soft["max_layer_sink_score"]["std"] == pytest.approx(statistics.stdev([0.7, 0.9]))
    assert soft["max_layer_dom_ratio"]["mean"] == pytest.approx((40.0 + 30.0) / 2)
    assert soft["mean_effective_rank"]["mean"] == pytest.approx((7.0 + 3.0) / 2)
    assert head["max_layer_sink_score"]["mean"] == pytest.approx((0.2 + 0.3) / 2)
    assert gated["max_layer_sink_score"] == {"mean": 0.1, "std": None, "n": 1}
