"""Resume survives a torn or corrupt newest checkpoint; retention keeps two whole ones; counts are checked."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from sinkscope.cli import main
from sinkscope.train.checkpoint import checkpoints, save_checkpoint, verify_checkpoint
from sinkscope.train.loop import train

from test_train_run import losses, tiny


def tear(path):
    os.truncate(path, path.stat().st_size // 2)


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, file", [(tear, "model.safetensors"), (corrupt, "optimizer.safetensors")])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(corpus, tmp_path, capsys, damage, file):
    reference = tmp_path / "ref"
    train(tiny(corpus, reference))  # 12 steps, checkpoints at 6 and 12
    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    damage(run / "ckpt-0000012" / file)
    (run / "run.json").unlink()
    capsys.readouterr()
    train(tiny(corpus, run, resume=True))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sinkscope")]
    assert len(lines) == 1, lines
    message = lines[0]
    assert "ckpt-0000012 is torn" in message and file in message
    assert "resuming from the newest whole checkpoint, ckpt-0000006" in message
    ref, resumed = losses(reference), losses(run)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    assert [p.name for p in checkpoints(run)] == ["ckpt-0000012", "ckpt-0000006"]
    assert verify_checkpoint(run / "ckpt-0000012") is None


def test_retention_keeps_two_whole_checkpoints_and_drops_torn_ones(tmp_path):
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {"config": {}, "elapsed": 0.0, "tokens": 0}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, optimizer, state)
    assert [p.name for p in checkpoints(tmp_path)] == ["ckpt-0000003", "ckpt-0000002"]
    tear(tmp_path / "ckpt-0000003" / "model.safetensors")
    (tmp_path / ".ckpt-0000004.tmp").mkdir()  # what a kill mid-write leaves
    save_checkpoint(tmp_path, 4, model, optimizer, state)
    assert [p.name for p in checkpoints(tmp_path)] == ["ckpt-0000004", "ckpt-0000002"]
    assert not (tmp_path / ".ckpt-0000004.tmp").exists()
    tear(tmp_path / "ckpt-0000004" / "state.json")
    assert verify_checkpoint(tmp_path / "ckpt-0000004").startswith("state.json has ")
    (tmp_path / "ckpt-0000002" / "manifest.json").unlink()
    assert "manifest.json" in verify_checkpoint(tmp_path / "ckpt-0000002")


def test_resume_with_no_whole_checkpoint_says_so(corpus, tmp_path, capsys):
    train(tiny(corpus, tmp_path / "run", steps=6))
    tear(tmp_path / "run" / "ckpt-0000006" / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "--source", str(corpus), "--layers", "2", "--hidden-size", "32", "--heads", "4",
                 "--out", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint" in err and "is whole" in err


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--steps", "-3"), ("--batch-size", "0"),
                                         ("--checkpoint-every", "0"), ("--grad-accum", "-1")])
def test_zero_or_negative_counts_get_one_plain_line(corpus, tmp_path, capsys, flag, value):
    assert main(["train", "--source", str(corpus), flag, value, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{flag} (config key" in err and "must be at least" in err
    assert not (tmp_path / "r").exists()
