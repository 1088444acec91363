"""Peer-named results of ``probe``: Sun et al.'s layer-wise magnitudes, Yu et al.'s super weights,
and the comparison with published super-weight coordinates (``assets/super_weights.json``).

Each reduction is pure arithmetic on the tallies of :mod:`sinkscope.capture.activations`;
docs/metrics.md says for each how it relates to the peer's own code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import PurePosixPath

import torch

from .capture.activations import DownProjSpikeObserver, LayerMagnitudeObserver
from .metrics.magnitudes import SUN_STATS
from .results import json_floats
from .tables import long_table

# share of prompts on which a layer's down projection must spike on both sides (Yu's per-prompt
# reading) before the probe lists its coordinate; a majority, so one odd prompt does not decide
MAJORITY = 0.5



def reduce_sun(obs: LayerMagnitudeObserver) -> tuple[dict, dict]:
    """``layer_magnitudes`` (Sun et al.'s per-layer top-1/2/3 and median |x|, mean and spread over
    sequences) and the ``layer_magnitudes`` table (one row per sequence and layer)."""
    tally = obs.tally
    per_seq = tally["per_sequence"]  # (N, L, 4)
    n = max(len(per_seq), 1)
    dim_hits, pos_hits = tally["top1_dim_hits"], tally["top1_position_hits"]
    section = {
        "stats": list(SUN_STATS), "sequences": len(per_seq),
        "mean": json_floats(obs.mean()), "std": json_floats(obs.std()),
        "min": json_floats(per_seq.amin(0)), "max": json_floats(per_seq.amax(0)),
        "top1_dim": dim_hits.argmax(1).tolist(), "top1_dim_share": (dim_hits.amax(1) / n).tolist(),
        "top1_position": pos_hits.argmax(1).tolist(), "top1_position_share": (pos_hits.amax(1) / n).tolist(),
    }
    every = torch.ones(per_seq.shape[:2], dtype=torch.bool)
    table = long_table(("sequence", "layer"), every, {name: per_seq[:, :, k] for k, name in enumerate(SUN_STATS)})
    return section, table


def reduce_yu(obs: DownProjSpikeObserver) -> dict:
    """``yu_super_weights``: per layer, the prompts' largest down_proj input/output and their channels.

    A layer's coordinate is (layer, most frequent output channel, most frequent input channel); it is
    listed in ``coordinates`` when the majority of prompts spike above the threshold on both sides.
    Layers without a dense down projection are not listed.
    """
    tally = obs.tally
    n = tally["sequences"].clamp(min=1)
    layers, coordinates = [], []
    for layer in range(len(n)):
        if tally["sequences"][layer] == 0:  # no dense down projection here (a mixture of experts)
            continue
        row, col = int(tally["out_hits"][layer].argmax()), int(tally["in_hits"][layer].argmax())
        share = float(tally["both_spike"][layer] / n[layer])
        layers.append({
            "layer": layer, "row": row, "column": col,
            "row_share": float(tally["out_hits"][layer, row] / n[layer]),
            "column_share": float(tally["in_hits"][layer, col] / n[layer]),
            "input_abs_mean": float(tally["in_abs_sum"][layer] / n[layer]),
            "input_abs_max": float(tally["max_in_abs"][layer]),
            "output_abs_mean": float(tally["out_abs_sum"][layer] / n[layer]),
            "output_abs_max": float(tally["max_out_abs"][layer]),
            "spike_share": share,
        })
        if share > MAJORITY:
            coordinates.append([layer, row, col])
    return {"spike_threshold": obs.threshold, "layers": layers, "coordinates": coordinates}


def super_weight_triples(super_neurons: list[dict]) -> list[list[int]]:
    """(layer, row = output dim, column = neuron) of down_proj.weight for each linked super neuron."""
    return [[n["layer"], dim, n["index"]] for n in super_neurons if n.get("expert") is None for dim in n["dims"]]


@lru_cache(maxsize=1)
def published_table() -> dict:
    """{hub id: {"coordinates": [[layer, row, column], ...], "source": text}} shipped with sinkscope."""
    text = resources.files("sinkscope").joinpath("assets/super_weights.json").read_text()
    return json.loads(text)["models"]


def published_entry(name: str | None, table: dict | None = None) -> tuple[str, dict] | None:
    """The table entry for checkpoint ``name`` (hub id or folder), matched on the id or its last part.

    >>> published_entry("/models/Llama-2-7b-hf")[1]["coordinates"]
    [[1, 2533, 7890]]
    >>> published_entry("gpt2") is None
    True
    """
    if not name:
        return None
    table = published_table() if table is None else table
    given = str(name).rstrip("/").lower()
    tail = PurePosixPath(given.replace("\\", "/")).name
    for key, entry in table.items():
        k = key.lower()
        if given == k or tail == PurePosixPath(k).name:
            return key, entry
    return None


def compare_published(name: str | None, found: dict[str, list[list[int]]], table: dict | None = None) -> dict | None:
    """Whether the probe's super-weight coordinates (by finder) contain each published one.

    ``found``: {"chain": [[l, r, c], ...], "yu": [[l, r, c], ...]}. None when ``name`` is not in the table.
    """
    hit = published_entry(name, table)
    if hit is None:
        return None
    key, entry = hit
    published = [list(map(int, c)) for c in entry["coordinates"]]
    per = [{"coordinate": c, **{finder: c in coords for finder, coords in found.items()}} for c in published]
    matches = all(any(row[f] for f in found) for row in per)
    return {"model": key, "source": entry["source"], "published": published, "found": found,
            "per_coordinate": per, "matches": matches}
