"""``torchrun --nproc-per-node 2 -m sinkscope probe`` (gloo, CPU) gives the numbers one process gives,
chain included: every chain statistic is a mergeable tally."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from sinkscope.testing import super_neuron_coordinates
from sinkscope.fixtures import planted_sink_model

pytestmark = pytest.mark.slow


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-7, abs=1e-9, nan_ok=True), path
    else:
        assert a == b, path


def test_torchrun_two_processes_match_one(tmp_path):
    model, answer = planted_sink_model()
    model.save_pretrained(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    seqs = answer.inputs(11, 24, seed=5)
    seqs[3] = seqs[3][:17]  # ragged, so padding and uneven shards are both exercised
    data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    args = ["probe", str(tmp_path / "model"), "--data", str(data), "--samples", "11", "--seq-len", "24",
            "--batch-size", "3", "--selectivity-positions", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, "-m", "sinkscope", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "sinkscope", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "probe.json").read_text())
    b = json.loads((tmp_path / "two" / "probe.json").read_text())
    a.pop("provenance"), b.pop("provenance")
    _close(a, b)
    assert super_neuron_coordinates(a["chain"]) == [{"layer": 1, "index": 5, "dims": [3]}] and a["chain"]["consistent"]
    for table in sorted(p.name for p in (tmp_path / "one").glob("chain_*.parquet")):
        x, y = pq.read_table(tmp_path / "one" / table).to_pydict(), pq.read_table(tmp_path / "two" / table).to_pydict()
        for column in x:
            np.testing.assert_allclose(np.array(x[column], dtype=float), np.array(y[column], dtype=float),
                                       rtol=1e-7, atol=1e-9, err_msg=f"{table}.{column}")


def test_torchrun_two_processes_match_one_inside_experts(tmp_path):
    """The expert finder's tallies merge across processes too."""
    from sinkscope.fixtures_moe import planted_moe_model

    model, answer = planted_moe_model(layer=1, expert=2, neuron=9, dim=7)
    model.save_pretrained(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    seqs = answer.inputs(9, 20, seed=5)  # equal lengths: float32 attention then sees the same shapes in both runs
    data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    args = ["probe", str(tmp_path / "model"), "--data", str(data), "--samples", "9", "--seq-len", "20",
            "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, "-m", "sinkscope", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "sinkscope", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "probe.json").read_text())
    b = json.loads((tmp_path / "two" / "probe.json").read_text())
    a.pop("provenance"), b.pop("provenance")
    _close(a, b)
    assert [(c["layer"], c["expert"], c["neuron"]) for c in a["expert_neurons"]["candidates"]] == [(1, 2, 9)]
