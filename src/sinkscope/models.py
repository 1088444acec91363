"""Checkpoints shipped inside the package, so the demo and tests start offline in seconds."""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "assets" / "models"


def embedded_models() -> list[dict]:
    """Name, variant, parameter count and folder of every embedded checkpoint."""
    rows = []
    for folder in sorted(MODELS_DIR.glob("*/config.json")):
        config = json.loads(folder.read_text())
        card = folder.parent / "sinkscope.json"
        meta = json.loads(card.read_text()) if card.exists() else {}
        rows.append({
            "name": folder.parent.name,
            "variant": meta.get("variant", config.get("attention_variant", "softmax")),
            "parameters": meta.get("parameters"),
            "path": str(folder.parent),
        })
    return rows


def embedded_path(name: str) -> Path | None:
    """Folder of the embedded checkpoint ``name``, or None if there is no such checkpoint."""
    if "/" in name or name.startswith("."):
        return None
    path = MODELS_DIR / name
    return path if (path / "config.json").exists() else None
