"""The peers' figures: Sun et al.'s layer-wise magnitudes and the massive-activation reset."""

from __future__ import annotations

import re

import pytest

from sinkscope.report import MissingData, build_report
from sinkscope.report import figures_peers as peers_fig
from sinkscope.report.style import svg_text
from sinkscope.results import SCHEMA_VERSION, write_json

L = 4


def magnitudes() -> dict:
    mean = [[3.0, 2.5, 2.0, 0.5]] + [[900.0, 400.0, 3.0, 0.5]] * (L - 1)
    return {"stats": ["top1", "top2", "top3", "median"], "sequences": 10, "mean": mean,
            "std": [[0.1] * 4] * L, "min": mean, "max": mean, "top1_dim": [0, 5, 5, 5], "top1_dim_share": [1.0] * L,
            "top1_position": [0] * L, "top1_position_share": [1.0] * L}


def massive_payload() -> dict:
    rows = [{"layer": k, "sink_score_original": 0.9, "sink_score_zero": 0.1, "sink_score_mean": 0.88} for k in range(L)]
    ppl = {run: {"perplexity": v, "ci": [v - 1, v + 1]} for run, v in (("original", 10.0), ("zero", 900.0), ("mean", 10.2))}
    return {"schema_version": SCHEMA_VERSION, "kind": "massive", "position": 9,
            "provenance": {"model": "runs/organism-softmax"}, "layer": 1, "dims": [5], "per_layer": rows,
            "perplexity": ppl, "sink_rate": {"original": 50.0, "zero": 0.0, "mean": 50.0}, "verdict": "reset done"}


def ids(fig) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', svg_text(fig)))


def test_layer_magnitudes_draw_sun_series_with_bands():
    found = ids(peers_fig.layer_magnitudes({"layer_magnitudes": magnitudes()}, "run", "#1F77B4"))
    for key in ("top1", "top2", "top3", "median"):
        assert f"sun-{key}" in found and f"sun-{key}-band" in found


def test_massive_reset_draws_three_runs_and_perplexity_bars():
    found = ids(peers_fig.massive_reset(massive_payload(), "run", "#1F77B4"))
    assert {"massive-sink-original", "massive-sink-zero", "massive-sink-mean", "massive-perplexity"} <= found


def test_missing_magnitudes_is_said():
    with pytest.raises(MissingData):
        peers_fig.layer_magnitudes({"sink_score": []}, "run", "#000000")


def test_report_draws_both_peer_figures(tmp_path):
    run = tmp_path / "run"
    probe = {"schema_version": SCHEMA_VERSION, "kind": "probe", "provenance": {"model": "runs/organism-softmax"},
             "data": {"sequences": 10, "max_len": 8, "source": "embedded-prompts"},
             "sink_score": [[0.5] * 2] * L, "layer_sink_score": [0.5] * L, "sink_rate": 50.0, "sink_rate_eps": 0.3,
             "onset_layer": None, "layer_magnitudes": magnitudes(),
             "yu_super_weights": {"spike_threshold": 50.0, "layers": [], "coordinates": [[1, 5, 7]]},
             "published_super_weights": {"matches": True}}
    write_json(run / "organism-softmax" / "probe" / "probe.json", probe)
    write_json(run / "organism-softmax" / "massive" / "intervene.json", massive_payload())
    html = (build_report([run], tmp_path / "report.html"), (tmp_path / "report.html").read_text())[1]
    assert 'id="fig-layer-magnitudes--organism-softmax"' in html
    assert 'id="fig-massive-reset--organism-softmax"' in html
    assert "(1, 5, 7)" in html and "super weights (Yu&#x27;s procedure)" in html
