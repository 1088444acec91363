"""One prepared GPU check (issue 26): every CUDA path of sinkscope measured by one command.

    python benchmarks/gpu_check.py --out DIR            # one H200: about 8 minutes
    python benchmarks/gpu_check.py --out DIR --smoke    # tiny sizes on the CPU, under 2 minutes: no figure is real

Five parts run one after another, each in its own child process with its own time budget (PARTS), so a
part that fails, runs out of memory or hangs is recorded in its entry and the next part still runs.
After every part, DIR/gpu_check.json and DIR/gpu_check.md are rewritten atomically, and a part keeps
its finished pieces as it goes: a run cut short keeps what it finished. DIR/gpu_check.log holds the
children's output. Scratch (saved models, training runs, the tokenizer cache) goes to --work.
docs/benchmarks.md ("GPU check") says how to run it and where its results are committed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from sinkscope.files import atomic_write_bytes
from sinkscope.results import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]
# name: (module:function, seconds on one H200, seconds for --smoke, title). With the parent's start, the H200
# budgets add up to TOTAL_BUDGET_S; a part past its budget is stopped and keeps what it finished. Convergence
# gets what issue 26 allows it (about 4 minutes), less the others' needs. The smoke budgets are only caps, wide
# enough for a loaded CI machine: on two quiet cores the whole smoke run takes about 40 s.
PARTS = {
    "parity": ("gpu_check_probe:parity", 30, 60, "CUDA parity: each family's tiny model against eager attention"),
    "probe_cost": ("gpu_check_probe:probe_cost", 65, 60, "Probe cost: plain forward, --no-chain, whole chain"),
    "device_map": ("gpu_check_probe:device_map", 20, 60, "--device-map auto against --device cuda"),
    "throughput": ("gpu_check_train:throughput", 135, 60, "Training throughput: paper-152m"),
    "convergence": ("gpu_check_train:convergence", 210, 60, "Convergence (C6): baseline against HeadNorm"),
}
TOTAL_BUDGET_S = 480  # issue 26: the whole check within 8 minutes of wall time on one H200
START_RESERVE_S = 20  # the parent's own start (torch import, provenance, CUDA context) and its writes between parts
FINAL = ("ok", "skipped", "failed")  # statuses a child writes itself; "timed out" is the parent's


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes on the CPU (checks the script)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="run only these parts")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--child", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.out is None:
        parser.error("--out DIR is required")
    work = args.work or Path(tempfile.mkdtemp(prefix="sinkscope-gpu-check-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: run_part's finally ends the child
    report = new_report(args, work)
    save(args.out, report)
    for name in args.parts:
        print(f"gpu_check: {name} ...", flush=True)
        report["parts"][name] = run_part(name, args.smoke, work, args.out / "gpu_check.log")
        report["seconds"] = time.time() - report["started_unix"]
        save(args.out, report)
        entry = report["parts"][name]
        print(f"gpu_check: {name} {entry['status']} in {entry['seconds']:.1f} s {entry.get('error', '')}", flush=True)
    print(f"gpu_check: {report['seconds']:.0f} s in all; {args.out / 'gpu_check.md'}", flush=True)
    return 0 if all(p["status"] in ("ok", "skipped") for p in report["parts"].values()) else 1


def new_report(args, work: Path) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"schema_version": 1, "kind": "gpu_check", "smoke": args.smoke,
            "provenance": provenance(device=device, config={"parts": args.parts, "smoke": args.smoke}),
            "started": now.isoformat(timespec="seconds"), "started_unix": now.timestamp(), "seconds": 0.0,
            "machine": machine(device), "source_sha256": source_hash(), "work": str(work),
            "budgets": {name: PARTS[name][2 if args.smoke else 1] for name in args.parts},
            "parts": {name: {"status": "pending"} for name in args.parts}}


def machine(device: str) -> dict:
    import torch

    out = {"device": device, "cpu_count": os.cpu_count(), "cuda": torch.version.cuda}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(name=props.name, memory_gib=props.total_memory / 2**30, devices=torch.cuda.device_count(),
                   capability=f"{props.major}.{props.minor}")
    return out


def source_hash() -> str:
    """What code ran, also where the copy has no .git: a hash of the package, the benchmarks and the presets."""
    digest = hashlib.sha256()
    files = [*ROOT.glob("src/sinkscope/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("configs/*.yaml")]
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run_part(name: str, smoke: bool, work: Path, log: Path) -> dict:
    """Run one part in a child process group, stopped at its budget; its entry, whatever happened."""
    budget = PARTS[name][2 if smoke else 1]
    result = work / f"{name}.json"
    result.unlink(missing_ok=True)
    start = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result),
           "--deadline", str(start + budget), "--work", str(work / name), *(["--smoke"] if smoke else [])]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"==== {name} {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:  # past its budget, or this process is being stopped
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own group: compile workers go with it
                proc.wait()
    entry = json.loads(result.read_text()) if result.exists() else {}
    entry.update(seconds=time.time() - start, budget_seconds=budget)
    if code is None:
        entry.update(status="timed out", error=f"stopped at its {budget} s budget; the pieces it finished are kept")
    elif entry.get("status") not in FINAL:
        entry.update(status="failed", error=f"the child exited with {code} before writing a result: {_last_line(log)}")
    return entry


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def child(args) -> int:
    """One part, in this process: its result (or its error) goes to --result; the exit code is 0 either way."""
    import torch

    from gpu_check_common import Context, one_line

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        write_json(args.result, {"status": "skipped", "reason": "needs CUDA: this torch sees no GPU; on a CPU, "
                                 "run with --smoke (which checks the script and measures nothing)"})
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Context(smoke=args.smoke, device=device, work=args.work, deadline=args.deadline, result=args.result)
    try:
        module, function = PARTS[args.child][0].split(":")
        found = getattr(importlib.import_module(module), function)(ctx)
        write_json(args.result, {**found, "status": "ok"})
    except Exception as err:  # noqa: BLE001  (any failure is this part's result; the next part still runs)
        partial = json.loads(args.result.read_text()) if args.result.exists() else {}
        write_json(args.result, {**partial, "status": "failed", "error": one_line(err),
                                 "traceback": traceback.format_exc().splitlines()[-12:]})
        traceback.print_exc()
    return 0


def save(out: Path, report: dict) -> None:
    write_json(out / "gpu_check.json", report)
    atomic_write_bytes(out / "gpu_check.md", markdown(report).encode())


def markdown(report: dict) -> str:
    """The report as one markdown page: a header line of what ran where, then each part's tables."""
    m, versions = report["machine"], report["provenance"]["versions"]
    device = m.get("name", "CPU") + (f" ({m['memory_gib']:.0f} GiB, {m['devices']} visible)" if "name" in m else "")
    code = report["provenance"]["git_sha"] or f"source {report['source_sha256']}"
    lines = ["# sinkscope GPU check", "",
             f"{report['started']} · {device} · torch {versions['torch']} (CUDA {m['cuda']}) · transformers "
             f"{versions['transformers']} · {code} · {report['seconds']:.0f} s in all", ""]
    if report["smoke"]:
        lines += ["**Smoke run: tiny sizes on the CPU. It checks the script; no figure here is a measurement.**", ""]
    for name, entry in report["parts"].items():
        lines += _part(name, entry)
    return "\n".join(lines) + "\n"


def _part(name: str, entry: dict) -> list[str]:
    timing = f" in {entry['seconds']:.1f} s (budget {entry['budget_seconds']} s)" if "seconds" in entry else ""
    why = entry.get("error") or entry.get("reason")
    lines = [f"## {PARTS[name][3]}", "", f"**{entry['status']}**{timing}" + (f": {why}" if why else ""), ""]
    lines += [f"- {note}" for note in entry.get("notes", [])]
    for title, rows in entry.get("tables", {}).items():
        if not rows:
            continue
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines += ["", f"{title}:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines + [""]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
