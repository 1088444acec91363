"""benchmarks/gpu_check.py, the command prepared for the first GPU (issue 26), checked without one.

--smoke runs every part at tiny sizes on the CPU; without --smoke and without CUDA each part says it
needs CUDA; a part that fails or overruns its budget is recorded and the next part still runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402
from gpu_check_common import NEEDS_CUDA  # noqa: E402
from gpu_check_probe import COST_MODES, SMOKE_COST_SHAPES, SMOKE_FAMILIES  # noqa: E402

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _check(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), *flags], capture_output=True, text=True, env=ENV,
                          timeout=600, check=False)
    out = tmp_path / "out"
    return done, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_the_budgets_fit_eight_minutes_on_a_gpu():
    h200 = sum(part[1] for part in gpu_check.PARTS.values()) + gpu_check.START_RESERVE_S
    assert h200 <= gpu_check.TOTAL_BUDGET_S == 8 * 60


def test_importing_it_leaves_the_process_s_signal_handlers_alone():
    """The SIGTERM handler belongs to the command (main), not to whoever imports the module (this test file)."""
    done = subprocess.run([sys.executable, "-c", "import signal, sys; sys.path.insert(0, sys.argv[1]); "
                           "import gpu_check; print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)",
                           str(BENCHMARKS)], capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert done.stdout.strip() == "True", done.stderr


def test_smoke_runs_every_part_on_the_cpu(tmp_path):
    done, report, page = _check(tmp_path, "--smoke")  # ~40 s on two quiet cores: its time is not asserted here,
    assert done.returncode == 0, done.stdout + done.stderr  # where other work may share the machine
    parts = report["parts"]
    assert report["kind"] == "gpu_check" and report["smoke"] and list(parts) == list(gpu_check.PARTS)
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(gpu_check.PARTS, "ok")

    parity = parts["parity"]["tables"]["parity"]  # the probe against eager attention: a real check, even on a CPU
    assert [r["family"] for r in parity] == list(SMOKE_FAMILIES)
    assert all(r["within"] and r["cells_match"] for r in parity)

    cost = parts["probe_cost"]["tables"]["cost"]
    shapes = [f"{batch} x {length}" for batch, length in SMOKE_COST_SHAPES]
    assert [(r["shape"], r["mode"]) for r in cost] == [(shape, mode) for shape in shapes for mode in COST_MODES]
    assert all(r["seconds"] > 0 and r["peak_gib"] == NEEDS_CUDA for r in cost)

    assert parts["device_map"]["tables"]["device_map"][0]["same"]

    speed = parts["throughput"]["tables"]["throughput"]
    runs = {(r["variant"], r["compile"]) for r in speed}
    assert runs == {(v, c) for v in ("softmax", "headnorm") for c in (False, True)}
    assert all(r["tokens_per_second"] > 0 and r["mfu"] == NEEDS_CUDA for r in speed)

    c6 = {r["variant"]: r for r in parts["convergence"]["tables"]["c6"]}
    assert c6["softmax"]["tokens"] == c6["headnorm"]["tokens"] > 0  # the same token budget
    assert c6["softmax"]["tokens_to_baseline_final"] is not None  # the baseline reaches its own final loss
    curve = parts["convergence"]["tables"]["c6_curve"]
    assert len(curve) > 2 and all(row["softmax"] is not None and row["headnorm"] is not None for row in curve)
    assert any("SHORT RUN, NOT THE PAPER'S" in note for note in parts["convergence"]["notes"])

    assert "Smoke run" in page
    for name, part in gpu_check.PARTS.items():
        assert f"## {part[3]}" in page
        for title, rows in parts[name]["tables"].items():
            assert f"{title}:\n\n| " + " | ".join(rows[0]) + " |" in page


def test_without_cuda_every_part_says_it_needs_cuda(tmp_path):
    done, report, page = _check(tmp_path, "--parts", "parity", "convergence")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p["status"] for p in report["parts"].values()] == ["skipped", "skipped"]
    assert all("needs CUDA" in p["reason"] for p in report["parts"].values())
    assert "**skipped**" in page


def test_a_part_past_its_budget_is_stopped_and_the_next_still_runs(tmp_path, monkeypatch):
    module, _, _, title = gpu_check.PARTS["convergence"]
    monkeypatch.setitem(gpu_check.PARTS, "convergence", (module, 1, 1, title))
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])
    code = gpu_check.main(["--smoke", "--parts", "convergence", "device_map", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")])
    parts = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    assert code == 1 and parts["convergence"]["status"] == "timed out" and parts["device_map"]["status"] == "ok"


def test_a_failing_part_records_its_error(tmp_path, monkeypatch):
    def explode(ctx):
        ctx.record({"tables": {"done": [{"piece": 1}]}})
        raise ValueError("second piece broke")

    monkeypatch.setitem(sys.modules, "exploding_part", types.SimpleNamespace(explode=explode))
    monkeypatch.setitem(gpu_check.PARTS, "parity", ("exploding_part:explode", 1, 1, "explodes"))
    result = tmp_path / "parity.json"
    args = types.SimpleNamespace(child="parity", smoke=True, work=tmp_path / "work", deadline=time.time() + 60,
                                 result=result)
    assert gpu_check.child(args) == 0
    entry = json.loads(result.read_text())
    assert entry["status"] == "failed" and entry["error"] == "ValueError: second piece broke"
    assert entry["tables"] == {"done": [{"piece": 1}]}  # the piece finished before the failure is kept
