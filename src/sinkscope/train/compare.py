"""``sinkscope compare``: runs grouped by variant, with loss, speed-to-target and final sink figures.

Reads only the files a run wrote (run.json, metrics.jsonl, telemetry.jsonl) and writes compare.json.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from ..errors import SinkscopeError
from ..files import read_log
from ..results import SCHEMA_VERSION, provenance, read_json, write_json
from .config import CompareConfig


def read_run(folder: str | Path) -> dict:
    """One run's summary, validation curve and last telemetry record."""
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise SinkscopeError(f"{folder} is not a finished training run (no run.json): pass the --out folders of "
                             "sinkscope train")
    summary = read_json(folder / "run.json", kind="train")
    metrics = read_log(folder / "metrics.jsonl")
    telemetry = read_log(folder / "telemetry.jsonl")
    return {"folder": str(folder), "summary": summary, "val_curve": [m for m in metrics if "val_loss" in m],
            "telemetry": telemetry[-1] if telemetry else None}


def reach(val_curve: list[dict], target: float) -> tuple[int | None, int | None]:
    """(step, tokens) of the first validation at or below ``target``; (None, None) if never."""
    for record in val_curve:
        if record["val_loss"] is not None and record["val_loss"] <= target:
            return record["step"], record["tokens"]
    return None, None


def _mean_std(values: list[float | None]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    # one run has no spread to report: std None, not a reassuring 0
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def _layer_max(telemetry: dict | None, key: str) -> float | None:
    return max(telemetry[key]) if telemetry else None


def _layer_mean(telemetry: dict | None, key: str) -> float | None:
    return statistics.fmean(telemetry[key]) if telemetry else None


def compare(folders: list[str], cfg: CompareConfig | None = None) -> dict:
    """The content of compare.json for the runs in ``folders`` (grouped by their variant)."""
    cfg = cfg or CompareConfig()
    if not folders:
        raise SinkscopeError("compare needs at least one run folder")
    groups: dict[str, list[dict]] = defaultdict(list)
    for folder in folders:
        run = read_run(folder)
        groups[run["summary"]["variant"]].append(run)
    rows = {}
    for variant, runs in sorted(groups.items()):
        row = {
            "runs": [r["folder"] for r in runs],
            "seeds": [r["summary"]["provenance"]["seed"] for r in runs],
            "final_train_loss": _mean_std([r["summary"]["final_train_loss"] for r in runs]),
            "final_val_loss": _mean_std([r["summary"]["final_val_loss"] for r in runs]),
            "max_layer_sink_score": _mean_std([_layer_max(r["telemetry"], "sink_score") for r in runs]),
            "max_layer_dom_ratio": _mean_std([_layer_max(r["telemetry"], "dom_ratio") for r in runs]),
            "mean_effective_rank": _mean_std([_layer_mean(r["telemetry"], "effective_rank") for r in runs]),
            "tokens_per_second": _mean_std([r["summary"]["tokens_per_second"] for r in runs]),
        }
        if cfg.target_loss is not None:
            reached = [reach(r["val_curve"], cfg.target_loss) for r in runs]
            row["steps_to_target"] = _mean_std([s for s, _ in reached])
            row["tokens_to_target"] = _mean_std([t for _, t in reached])
            row["runs_reaching_target"] = sum(s is not None for s, _ in reached)
        rows[variant] = row
    if cfg.target_loss is not None:
        base = rows.get(cfg.baseline, {}).get("steps_to_target", {}).get("mean")
        for row in rows.values():
            mine = row["steps_to_target"]["mean"]
            row["speedup_vs_baseline"] = base / mine if base and mine else None
    return {"schema_version": SCHEMA_VERSION, "kind": "compare",
            "provenance": provenance(config=cfg), "target_loss": cfg.target_loss, "baseline": cfg.baseline,
            "variants": rows}


def save_compare(payload: dict, out: str | Path) -> Path:
    out = Path(out)
    return write_json(out if out.suffix == ".json" else out / "compare.json", payload)
