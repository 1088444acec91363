"""Plain verdict words at their boundaries (issue 24, "Words"): no change, a monotone rise, a rise with one dip
beyond its CI, a fall; the same judgement in intervene.json's verdicts, the report's story and the demo's
summary. Expected sentences are written out by hand."""

from __future__ import annotations

import pytest

from sinkscope.demo_summary import ModelResults, model_summary
from sinkscope.intervene_words import amplify_verdict, isolate_verdict
from sinkscope.words import LOWERED, RAISED, UNCHANGED, change, monotone_within_ci, resolved

from test_report import amplify_payload, per_layer_payload, probe_payload

LAMBDAS = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0]
RISE = [0.013, 0.020, 0.060, 0.120, 0.230, 0.279]  # 21.5x


def _amplify(scores, cis=None, layers=(0, 1, 2), observe=3):
    cis = cis or [[s - 0.004, s + 0.004] for s in scores]
    return {"sink_score": scores, "sink_score_ci": cis, "lambdas": LAMBDAS[:len(scores)], "layers": list(layers),
            "observe": observe}


@pytest.mark.parametrize("before, after, ci, word", [
    (0.020, 0.020, None, UNCHANGED),  # issue 24: "raised its sink score 1.0x (0.020 -> 0.020)"
    (0.020, 0.0299, None, UNCHANGED),  # under 0.01 of the attention: no change, though 50 % up
    (0.10, 0.119, None, UNCHANGED),  # 19 % up: within NO_CHANGE_REL
    (0.10, 0.125, None, RAISED),  # 0.025 and 25 %: a change
    (0.004, 0.352, None, RAISED),
    (0.30, 0.20, None, LOWERED),
    (0.30, 0.25, [0.10, 0.40], UNCHANGED),  # inside the bands, and the CI of the value after holds the value before
    (34.92, 122.76, [20.0, 700.0], RAISED),  # 3.5x on 4 sequences: a change, not resolved, never "unchanged"
    (0.30, 0.29, [0.289, 0.291], LOWERED),  # a tight CI: a small move is a change
])
def test_change_reads_no_change_inside_its_band_or_ci(before, after, ci, word):
    assert change(before, after, ci) == word


def test_isolate_no_change_is_called_no_change_with_its_numbers():
    assert isolate_verdict(9, 25, 0.020, 0.0201) == ("isolating token 9 left its sink score unchanged: 0.020 -> "
                                                    "0.020 at layer 25, where the after / before ratio is largest")
    assert isolate_verdict(9, 26, 0.004, 0.352) == ("isolating token 9 raised its sink score at layer 26 from 0.004 "
                                                    "to 0.352 (88.0x)")


def test_a_clear_rise_with_a_dip_inside_its_ci_is_monotone():
    scores = RISE[:1] + [0.013, 0.010] + RISE[3:]  # 0.013 -> 0.010: one small dip, inside the CIs
    text = amplify_verdict(_amplify(scores), 9)
    assert text == ("amplifying token 9's variance in layers 0,1,2 (lambda 1 -> 30) raised its sink score at layer 3 "
                    "from 0.013 to 0.279 (21.5x), monotone within its CI")


def test_a_dip_beyond_its_ci_is_named_not_hidden():
    scores = [0.013, 0.060, 0.020, 0.120, 0.230, 0.279]
    cis = [[s - 0.004, s + 0.004] for s in scores]
    assert not monotone_within_ci(scores, cis)
    assert amplify_verdict(_amplify(scores, cis), 9).endswith(
        "raised its sink score at layer 3 from 0.013 to 0.279 (21.5x), with one dip at lambda 2 -> 5 (0.060 -> 0.020)")


def test_a_fall_is_lowered_and_its_rebounds_beyond_the_ci_are_named():
    scores = [0.300, 0.200, 0.250, 0.100, 0.050, 0.060]
    assert amplify_verdict(_amplify(scores), 9).endswith(
        "lowered its sink score at layer 3 from 0.300 to 0.060 (0.2x), with 2 rises at lambda 2 -> 5 (0.200 -> "
        "0.250); lambda 20 -> 30 (0.050 -> 0.060)")
    # SmolLM2's demo read at its onset layer 3: a hump whose CIs are wide enough to hold a steady fall
    scores = [0.028, 0.037, 0.089, 0.041, 0.007, 0.008]
    cis = [[0.006, 0.049], [0.010, 0.064], [0.029, 0.149], [-0.005, 0.087], [0.001, 0.013], [-0.002, 0.018]]
    assert amplify_verdict(_amplify(scores, cis), 9).endswith(
        "lowered its sink score at layer 3 from 0.028 to 0.008 (0.3x), monotone within its CI")


def test_a_large_move_inside_its_ci_is_a_change_said_to_be_unresolved():
    scores = [0.017, 0.030, 0.070]  # 4 sequences: the CI of the last holds the first
    cis = [[0.0, 0.04], [0.0, 0.07], [0.0, 0.15]]
    assert not resolved(0.017, cis[-1]) and resolved(0.017, [0.05, 0.09])
    assert amplify_verdict(_amplify(scores, cis), 9).endswith(
        "raised its sink score at layer 3 from 0.017 to 0.070 (4.1x; not resolved: the value before lies within "
        "the 95 % CI of the value after), monotone within its CI")


def test_a_flat_dose_response_is_no_change():
    scores = [0.012, 0.012, 0.013, 0.012, 0.013, 0.013]
    assert amplify_verdict(_amplify(scores), 9).endswith("left its sink score at layer 3 unchanged (0.012 -> 0.013)")


def test_the_demo_summary_tells_the_report_s_sentences_in_plain_text():
    """The summary's isolate and amplify lines are the report's headline sentences without markup: no change
    reads as no change, a dip inside the CI leaves the rise monotone."""
    isolate = per_layer_payload("isolate", "hub/m")
    for row in isolate["per_layer"]:
        row["sink_score_before"], row["sink_score_after"] = 0.020, 0.0201
    amplify = amplify_payload("hub/m") | {"sink_score": [0.01, 0.013, 0.010, 0.2], "gain": 20.0,
                                          "sink_score_ci": [[0.0, 0.02], [0.005, 0.02], [0.004, 0.016], [0.1, 0.3]],
                                          "lambdas": [1.0, 2.0, 5.0, 20.0], "control_sink_score": None}
    lines = model_summary(ModelResults("m", probe_payload("hub/m"), probe_payload("hub/m", random_tokens=True),
                                       isolate=isolate, amplify=amplify))
    by_what = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines}
    assert by_what["isolate"].startswith("Isolating token 9 (it attends only to itself) left its sink score unchanged: "
                                         "0.020 → 0.020 at layer 1, read where the change is largest, on ")
    assert by_what["amplify"].startswith("Amplifying token 9's attention-output variance in layers 0, 1 (lambda 1 → 20) "
                                         "raised its sink score at layer 2 (the first layer after the amplified ones): "
                                         "0.010 → 0.200 (20.0x), monotone within its CI, on ")
    assert by_what["ablate (--neurons auto)"] == "not run" and by_what["stream"] == "not run"
    assert "<span" not in "".join(lines) and "&#" not in "".join(lines)  # no markup left
