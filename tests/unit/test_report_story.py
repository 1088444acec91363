"""The top of the page: one story per model, every cited number equal to its field, plain verdict words,
provenance and flags. Expected values are read from the files here, with this test's own field walker."""

from __future__ import annotations

import re
import pytest

from sinkscope.report import build_report
from sinkscope.report.load import load_results
from sinkscope.results import write_json

from report_pages import check_cited_numbers, headline
from test_report import amplify_payload, full_run, per_layer_payload, probe_payload, write_probe  # noqa: F401

def page_of(folders, tmp_path, name="r.html") -> str:
    build_report(folders, tmp_path / name)
    return (tmp_path / name).read_text()


@pytest.fixture(scope="module")
def page(full_run, tmp_path_factory) -> str:  # noqa: F811
    return page_of([full_run], tmp_path_factory.mktemp("story"))


def test_every_cited_number_is_its_field(page):
    """Catches a number printed from another field than the one it cites, e.g. in cite.Source.num
    `fmt(field(self.payload, path), spec)` -> `fmt(field(self.payload, path[:-1] + (0,)), spec)`."""
    assert check_cited_numbers(page) >= 10


def test_title_names_the_models_and_the_headline_comes_first(page):
    html = page
    assert re.search(r"<h1>Attention sinks in organism-softmax and organism-headnorm</h1>", html)
    main = html[html.index("<main>"):]
    assert main.index('<p class="headline">') < min(main.index(t) for t in ("<figure", "<table", 'class="convention"'))
    assert html.count('id="layer-convention"') == 1


def test_headline_says_which_data_each_number_used(page):
    text = headline(page, "organism-softmax")
    assert "on 4 sequences of 8 tokens of embedded prompts" in text
    assert "on 4 sequences of 8 tokens of random tokens" in text
    first = text.index("x uniform")
    assert text[first:].startswith("x uniform (") and "evenly" in text[first:first + 120]  # defined at first use
    assert "(the first layer after the amplified ones)" in text  # amplify's readout layer with its reason
    assert "read where the change is largest" in text and "read where it peaks before ablation" in text


def test_no_change_reads_as_no_change_and_a_dip_within_its_ci_is_monotone(tmp_path):
    """Catches `_change` calling any difference a rise (the NO_CHANGE bands deleted) and `monotone_within_ci`
    comparing the scores instead of their CIs."""
    run = tmp_path / "run" / "m"
    write_probe(run / "probe", probe_payload("hub/m"))
    isolate = per_layer_payload("isolate", "hub/m")
    for row in isolate["per_layer"]:
        row["sink_score_before"], row["sink_score_after"] = 0.020, 0.0201
    isolate["max_gain_layer"] = 1
    amplify = amplify_payload("hub/m") | {"sink_score": [0.01, 0.013, 0.010, 0.2],
                                          "sink_score_ci": [[0.0, 0.02], [0.005, 0.02], [0.004, 0.016], [0.1, 0.3]],
                                          "lambdas": [1.0, 2.0, 5.0, 20.0], "control_sink_score": None}
    write_json(run / "isolate" / "intervene.json", isolate)
    write_json(run / "amplify" / "intervene.json", amplify)
    text = headline(page_of([tmp_path / "run"], tmp_path), "m")
    assert "Isolating token 9 (it attends only to itself) left its sink score unchanged: 0.020 → 0.020 at layer 1" in text
    assert "0.010 → 0.200, monotone within its CI" in text
    amplify["sink_score"][2], amplify["sink_score_ci"][2] = 0.001, [0.0, 0.002]  # a dip below the CI: named
    write_json(run / "amplify" / "intervene.json", amplify)
    text = headline(page_of([tmp_path / "run"], tmp_path, "r2.html"), "m")
    assert "0.010 → 0.200, with one dip at lambda 2 → 5 (0.013 → 0.001)" in text


def test_runs_of_one_model_in_separate_folders_form_one_story(tmp_path):
    """Catches grouping by RUN folder again (`_series` starting a fresh list per folder)."""
    write_probe(tmp_path / "probe", probe_payload("/models/smollm2-hf"))
    write_json(tmp_path / "ablate" / "intervene.json", per_layer_payload("ablate", "/models/smollm2-hf"))
    results = load_results([tmp_path / "probe", tmp_path / "ablate"])
    assert [(s.label, sorted(s.interventions)) for s in results.series] == [("smollm2-hf", ["ablate"])]


def test_dirty_commits_and_differing_seeds_are_flagged(tmp_path):
    dirty = probe_payload("hub/m")
    dirty["provenance"] |= {"git_sha": "abc-dirty", "seed": 0}
    write_probe(tmp_path / "run" / "probe", dirty)
    ablate = per_layer_payload("ablate", "hub/m")
    ablate["provenance"] |= {"git_sha": "abc", "seed": 3}
    write_json(tmp_path / "run" / "ablate" / "intervene.json", ablate)
    flags = re.search(r'<ul class="flags">(.*?)</ul>', page_of([tmp_path / "run"], tmp_path), re.DOTALL).group(1)
    assert "uncommitted changes (commit abc-dirty)" in flags and "different seeds (0, 3)" in flags


def test_episodes_are_told_when_the_chain_has_them(tmp_path):
    """The attribution's episodes (COMMON.md schema), hand-made: the story names the dim, its layer inputs and
    its writers; without them it falls back to today's chain fields."""
    p = probe_payload("hub/m")
    p["chain"]["episodes"] = [{"dim": 507, "start": 3, "end": 28, "peak": 22000.0, "sink_ratio": 9.0,
                               "rise": {"from": 2, "to": 3, "change": 800.0, "explained": 0.9, "writers": [
                                   {"kind": "neuron", "layer": 2, "index": 1229, "expert": None, "write": 700.0,
                                    "share": 0.8}]},
                               "fall": {"from": 28, "to": 29, "change": -20000.0, "explained": 0.9, "erasers": [
                                   {"kind": "mlp", "layer": 28, "index": None, "expert": None, "write": -2e4,
                                    "share": 0.9}]}}]
    write_probe(tmp_path / "run", p)
    html = page_of([tmp_path / "run"], tmp_path)
    text = headline(html, "m")
    assert "1 massive-dim episode: dim 507 from layer input 3" in text
    assert "written by neuron 1229 of layer 2's MLP" in text and "erased by the MLP of layer 28" in text
    assert check_cited_numbers(html) > 0
