"""Publish organism runs as embedded checkpoints, measured with ``sinkscope probe`` on held-out stdlib text.

    sinkscope train --config configs/organism.yaml --variant softmax --out runs/organism-softmax
    sinkscope train --config configs/organism.yaml --variant headnorm --out runs/organism-headnorm
    python benchmarks/train_organism.py runs/organism-softmax runs/organism-headnorm
    sinkscope train --config configs/organism-nobos.yaml --out runs/organism-nobos
    python benchmarks/train_organism.py runs/organism-nobos --name organism-nobos \
        --command "sinkscope train --config configs/organism-nobos.yaml --out runs/organism-nobos"

For each run: writes the held-out stdlib documents (the run's own validation split) to a text
file, stores the final model in bfloat16 under src/sinkscope/assets/models/organism-<variant>/ (or --name)
with its tokenizer, a sinkscope.json card and the run's logs (train/), probes the stored folder
exactly as a user would (``sinkscope probe <folder> --data <held-out.txt> --seq-len 64``), and
prints the sink-score curve from the run's telemetry.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from sinkscope.cli import main as cli_main
from sinkscope.config import build
from sinkscope.demo import TRAIN_LOGS
from sinkscope.results import read_json, write_json
from sinkscope.train.config import TrainConfig
from sinkscope.train.data import split_documents, training_texts

ASSETS = Path(__file__).resolve().parents[1] / "src" / "sinkscope" / "assets" / "models"


def heldout_text(cfg: TrainConfig, path: Path) -> Path:
    _, val = split_documents(training_texts(cfg.data), cfg.data.val_every_doc)
    path.write_text("\n".join(val))
    return path


def publish(run: Path, heldout: Path, command: str, name: str | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sinkscope.train  # noqa: F401  (registers the sinkscope architecture)

    summary = read_json(run / "run.json", kind="train")
    name = name or f"organism-{summary['variant']}"
    target = ASSETS / name
    shutil.rmtree(target, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(run / "model").to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(run / "model").save_pretrained(target)
    probe_out = run / "probe-heldout"
    cli_main(["probe", str(target), "--data", str(heldout), "--seq-len", "64", "--samples", "100",
              "--out", str(probe_out)])
    probe = json.loads((probe_out / "probe.json").read_text())
    card = {
        "variant": summary["variant"],
        "parameters": summary["parameters"],
        "dtype": "bfloat16",
        "command": command.format(variant=summary["variant"]),
        "train_steps": summary["steps"],
        "train_tokens": summary["tokens"],
        "train_minutes": round(summary["seconds"] / 60, 1),
        "final_val_loss": summary["final_val_loss"],
        "sink score": {
            "measured_by": f"sinkscope probe {name} --data <held-out stdlib text> --seq-len 64 --samples 100",
            "layer_head_mean": probe["layer_sink_score"],
            "max_layer": max(probe["layer_sink_score"]),
            "uniform_baseline": probe["uniform_baseline"],
        },
        "norm_ratio": probe["norm_ratio"],
        "sink_dom_ratio": probe["sink_dom_ratio"],
    }
    write_json(target / "sinkscope.json", card)
    (target / "train").mkdir()
    for log in TRAIN_LOGS:  # the demo draws the training curves from these
        shutil.copy(run / log, target / "train" / log)
    return card


def curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "telemetry.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "minutes": round(r["seconds"] / 60, 1), "tokens": r["tokens"],
             "max_layer_sink_score": round(max(r["sink_score"]), 3),
             "sink_score": [round(v, 3) for v in r["sink_score"]]} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--command", default="sinkscope train --config configs/organism.yaml --variant {variant} "
                        "--out runs/organism-{variant}")
    parser.add_argument("--name", help="asset name for a single run (default: organism-<variant>)")
    args = parser.parse_args()
    if args.name and len(args.runs) > 1:
        parser.error("--name names one run; publish the runs one at a time")
    for run in args.runs:
        state = json.loads((run / "run.json").read_text())
        cfg = build(TrainConfig, state["provenance"]["config"])
        heldout = heldout_text(cfg, run / "heldout.txt")
        card = publish(run, heldout, args.command, args.name)
        print(json.dumps({"run": str(run), "card": card, "curve": curve(run)}, indent=1))
        write_json(run / "organism.json", {"schema_version": 1, "kind": "organism", "card": card,
                                           "curve": curve(run)})


if __name__ == "__main__":
    main()
