"""Episodes, writers and the chain's consistency on hand-built trajectories whose answer is known."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sinkscope.chain.episodes import episodes_of, fewest_making_up, onset_episode, runs, super_neurons, tracking
from sinkscope.chain.verdict import chain_consistent


def neuron(layer, index):
    return {"kind": "neuron", "layer": layer, "index": index, "expert": None}


def attention(layer):
    return {"kind": "attention", "layer": layer, "index": None, "expert": None}


def fake_attribution(trajectory: list[float], writes: dict[int, list[tuple[dict, float]]]):
    """Dim 0 follows ``trajectory`` over layer inputs; layer l's parts are ``writes[l]`` plus a remainder
    (attention of that layer absorbs what the listed parts leave), so the parts add up exactly."""
    mean = torch.tensor(trajectory, dtype=torch.float64)[:, None]

    def parts(layer, dim):
        listed = writes.get(layer, [])
        change = float(mean[layer + 1, 0] - mean[layer, 0])
        return listed + [(attention(layer), change - sum(w for _, w in listed))]

    return SimpleNamespace(mean=mean, parts=parts)


def test_runs_are_maximal():
    assert runs([3, 4, 5, 9, 12, 13]) == [(3, 5), (9, 9), (12, 13)]
    assert runs([]) == []


def test_fewest_writers_reach_the_share_and_no_more():
    parts = [(neuron(1, 0), 5.0), (neuron(1, 1), 3.0), (neuron(1, 2), 2.0), (attention(1), -1.0)]
    chosen, made = fewest_making_up(parts, 9.0, 0.8)  # 5 + 3 = 8 >= 7.2: two suffice
    assert [c["index"] for c in chosen] == [0, 1] and made == pytest.approx(8 / 9)
    chosen, _ = fewest_making_up(parts, 9.0, 8.01 / 9)  # just past 8: the third is needed
    assert [c["index"] for c in chosen] == [0, 1, 2]
    chosen, made = fewest_making_up(parts, 20.0, 0.8)  # a part writing against the change never counts
    assert len(chosen) == 3 and made == pytest.approx(0.5)


def smollm2_like():
    # inputs: 0   1    2    3    4    5   6      7      8
    trajectory = [0, 15, 200, 760, 730, 40, 23000, 22600, 10]
    writes = {1: [(neuron(1, 83), 100.0)], 2: [(neuron(2, 90), 370.0), (neuron(2, 430), 180.0)],
              4: [(neuron(4, 200), -650.0)], 5: [(neuron(5, 1229), 16800.0), (neuron(5, 1487), 6000.0)],
              7: [(neuron(7, 678), -20000.0)]}
    return fake_attribution(trajectory, writes), [3, 4, 6, 7]


def test_two_episodes_their_writers_and_erasers():
    att, dominant = smollm2_like()
    first, second = episodes_of(att, 0, dominant, 0.8)
    assert (first["start"], first["end"], first["peak_input"]) == (3, 4, 3)
    assert (first["rise"]["from"], first["rise"]["to"]) == (0, 3) and first["rise"]["change"] == 760
    assert [(w["layer"], w["index"]) for w in first["rise"]["writers"]] == [(2, 90), (2, 430), (1, 83)]
    assert first["fall"]["from"] == 3 and first["fall"]["to"] == 5  # to the low before the dim returns
    assert [(w["layer"], w["index"]) for w in first["fall"]["erasers"]] == [(4, 200)]  # 650 of 720: enough
    assert first["fall"]["erasers"][0]["write"] == -650.0
    assert (second["rise"]["from"], second["rise"]["to"]) == (5, 6)
    assert [(w["layer"], w["index"]) for w in second["rise"]["writers"]] == [(5, 1229), (5, 1487)]
    assert second["fall"]["to"] == 8 and second["fall"]["erasers"][0]["index"] == 678
    assert [(n["layer"], n["index"], n["episode"]) for n in super_neurons([first, second])] == [
        (2, 90, 0), (2, 430, 0), (1, 83, 0), (5, 1229, 1), (5, 1487, 1)]


def test_a_negative_dim_rises_downwards():
    att = fake_attribution([0.0, -5.0, -400.0, -390.0], {1: [(neuron(1, 7), -395.0)]})
    (e,) = episodes_of(att, 0, [2, 3], 0.8)
    assert e["peak"] == -400.0 and e["rise"]["change"] == -400.0
    assert e["rise"]["writers"][0]["index"] == 7 and e["rise"]["writers"][0]["write"] == -395.0
    assert e["fall"] is None  # it lasts to the final input


def test_a_dim_dominant_at_the_embedding_is_the_embedding_s():
    att = fake_attribution([50.0, 50.0, 0.0], {})
    (e,) = episodes_of(att, 0, [0, 1], 0.8)
    assert e["rise"]["writers"] == [{"kind": "embedding", "layer": None, "index": None, "expert": None,
                                     "write": 50.0, "share": 1.0}]
    assert super_neurons([e]) == []


@pytest.mark.parametrize(("onset", "consistent"), [(2, False), (3, True), (4, True), (5, False), (None, False)])
def test_consistent_only_when_an_episode_holds_the_onset_input(onset, consistent):
    episodes = [{"start": 3, "end": 4, "peak": 760.0}]
    assert chain_consistent({"onset_layer": onset, "episodes": episodes}) is consistent
    assert (onset_episode(episodes, onset) == 0) is consistent


def test_tracking_against_a_hand_count():
    episodes = [{"start": 3, "end": 4}, {"start": 6, "end": 8}]  # input 8 is the final norm's: no layer reads it
    ratio = [1.0, 1.0, 2.0, 5.0, 7.0, 1.5, 9.0, 9.0]
    track = tracking(episodes, ratio)
    assert track["layers_with"] == [3, 4, 6, 7] and track["layers_without"] == [0, 1, 2, 5]
    assert track["sink_ratio_with_episode"] == pytest.approx((5 + 7 + 9 + 9) / 4)
    assert track["sink_ratio_without_episode"] == pytest.approx((1 + 1 + 2 + 1.5) / 4)
