"""Figures read back: the numbers each figure plots, taken from its SVG (the heatmap's pixels) or its artists,
against the result payload, with the expected values computed here (numpy, a loop), never by the report.

Each test names the one-line source mutation it catches.
"""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import numpy as np
import pytest
from PIL import Image

from sinkscope.report import figures_chain as chain_fig
from sinkscope.report import figures_effects as effect_fig
from sinkscope.report import figures_sink as sink_fig
from sinkscope.report import figures_stream as stream_fig
from sinkscope.report.style import svg_text

from test_report import per_layer_payload, probe_payload, probe_tables

L, H = 4, 3


def artist(fig, gid: str):
    found = fig.findobj(lambda a: a.get_gid() == gid)
    assert found, f"no artist {gid}"
    return found[0]


def asymmetric_probe() -> dict:
    """A probe whose sink scores differ in every cell, so a transposed or flipped map cannot match."""
    p = probe_payload()
    p["sink_score"] = [[round(0.05 + 0.07 * layer + 0.2 * head, 3) for head in range(H)] for layer in range(L)]
    p["layer_sink_score"] = [float(np.mean(row)) for row in p["sink_score"]]
    return p


def svg_heatmap_cells(svg: str, rows: int, cols: int) -> np.ndarray:
    """(rows, cols, 3) RGB at the centre of each cell of the figure's one embedded image, as displayed: top row
    first (the SVG stores the PNG bottom-up under a ``scale(1 -1)`` transform when the origin is lower)."""
    tag = re.search(r"<image\b[^>]*>", svg).group(0)
    data = re.search(r'xlink:href="data:image/png;base64,([^"]+)"', tag).group(1)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=float) / 255
    if "scale(1 -1)" in tag:
        image = image[::-1]
    height, width, _ = image.shape
    ys = ((np.arange(rows) + 0.5) * height / rows).astype(int)
    xs = ((np.arange(cols) + 0.5) * width / cols).astype(int)
    return image[np.ix_(ys, xs)]


def test_sink_heatmap_pixels_are_layers_up_heads_across():
    """Catches `grid.T` (transposed), `origin="upper"` (layers upside down) or a wrong vmax in sink_heatmap."""
    p = asymmetric_probe()
    cells = svg_heatmap_cells(svg_text(sink_fig.sink_heatmap(p, "a")), L, H)  # top row drawn = last layer
    viridis = matplotlib.colormaps["viridis"]
    for layer in range(L):
        for head in range(H):
            expected = np.array(viridis(p["sink_score"][layer][head])[:3])
            assert np.abs(cells[L - 1 - layer, head] - expected).max() < 0.02, (layer, head)


def test_sink_rate_lines_are_the_layer_scores_of_each_input():
    """Catches drawing one input's scores under the other's series (`probe = e.get(key)` -> the other key)."""
    natural, random = asymmetric_probe(), asymmetric_probe()
    random["layer_sink_score"] = [0.9 - 0.1 * k for k in range(L)]
    fig = sink_fig.sink_rate([{"index": 0, "label": "a", "colour": "#000", "natural": natural, "random": random}])
    for key, probe in (("natural", natural), ("random", random)):
        x, y = artist(fig, f"layer-score-0-{key}").get_data()
        assert list(x) == list(range(L)) and np.allclose(y, probe["layer_sink_score"])


def test_dom_ratio_and_max_abs_share_the_layer_input_axis():
    """Catches drawing block outputs at k instead of k + 1 (`np.arange(1, ...)` -> `range(...)`) in
    massive_activations, and plotting the median as the first token's DomRatio in dom_ratio."""
    p = probe_payload()
    p["disparity"]["sink_dom_ratio"] = [3.0, 5.0, 60.0, 61.0, 62.0]  # layer inputs 0..L
    fig = sink_fig.dom_ratio(p, "a", "#000")
    x, y = artist(fig, "dom-sink").get_data()
    assert list(x) == list(range(L + 1)) and list(y) == p["disparity"]["sink_dom_ratio"]
    assert list(artist(fig, "dom-other").get_data()[1]) == p["disparity"]["other_dom_ratio_median"]
    fig = sink_fig.massive_activations(p, probe_tables()["hidden_by_position"], "a", "#000")
    x, y = artist(fig, "max-abs").get_data()
    assert list(x) == [k + 1 for k in range(L)]  # block k's output is layer input k + 1
    assert list(y) == p["max_abs_activation"]


def test_massive_norm_map_puts_block_output_k_on_row_k_plus_one():
    """Catches `grid[layers[keep] + 1, ...]` -> `grid[layers[keep], ...]` (the map one layer off)."""
    table = probe_tables()["hidden_by_position"]
    table = {**table, "norm": [10.0 * (k + 1) + t for k, t in zip(table["layer"], table["position"])]}
    image = np.ma.filled(artist(sink_fig.massive_activations(probe_payload(), table, "a", "#000"),
                                "massive-norm").get_array().astype(float), np.nan)
    assert np.isnan(image[0]).all()  # layer input 0 (the embeddings) is not recorded
    for k, t, value in zip(table["layer"], table["position"], table["norm"]):
        assert image[k + 1, t] == value


def test_before_after_bars_are_in_order_and_carry_their_values():
    """Catches swapping before and after (`before, after = after, before`) in before_after."""
    p = per_layer_payload("isolate")
    for k, row in enumerate(p["per_layer"]):
        row["sink_score_before"], row["sink_score_after"] = 0.01 * (k + 1), 0.2 + 0.1 * k
    fig = effect_fig.before_after(p, "a", "#000")
    before = [b.get_height() for b in artist(fig, "isolate-before").axes.containers[0]]
    after = [b.get_height() for b in artist(fig, "isolate-after").axes.containers[1]]
    assert np.allclose(before, [r["sink_score_before"] for r in p["per_layer"]])
    assert np.allclose(after, [r["sink_score_after"] for r in p["per_layer"]])
    lefts = [b.get_x() for b in artist(fig, "isolate-before").axes.containers[0]]
    rights = [b.get_x() for b in artist(fig, "isolate-after").axes.containers[1]]
    assert all(a < b for a, b in zip(lefts, rights))  # before drawn left of after at every layer


def test_ablate_dom_ratio_lines_are_before_then_after_on_layer_inputs():
    """Catches swapping dom_ratio_before/after or dropping the + 1 shift of block outputs in before_after."""
    p = per_layer_payload("ablate")
    fig = effect_fig.before_after(p, "a", "#000")
    for gid, key in (("ablate-dom-before", "dom_ratio_before"), ("ablate-dom-after", "dom_ratio_after")):
        x, y = artist(fig, gid).get_data()
        assert list(x) == list(range(1, len(p[key]) + 1)) and list(y) == p[key]


def test_amplify_line_ci_and_control_are_the_payload_series():
    """Catches plotting the control as the amplified score (`finite(score)` -> `finite(control)`)."""
    from test_report import amplify_payload

    p = amplify_payload()
    p["control_sink_score"] = [0.011, 0.012, 0.013]
    fig = effect_fig.amplify_dose_response(p, "a", "#000")
    x, y = artist(fig, "amplify-score").get_data()
    assert list(x) == p["lambdas"] and list(y) == p["sink_score"]
    assert list(artist(fig, "control-score").get_data()[1]) == p["control_sink_score"]
    band = artist(fig, "amplify-ci").get_paths()[0].vertices
    assert np.isclose(band[:, 1].min(), min(c[0] for c in p["sink_score_ci"]))
    assert np.isclose(band[:, 1].max(), max(c[1] for c in p["sink_score_ci"]))


def test_amplify_band_stops_at_zero_and_the_scores_choose_the_scale():
    """SmolLM2's amplify CI reached -0.002: on the log axis its lower CI ends chose, the band fell off the plot."""
    p = {"lambdas": [1.0, 5.0, 30.0], "sink_score": [0.028, 0.089, 0.008], "position": 9, "observe": 3,
         "sink_score_ci": [[0.02, 0.036], [0.0001, 0.18], [-0.002, 0.018]], "layers": [0, 1, 2]}
    fig = effect_fig.amplify_dose_response(p, "a", "#000")
    band = artist(fig, "amplify-ci").get_paths()[0].vertices
    assert band[:, 1].min() == 0.0 and np.isclose(band[:, 1].max(), 0.18)
    assert fig.axes[0].get_yscale() == "linear"  # scores and upper ends span 1.35 decades; only the CI's 0.0001 spanned more
    p["sink_score"] = [0.0005, 0.089, 0.008]
    assert effect_fig.amplify_dose_response(p, "a", "#000").axes[0].get_yscale() == "log"


def test_stream_lines_are_the_moving_mean_of_each_policys_nll():
    """Catches a moving mean off by one (`total[starts]` -> `total[starts + 1]`) or a line under the wrong policy."""
    rng = np.random.default_rng(0)
    nll = {name: list(rng.uniform(1, 4, 40)) for name in ("window", "first-1")}
    payload = {"budget": 8, "policies": [{"name": n, "positions": "original", "nll_by_position": v}
                                         for n, v in nll.items()]}
    fig = stream_fig.stream_perplexity(payload, "a")
    for name, values in nll.items():
        span = stream_fig.SMOOTH_TOKENS
        expected = [np.exp(np.mean(values[max(0, i + 1 - span): i + 1])) for i in range(len(values))]
        x, y = artist(fig, f"stream-{name}-original").get_data()
        assert list(x) == list(range(2, len(values) + 2)) and np.allclose(y, expected)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_variance_curves_are_the_table_rows_of_their_layer(layer):
    """Catches reading the wrong layer's rows (`k == layer` -> `k == layer - 1`) in variance_by_position."""
    table = probe_tables()["chain_variance_by_position"]
    table = {**table, "std_across_samples": [float(k * 100 + t) for k, t in zip(table["layer"], table["position"])]}
    fig = chain_fig.variance_by_position(probe_payload(), None, {"natural": table}, "a", "#000")
    x, y = artist(fig, f"std-std_across_samples-{layer}-natural").get_data()
    expected = [(t, v) for k, t, v in zip(table["layer"], table["position"], table["std_across_samples"]) if k == layer]
    assert list(zip(x, y)) == expected


def test_episode_lines_are_the_trajectories_and_markers_sit_at_the_rise_and_fall():
    """Catches a rise or fall marked at its `from` instead of its `to` layer input (`k = step["to"]` ->
    `k = step["from"]`); with no episodes the figure is left out."""
    from sinkscope.report import figures_episodes as episode_fig
    from sinkscope.report.payload import MissingData

    p = probe_payload()
    trajectories = [{"dim": 5, "mean": [1.0, 2.0, 300.0, 310.0, 5.0], "std": [0.0] * 5},
                    {"dim": 9, "mean": [1.0, 1.5, 2.0, 40.0, 45.0], "std": [0.0] * 5}]
    p["chain"] |= {"trajectories": trajectories, "episodes": [
        {"dim": 5, "start": 2, "end": 3, "peak": 310.0, "sink_ratio": 8.0,
         "rise": {"from": 1, "to": 2, "writers": [{"kind": "neuron", "layer": 1, "index": 7}]},
         "fall": {"from": 3, "to": 4, "erasers": [{"kind": "mlp", "layer": 3}]}}]}
    fig = episode_fig.episodes_figure(p, "a")
    for t in trajectories:
        x, y = artist(fig, f"episode-dim-{t['dim']}").get_data()
        assert list(x) == list(range(5)) and list(y) == t["mean"]
    assert artist(fig, "episode-0-rise").get_data()[0][0] == 2 and artist(fig, "episode-0-fall").get_data()[0][0] == 4
    assert list(artist(fig, "episode-sink-score").get_data()[1]) == p["layer_sink_score"]
    assert "n7@L1" in svg_text(fig)
    with pytest.raises(MissingData):
        episode_fig.episodes_figure(probe_payload(), "a")  # today's chain: no episodes, no figure
