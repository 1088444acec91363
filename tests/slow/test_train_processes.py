"""Training across processes: a SIGKILLed run resumed, and DDP on CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = ["--layers", "2", "--hidden-size", "32", "--heads", "4", "--vocab-size", "300", "--seq-len", "24",
        "--batch-size", "4", "--eval-every", "5", "--eval-batches", "1", "--telemetry-every", "0", "--log-every", "1",
        "--threads", "1", "--warmup", "3"]


def _env(tmp_path):
    return {**os.environ, "SINKSCOPE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


def test_sigkilled_run_resumes_on_the_same_loss_curve(corpus, tmp_path):
    env = _env(tmp_path)
    base = [sys.executable, "-m", "sinkscope", "train", "--source", str(corpus), *TINY, "--steps", "60",
            "--checkpoint-every", "10"]
    subprocess.run([*base, "--out", str(tmp_path / "ref")], env=env, check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = run / "latest.json"
        if latest.exists() and json.loads(latest.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "run.json").exists(), "the run finished before it could be killed"
    subprocess.run([*base, "--out", str(run), "--resume"], env=env, check=True, capture_output=True)
    ref, resumed = _losses(tmp_path / "ref"), _losses(run)
    assert sorted(resumed) == list(range(1, 61))
    for step in range(1, 61):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def test_kill_in_the_middle_of_a_checkpoint_write_loses_one_interval(corpus, tmp_path):
    """SIGKILL half-way through writing ckpt 15 (model written, optimizer not): resume from 10, same curve."""
    env = _env(tmp_path)
    base = [sys.executable, "-m", "sinkscope", "train", "--source", str(corpus), *TINY, "--steps", "20",
            "--checkpoint-every", "5"]
    subprocess.run([*base, "--out", str(tmp_path / "ref")], env=env, check=True, capture_output=True)
    run = tmp_path / "killed"
    killed = subprocess.run([*base, "--out", str(run)], env={**env, "SINKSCOPE_KILL_IN_CHECKPOINT": "15"},
                            check=False, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert (run / ".ckpt-0000015.tmp" / "model.safetensors").exists()
    assert not (run / ".ckpt-0000015.tmp" / "optimizer.safetensors").exists()
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-0000005", "ckpt-0000010"]
    subprocess.run([*base, "--out", str(run), "--resume"], env=env, check=True, capture_output=True)
    ref, resumed = _losses(tmp_path / "ref"), _losses(run)
    assert sorted(resumed) == list(range(1, 21))
    for step in range(1, 21):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    assert sorted(p.name for p in run.glob("*ckpt-*")) == ["ckpt-0000015", "ckpt-0000020"]


def test_ddp_two_processes_match_one_process_with_accumulation(corpus, tmp_path):
    """2 gloo processes x batch 4 see the micro-batches of 1 process x 2 accumulation steps x batch 4."""
    env = _env(tmp_path)
    common = ["train", "--source", str(corpus), *TINY, "--steps", "8", "--checkpoint-every", "100",
              "--telemetry-every", "4", "--telemetry-samples", "4", "--telemetry-len", "16"]
    subprocess.run([sys.executable, "-m", "sinkscope", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")],
                   env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29613",
                    "-m", "sinkscope", *common, "--out", str(tmp_path / "ddp")], env=env, check=True, capture_output=True)
    one, ddp = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(1, 9))
    for step in one:
        assert ddp[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step
    tokens = json.loads((tmp_path / "ddp" / "run.json").read_text())["tokens"]
    assert tokens == 8 * 2 * 4 * 24
    # telemetry runs on both ranks (probe splits the fixed batch and all-reduces): same figures as one process
    for a, b in zip(*(map(json.loads, (tmp_path / r / "telemetry.jsonl").read_text().splitlines()) for r in ("one", "ddp"))):
        assert a["step"] == b["step"]
        assert b["sink_score"] == pytest.approx(a["sink_score"], rel=1e-3, abs=1e-4)
