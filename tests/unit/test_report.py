"""The report on synthetic result files: every figure draws its data series, a figure without data is left out
(and named in Report.missing), errors are one line."""

from __future__ import annotations

import json
import re

import pytest

from sinkscope.cli import main
from sinkscope.errors import SinkscopeError
from sinkscope.report import SECTIONS, MissingData, build_report
from sinkscope.report import figures_chain as chain_fig
from sinkscope.report import figures_effects as effect_fig
from sinkscope.report import figures_sink as sink_fig
from sinkscope.report.load import guess_variant, load_results
from sinkscope.report.style import LAYER_AXIS, VARIANT_COLOURS, inline_svg, svg_text
from sinkscope.results import SCHEMA_VERSION, write_json, write_parquet

L, H, T = 4, 3, 8  # layers, heads, positions of the synthetic probe


def probe_payload(model: str = "runs/organism-softmax", onset: int | None = 2, random_tokens: bool = False) -> dict:
    """A probe.json with every key the figures read, its numbers made up but well formed."""
    sink = [[0.9 if onset is not None and layer >= onset else 0.1 for _ in range(H)] for layer in range(L)]
    linked = onset is not None
    return {
        "schema_version": SCHEMA_VERSION, "kind": "probe",
        "provenance": {"model": model, "git_sha": "abc", "versions": {"sinkscope": "0.1.0"}, "config_hash": "h"},
        "data": {"sequences": 4, "max_len": T, "source": "random-tokens" if random_tokens else "embedded-prompts"},
        "sink_score": sink, "layer_sink_score": [row[0] for row in sink], "sink_rate": 50.0, "sink_rate_eps": 0.3,
        "onset_layer": onset, "onset_threshold_paper": 0.8, "max_abs_activation": [3.0, 500.0, 510.0, 520.0],
        "sink": {"present": onset is not None, "onset_layer": onset, "peak_layer": L - 1, "ratio_min": 2.0,
                 "ratio": [1.0, 1.5, 6.0, 7.25], "ratio_ci": [[r - 0.5, r + 0.5] for r in (1.0, 1.5, 6.0, 7.25)]},
        "variance": {"layers": [{"layer": k, "across_samples": {"fit": {"s": 1.0, "r2": 0.9}, "first_rest_ratio": 2.0},
                                 "across_dims": {"fit": {"s": 1.0, "r2": 0.8}, "first_rest_ratio": 2.5}}
                                for k in range(L)]},
        "super_neurons": {"candidates": [{"layer": 1, "index": 7, "persistence": 1.0, "sink_abs_mean": 200.0,
                                          "other_abs_mean": 0.1, "weight_outlier": True,
                                          "down_column": {"kurtosis": 40.0, "dims": [{"dim": 5, "share": 0.9},
                                                                                     {"dim": 2, "share": 0.05}]}}]},
        "disparity": {"sink_dom_ratio": [3.0, 3.0, 60.0, 60.0, 60.0], "other_dom_ratio_median": [3.0] * 5,
                      "other_dom_ratio_max": [4.0] * 5, "disparity_layer_input": 2 if linked else None,
                      "massive_dims": [5] if linked else [], "massive_criteria_paper": {"abs": 100.0, "rel": 1000.0}},
        "qk_locking": {"from_layer": 2, "locked_heads": [{"layer": 2, "head": 0}],
                       "layers": [{"layer": k, "alignment": [0.95] * H, "positive_share": [0.99] * H}
                                  for k in (2, 3)]},
        "chain": {"super_neurons": [{"layer": 1, "index": 7, "dims": [5]}] if linked else [],
                  "massive_dims": [5] if linked else [], "disparity_layer_input": 2 if linked else None,
                  "onset_layer": onset, "consistent": linked, "verdict": "The sink sets in at layer 2."},
    }


def probe_tables() -> dict:
    grid = [(k, t) for k in range(L) for t in range(T)]
    return {
        "chain_variance_by_position": {"layer": [k for k, _ in grid], "position": [t for _, t in grid],
                                       "std_across_samples": [1 / (t + 1) ** 0.5 for _, t in grid],
                                       "std_across_dims": [2 / (t + 1) ** 0.5 for _, t in grid]},
        "hidden_by_position": {"layer": [k for k, _ in grid], "position": [t for _, t in grid],
                               "norm": [500.0 if t == 0 and k else 10.0 for k, t in grid]},
        "chain_neuron_selectivity": {"neuron": [0] * T, "layer": [1] * T, "index": [7] * T, "position": list(range(T)),
                                     "cos_gate": [0.9] + [0.0] * (T - 1), "up_dot": [5.0] + [0.0] * (T - 1),
                                     "activation": [200.0] + [0.0] * (T - 1)},
    }


def amplify_payload(model: str = "runs/organism-softmax") -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": "amplify", "position": 9, "observe": 2, "layers": [0, 1],
            "provenance": {"model": model}, "lambdas": [1.0, 5.0, 20.0], "sink_score": [0.01, 0.2, 0.6],
            "sink_score_ci": [[0.0, 0.02], [0.15, 0.25], [0.5, 0.7]], "control_sink_score": [0.01, 0.01, 0.02],
            "control_sink_score_ci": [[0.0, 0.02]] * 3, "monotone": True, "verdict": "amplify rose"}


def per_layer_payload(kind: str, model: str = "runs/organism-softmax") -> dict:
    rows = [{"layer": k, "sink_score_before": 0.1, "sink_score_after": 0.5, "original_sink_after": 0.4}
            for k in range(L)]
    body = {"schema_version": SCHEMA_VERSION, "kind": kind, "position": 9, "provenance": {"model": model},
            "per_layer": rows, "verdict": f"{kind} done"}
    if kind == "isolate":
        body["max_gain_layer"] = 1
    if kind == "ablate":
        body |= {"neurons": [[1, 7]], "dims": [], "dom_ratio_before": [3.0, 60.0, 60.0, 60.0],
                 "dom_ratio_after": [3.0] * 4, "perplexity_before": {"perplexity": 10.0},
                 "perplexity_after": {"perplexity": 10.5}}
    return body


def write_probe(folder, payload, tables=None):
    for name, columns in (tables if tables is not None else probe_tables()).items():
        write_parquet(folder / f"{name}.parquet", columns)
    write_json(folder / "probe.json", payload)


def write_training(folder, variant: str, sink: float):
    folder.mkdir(parents=True)
    metrics = [{"step": s, "loss": 5.0 - s / 100, **({"val_loss": 5.1 - s / 100} if s % 50 == 0 else {})}
               for s in range(10, 110, 10)]
    telemetry = [{"step": s, "sink_score": [0.1, sink], "dom_ratio": [3.0, 40.0], "max_activation": [3.0, 90.0],
                  "effective_rank": [20.0, 18.0]} for s in (0, 50, 100)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "telemetry.jsonl").write_text("".join(json.dumps(m) + "\n" for m in telemetry))
    write_json(folder / "run.json", {"schema_version": SCHEMA_VERSION, "kind": "train", "variant": variant,
                                     "steps": 100, "final_train_loss": 4.0, "final_val_loss": 4.1})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A RUN folder with two models (softmax with a sink, headnorm without), interventions and training logs."""
    run = tmp_path_factory.mktemp("demo")
    write_probe(run / "organism-softmax" / "probe", probe_payload())
    write_probe(run / "organism-softmax" / "probe-random", probe_payload(random_tokens=True))
    write_json(run / "organism-softmax" / "amplify" / "intervene.json", amplify_payload())
    for kind in ("isolate", "ablate"):
        write_json(run / "organism-softmax" / kind / "intervene.json", per_layer_payload(kind))
    write_probe(run / "organism-headnorm" / "probe", probe_payload("runs/organism-headnorm", onset=None))
    write_training(run / "train" / "organism-softmax", "softmax", 0.9)
    write_training(run / "train" / "organism-headnorm", "headnorm", 0.1)
    write_json(run / "train" / "compare.json", {
        "schema_version": SCHEMA_VERSION, "kind": "compare", "target_loss": None,
        "variants": {"softmax": {"final_val_loss": {"mean": 4.1, "std": 0.0, "n": 1}, "runs": ["a"]}}})
    return run


@pytest.fixture(scope="module")
def built(full_run, tmp_path_factory):
    """The report of ``full_run``, drawn once for the page tests: (report, page text)."""
    out = tmp_path_factory.mktemp("page") / "report.html"
    report = build_report([full_run], out)
    return report, out.read_text()


def svg_ids(svg: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', svg))


# ---- figures, one payload each -----------------------------------------------------------------

def test_heatmap_marks_the_onset_layer_only_when_there_is_one():
    with_onset = svg_ids(svg_text(sink_fig.sink_heatmap(probe_payload(), "a")))
    assert {"sink-heatmap", "onset-marker"} <= with_onset
    without = svg_ids(svg_text(sink_fig.sink_heatmap(probe_payload(onset=None), "b")))
    assert "sink-heatmap" in without and "onset-marker" not in without


def test_heatmap_has_title_axis_labels_and_colour_bar():
    svg = svg_text(sink_fig.sink_heatmap(probe_payload(), "organism-softmax"))
    for text in ("organism-softmax: sink score, onset layer 2", "head", LAYER_AXIS,
                 "sink score (attention to token 0)"):
        assert text in svg


def test_sink_rate_draws_natural_and_random_for_each_run():
    entries = [{"index": 0, "label": "a", "colour": "#0072B2", "natural": probe_payload(),
                "random": probe_payload(random_tokens=True)},
               {"index": 1, "label": "b", "colour": "#E69F00", "natural": probe_payload(onset=None), "random": None}]
    ids = svg_ids(svg_text(sink_fig.sink_rate(entries)))
    assert {"layer-score-0-natural", "layer-score-0-random", "layer-score-1-natural", "sink-rate-0-natural",
            "sink-rate-0-random", "sink-rate-1-natural"} <= ids
    assert "layer-score-1-random" not in ids


def test_variance_draws_curves_and_fits_for_both_inputs():
    tables = {"natural": probe_tables()["chain_variance_by_position"],
              "random": probe_tables()["chain_variance_by_position"]}
    svg = svg_text(chain_fig.variance_by_position(probe_payload(), probe_payload(random_tokens=True), tables, "a", "#000"))
    ids = svg_ids(svg)
    for layer in (1, 2, 3):  # around onset 2
        for key in ("natural", "random"):
            assert f"std-std_across_samples-{layer}-{key}" in ids
            assert f"fit-std_across_samples-{layer}-{key}" in ids
    assert "std-std_across_samples-0-natural" not in ids


def test_super_neuron_bars_highlight_the_massive_dim():
    svg = svg_text(chain_fig.super_neurons(probe_payload(), probe_tables()["chain_neuron_selectivity"], "a", "#000"))
    ids = svg_ids(svg)
    assert {"down-column-0", "down-column-0-1", "selectivity-cos-0", "selectivity-act-0"} <= ids
    first_bar = re.search(r'<g id="down-column-0">(.*?)</g>', svg, re.DOTALL).group(1)
    assert "#d62728" in first_bar.lower()  # dim 5 is massive: drawn in the highlight colour


def test_neuron_table_names_the_chain_writers_first_even_where_the_spike_finder_missed_them(tmp_path):
    """The C2 table must name every neuron the chain names (the headline and the chain box quote them), with how
    each was found; a writer the spike finder missed (SmolLM2's onset writers) still gets its row."""
    payload = probe_payload()
    column = {"kurtosis": 30.0, "dims": [{"dim": 5, "share": 0.8}]}
    strong = {"layer": 3, "index": 1, "persistence": 1.0, "sink_abs_mean": 900.0, "other_abs_mean": 0.1,
              "weight_outlier": False, "down_column": column}
    missed = {"layer": 0, "index": 4, "persistence": 0.25, "sink_abs_mean": 40.0, "other_abs_mean": 2.0,
              "weight_outlier": False, "down_column": column}
    payload["super_neurons"]["candidates"].append(strong)
    eraser = {**missed, "layer": 2, "index": 9}
    payload["super_neurons"]["attributed"] = [payload["super_neurons"]["candidates"][0], missed, eraser]
    neuron = lambda layer, index, share: {"kind": "neuron", "layer": layer, "index": index, "expert": None,  # noqa: E731
                                          "share": share}
    payload["chain"]["episodes"] = [{"dim": 5, "start": 2, "end": 3,
                                     "rise": {"writers": [neuron(1, 7, 0.6), neuron(0, 4, 0.3)]},
                                     "fall": {"erasers": [neuron(2, 9, 0.7), neuron(2, 8, 0.2), neuron(2, 6, 0.1)]}}]
    rows = chain_fig.neuron_rows(payload)  # the third eraser is not named by the headline, nor here
    assert [(r["layer"], r["index"], bool(r["roles"]), r["spike_finder"]) for r in rows] == [
        (1, 7, True, True), (0, 4, True, False), (2, 9, True, False), (2, 8, True, False), (3, 1, False, True)]
    assert rows[2]["roles"] == ["erases 70% of the fall of dim 5 (inputs 2-3)"] and "sink_abs_mean" not in rows[3]
    write_probe(tmp_path / "m" / "probe", payload)
    page = (build_report([tmp_path], tmp_path / "r.html"), (tmp_path / "r.html").read_text())[1]
    table = re.search(r'<table[^>]*neuron-table.*?</table>', page, re.DOTALL).group(0)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", table, re.DOTALL)]
    assert cells[cells.index("4") + 1: cells.index("4") + 3] == ["attribution",
                                                                 "writes 30% of the rise of dim 5 (inputs 2-3)"]
    assert cells[cells.index("7") + 1] == "attribution + spike finder" and "spike finder" in cells


def test_disparity_massive_qk_and_chain_figures_carry_their_series():
    p = probe_payload()
    dom_svg = svg_text(sink_fig.dom_ratio(p, "a", "#000"))
    assert {"dom-sink", "dom-other"} <= svg_ids(dom_svg)
    assert "disparity at layer input 2" in dom_svg  # read from disparity.disparity_layer_input
    assert {"massive-norm", "max-abs"} <= svg_ids(svg_text(
        sink_fig.massive_activations(p, probe_tables()["hidden_by_position"], "a", "#000")))
    assert {"qk-align", "qk-share"} <= svg_ids(svg_text(chain_fig.qk_locking(p, None, "a")))
    chain_svg = svg_text(chain_fig.chain_diagram(p, "a", "#000"))
    assert {"chain-c1", "chain-c2", "chain-c3", "chain-qk", "chain-sink"} <= svg_ids(chain_svg)
    assert "layer 1 neuron 7" in chain_svg and "dim 5 dominates" in chain_svg
    assert "from layer input 2" in chain_svg  # read from chain.disparity_layer_input


def test_intervention_figures_draw_ci_and_control():
    ids = svg_ids(svg_text(effect_fig.amplify_dose_response(amplify_payload(), "a", "#000")))
    assert {"amplify-score", "amplify-ci", "control-score", "control-ci"} <= ids
    no_control = {**amplify_payload(), "control_sink_score": None, "control_sink_score_ci": None}
    assert "control-score" not in svg_ids(svg_text(effect_fig.amplify_dose_response(no_control, "a", "#000")))
    assert {"isolate-before", "isolate-after"} <= svg_ids(svg_text(effect_fig.before_after(
        per_layer_payload("isolate"), "a", "#000")))
    assert {"ablate-before", "ablate-after", "ablate-dom-before", "ablate-dom-after"} <= svg_ids(svg_text(
        effect_fig.before_after(per_layer_payload("ablate"), "a", "#000")))


@pytest.mark.parametrize("call", [
    lambda: sink_fig.sink_heatmap({"schema_version": 1}, "a"),
    lambda: sink_fig.dom_ratio({"onset_layer": 1}, "a", "#000"),
    lambda: sink_fig.massive_activations(probe_payload(), None, "a", "#000"),
    lambda: chain_fig.super_neurons({**probe_payload(), "super_neurons": {"candidates": []}}, None, "a", "#000"),
    lambda: chain_fig.chain_diagram({"sink_score": [[0.1]]}, "a", "#000"),
    lambda: effect_fig.amplify_dose_response({"lambdas": [1.0]}, "a", "#000"),
    lambda: effect_fig.training_curves([{"label": "a", "colour": "#000", "metrics": [], "telemetry": []}]),
])
def test_absent_data_raises_missing_data_instead_of_drawing(call):
    with pytest.raises(MissingData):
        call()


def test_inline_svg_prefixes_ids_and_references():
    svg = svg_text(sink_fig.sink_heatmap(probe_payload(), "a"))
    inlined = inline_svg(svg, "fig1")
    assert not inlined.startswith("<?xml")
    ids = re.findall(r'id="([^"]+)"', inlined)
    assert ids and all(i.startswith("fig1-") for i in ids)
    refs = re.findall(r'url\(#([^)]+)\)', inlined) + re.findall(r'href="#([^"]+)"', inlined)
    assert all(r.startswith("fig1-") for r in refs) and set(refs) <= set(ids)


# ---- the page ----------------------------------------------------------------------------------

def test_report_has_every_section_with_something_to_show_and_figure_side_by_side(built):
    report, html = built
    for section in SECTIONS:  # no stream.json in this folder: that section is left out
        assert (f'<section id="{section}"' in html) == (section != "stream"), section
    for kind in ("sink-heatmap", "variance", "super-neurons", "dom-ratio", "massive", "qk-locking", "chain"):
        assert f'id="fig-{kind}--organism-softmax"' in html
    assert 'id="fig-sink-heatmap--organism-headnorm"' in html  # the twin drawn beside it
    for kind in ("sink-rate", "training", "amplify--organism-softmax", "isolate--organism-softmax",
                 "ablate--organism-softmax"):
        assert f'id="fig-{kind}"' in html
    assert 'id="compare-table"' in html and "4.1 ± 0" in html  # own table and compare.json
    for figure_id in report.figures:  # static files for papers
        assert (report.figures_dir / f"{figure_id}.png").stat().st_size > 1000
        assert (report.figures_dir / f"{figure_id}.svg").read_text().lstrip().startswith("<?xml")


def test_missing_figures_are_left_out_not_faked_nor_noted(built):
    report, html = built
    # the headnorm twin has no random-token probe, no interventions and no super neuron linked to a massive dim
    for kind in ("amplify", "isolate", "ablate"):
        assert f"{kind}--organism-headnorm" in report.missing  # recorded for the caller
        assert f'id="fig-{kind}--organism-headnorm"' not in html
    assert 'class="missing"' not in html and "omitted" not in html


def test_figures_share_one_font_size(built):
    from report_pages import FIGURE_FONT_PX, SUPERSCRIPT_PX, figure_font_sizes

    sizes = figure_font_sizes(built[1])
    assert 8.0 in sizes and sizes <= FIGURE_FONT_PX | {SUPERSCRIPT_PX}, sizes


def test_each_colour_has_one_role():
    """Runs, massive dims, KV policies, controls and fits never share a colour, and random tokens keep the dash."""
    from sinkscope.report import style

    roles = {"runs": {*style.VARIANT_COLOURS.values(), *style.OTHER_COLOURS},
             "massive dims and markers": set(style.DIM_COLOURS), "policies": {*style.POLICY_COLOURS.values(),
                                                                              *style.FIRST_K_COLOURS},
             "controls": {style.NEUTRAL}, "fits": {style.FIT_COLOUR}}
    for a in roles:
        for b in roles:
            assert a == b or not {c.lower() for c in roles[a]} & {c.lower() for c in roles[b]}, (a, b)
    assert style.CACHE_STYLE not in (style.RANDOM_STYLE, style.NATURAL_STYLE)


def test_page_is_self_contained(built):
    _, html = built
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert "@import" not in html and "url(http" not in html
    external = re.findall(r'(?:src|href)="(https?:[^"]*)"', html)
    assert external == []
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "duplicate ids in the page"


def test_report_is_a_pure_function_of_the_files(full_run, built, tmp_path):
    report, html = built
    again = build_report([full_run], tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text() == html  # byte for byte: no timestamps, deterministic ids
    assert again.figures == report.figures and again.missing == report.missing


def test_colours_follow_the_variant_across_figures(full_run, built):
    results = load_results([full_run])
    by_label = {s.label: s.colour for s in results.series}
    assert by_label == {"organism-softmax": VARIANT_COLOURS["softmax"],
                        "organism-headnorm": VARIANT_COLOURS["headnorm"]}
    assert {t.variant: t.colour for t in results.training} == {"softmax": VARIANT_COLOURS["softmax"],
                                                              "headnorm": VARIANT_COLOURS["headnorm"]}
    report, heatmap_page = built
    training_svg = (report.figures_dir / "training.svg").read_text().lower()
    assert VARIANT_COLOURS["headnorm"].lower() in training_svg
    assert f'background:{VARIANT_COLOURS["headnorm"]}' in heatmap_page


def test_the_baseline_is_drawn_left_of_the_fix(tmp_path):
    write_probe(tmp_path / "a-headnorm", probe_payload("m/organism-headnorm", onset=None))
    write_probe(tmp_path / "b-softmax", probe_payload("m/organism-softmax"))
    assert [s.variant for s in load_results([tmp_path]).series] == ["softmax", "headnorm"]


def test_guess_variant_prefers_the_longest_name():
    assert guess_variant("runs/organism-headnorm") == "headnorm"
    assert guess_variant("organism-softmax1") == "softmax1"
    assert guess_variant("organism-softmax") == "softmax"
    assert guess_variant("my-model") is None


def test_two_run_folders_are_told_apart_by_folder_name(tmp_path):
    for name, onset in (("baseline", 2), ("headnorm", None)):
        write_probe(tmp_path / name, probe_payload(f"hub/{name}-model", onset=onset))
    results = load_results([tmp_path / "baseline", tmp_path / "headnorm"])
    assert [(s.label, s.variant) for s in results.series] == [("baseline", None), ("headnorm", "headnorm")]
    assert results.series[0].colour != results.series[1].colour


# ---- errors ------------------------------------------------------------------------------------

def test_folder_without_results_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds no sinkscope result files" in err
    assert not (tmp_path / "r.html").exists()


def test_incompatible_schema_is_one_line_exit_2(tmp_path, capsys):
    payload = probe_payload()
    payload["schema_version"] = SCHEMA_VERSION + 99
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "probe.json").write_text(json.dumps(payload))
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "schema_version" in err


def test_report_must_be_an_html_file(full_run, tmp_path):
    with pytest.raises(SinkscopeError, match=r"\.html"):
        build_report([full_run], tmp_path / "report.pdf")


def test_torn_last_log_line_is_skipped_but_a_broken_middle_line_is_an_error(tmp_path):
    run = tmp_path / "train"
    write_training(run, "softmax", 0.9)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 120, "lo')
    assert len(load_results([tmp_path]).training[0].metrics) == 10
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(SinkscopeError, match="line 2"):
        load_results([tmp_path])


def test_training_runs_alone_make_a_report_that_says_what_is_missing(tmp_path):
    write_training(tmp_path / "runs" / "organism-softmax", "softmax", 0.9)
    write_training(tmp_path / "runs" / "organism-headnorm", "headnorm", 0.1)
    report = build_report([tmp_path / "runs"], tmp_path / "train.html")
    html = (tmp_path / "train.html").read_text()
    assert report.figures == ["training"]
    assert {"train-loss-0", "val-loss-1", "telemetry-sink_score-0", "telemetry-dom_ratio-1"} <= svg_ids(
        (report.figures_dir / "training.svg").read_text())
    shown = re.findall(r'<section id="([^"]+)"', html)
    assert shown == ["summary", "training", "files"]  # the probe sections have nothing to show: left out


def test_variance_says_no_fit_and_shows_the_layers_of_the_discrepancy():
    natural, random = probe_payload(), probe_payload(random_tokens=True)
    natural["variance"]["first_position"] = {"same_token_every_sample": True}
    random["variance"]["first_position"] = {"same_token_every_sample": False}
    for row in random["variance"]["layers"]:  # the discrepancy is at layers 0 and 1; the fit fails at layer 1
        row["across_samples"] = {"fit": {"s": 1.0, "r2": 0.99 if row["layer"] == 0 else -3.0},
                                 "first_rest_ratio": 4.6 if row["layer"] < 2 else 1.0 + row["layer"] / 10}
    tables = {"natural": probe_tables()["chain_variance_by_position"],
              "random": probe_tables()["chain_variance_by_position"]}
    svg = svg_text(chain_fig.variance_by_position(natural, random, tables, "a", "#000"))
    ids = svg_ids(svg)
    assert chain_fig.discrepancy_layers([("natural", natural, None), ("random", random, None)]) == [0, 1, 3]
    assert "fit-std_across_samples-0-random" in ids and "fit-std_across_samples-1-random" not in ids
    assert "no fit" in svg and "R2 BOS / " in svg  # the natural text's position 0 is BOS in every sample
    assert not any(i.startswith("fit-std_across_samples-") and i.endswith("-natural") for i in ids)
