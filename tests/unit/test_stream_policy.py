import pytest
import torch

from sinkscope.criteria import Criteria
from sinkscope.errors import SinkscopeError
from sinkscope.stream.discover import TokenClass, candidate_classes, discover, kept_positions, sink_keys, token_class
from sinkscope.stream.policy import first_tokens, kept_index, policy_mask, window_size
from sinkscope.stream.select import choose_classes


def brute_force_mask(kept_rows, T, budget):
    masks = []
    for kept in kept_rows:
        window = budget - len(kept)
        masks.append([[j <= i and (j in kept or i - j < window) for j in range(T)] for i in range(T)])
    return torch.tensor(masks)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_policy_mask_is_the_issue_rule(k):
    T, budget = 20, 8
    mask = policy_mask(first_tokens(2, T, k), budget)
    assert torch.equal(mask, brute_force_mask([set(range(k))] * 2, T, budget))
    assert int(mask.sum(-1).max()) == budget  # no query sees more than the budget


def test_policy_mask_per_sequence_kept_sets():
    T, budget = 24, 6
    kept = torch.zeros(2, T, dtype=torch.bool)
    kept[0, [0, 9]] = True
    kept[1, [0]] = True
    assert torch.equal(policy_mask(kept, budget), brute_force_mask([{0, 9}, {0}], T, budget))


def test_budget_must_leave_a_window():
    with pytest.raises(SinkscopeError, match="--budget 4 leaves no room"):
        window_size(4, 4)


def test_token_classes_count_occurrences_after_the_first_token():
    ids = [1, 5, 10, 5, 10, 10]
    assert token_class(ids, 0) == TokenClass(None, 0)
    assert token_class(ids, 4) == TokenClass(10, 2)
    assert TokenClass(10, 3).positions(ids) == [5]
    assert TokenClass(5, 3).positions(ids) == []


def test_sink_keys_need_a_majority_of_enough_far_queries():
    votes = torch.tensor([[[9.0, 4.0, 3.0, 7.0]]])
    far = torch.tensor([[[10.0, 8.0, 8.0, 7.0]]])
    assert sink_keys(votes, far, share=0.5, min_far=8).tolist() == [[[True, True, False, False]]]


def test_discover_pools_by_token_and_occurrence():
    # 4 sequences; BOS (id 1) sinks everywhere, the first '\n' (id 9) sinks in 3 of the 4 that have it
    sequences = [[1, 4, 9, 5, 9, 6], [1, 9, 4, 4, 5, 6], [1, 4, 5, 9, 6, 7], [1, 9, 5, 6, 7, 8]]
    is_sink = torch.zeros(4, 2, 6, dtype=torch.bool)
    is_sink[:, 1, 0] = True
    is_sink[0, 1, 2] = is_sink[1, 0, 1] = is_sink[2, 1, 3] = True
    is_sink[0, 1, 4] = True  # second '\n' of sequence 0: its own class, one sequence of one
    attention = torch.rand(4, 2, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    attention[:, 1, 0] = 0.6
    found = discover(sequences, is_sink, torch.full((4, 2, 6), 5.0), attention,
                     Criteria(secondary_pool_min_support=0.5))
    by_class = {(c["token_id"], c["occurrence"]): c for c in found["classes"]}
    first, newline = by_class[None, 0], by_class[9, 1]
    assert (first["share"], first["candidate"]) == (1.0, True)
    assert (newline["share"], newline["candidate"]) == (0.75, True)
    assert by_class[9, 2]["candidate"] is False  # present in 1 of 4 sequences: below a support share of 0.5
    # the attention a class takes, by hand: the newline sinks in layer 0 of sequence 1, layer 1 of sequences 0 and 2
    hand = {0: float(attention[1, 0, 1]), 1: (float(attention[0, 1, 2]) + float(attention[2, 1, 3])) / 2}
    assert newline["attention_by_layer"] == pytest.approx(hand)
    mass = float(attention[1, 0, 1] + attention[0, 1, 2] + attention[2, 1, 3]) / 4  # 4 sequences have it
    assert newline["attention_mass"] == pytest.approx(mass)
    assert first["attention_mass"] == pytest.approx(0.6)
    kept = kept_positions(sequences, [TokenClass(None, 0), TokenClass(9, 1)], 6)
    assert kept.nonzero().tolist() == [[0, 0], [0, 2], [1, 0], [1, 1], [2, 0], [2, 3], [3, 0], [3, 1]]
    assert found["tokens"][0] == {"token_id": 9, "token": "#9", "occurrences": 5, "occurrences_sink": 4,
                                  "sequences_with": 4, "sequences_sink": 3}


def test_classes_are_ranked_by_the_attention_they_take_not_by_how_often_they_sink():
    sequences = [[1, 9, 7, 5], [1, 9, 7, 5]]
    is_sink = torch.zeros(2, 3, 4, dtype=torch.bool)
    is_sink[:, :, 1] = True  # id 9 sinks in all three layers, weakly
    is_sink[:, 0, 2] = True  # id 7 sinks in one layer, strongly
    attention = torch.zeros(2, 3, 4)
    attention[:, :, 1] = 0.1
    attention[:, 0, 2] = 0.5
    found = discover(sequences, is_sink, torch.ones(2, 3, 4), attention, Criteria())
    assert [c["token_id"] for c in found["classes"]] == [7, 9]  # 0.5 over one layer beats 3 x 0.1
    # the first token is tried first where the rule finds it no sink (StreamingLLM's fallback), else by rank
    assert candidate_classes(found) == [TokenClass(None, 0), TokenClass(7, 1), TokenClass(9, 1)]
    is_sink[:, 0, 0], attention[:, 0, 0] = True, 0.2
    found = discover(sequences, is_sink, torch.ones(2, 3, 4), attention, Criteria())
    assert candidate_classes(found) == [TokenClass(7, 1), TokenClass(9, 1), TokenClass(None, 0)]


FIRST, THE, DOT = TokenClass(None, 0), TokenClass(278, 1), TokenClass(30, 1)


def by_table(table):
    return lambda classes: table[frozenset(classes)]


@pytest.mark.parametrize("with_the,enters", [(12.0 - 1e-6, True), (12.0, False), (12.0 + 1e-6, False)])
def test_a_class_enters_only_if_it_lowers_calibration_perplexity(with_the, enters):
    table = {frozenset(): 20.0, frozenset({FIRST}): 12.0, frozenset({FIRST, THE}): with_the}
    kept, trials = choose_classes([FIRST, THE], by_table(table), slots=4)
    assert kept == ([FIRST, THE] if enters else [FIRST])
    assert [(t["perplexity_without"], t["perplexity_with"], t["entered"]) for t in trials] == \
        [(20.0, 12.0, True), (12.0, with_the, enters)]


def test_the_first_token_must_pay_too_and_a_refused_class_does_not_block_a_later_one():
    # keeping the first token costs more than its slot (an organism past its training length); '.' pays
    table = {frozenset(): 14.7, frozenset({FIRST}): 15.3, frozenset({DOT}): 14.5}
    kept, trials = choose_classes([FIRST, DOT], by_table(table), slots=4)
    assert kept == [DOT]
    assert [t["entered"] for t in trials] == [False, True]


def test_selection_tries_the_strongest_candidates_up_to_the_slots():
    tried = []

    def perplexity(classes):
        tried.append(tuple(classes))
        return 10.0 - len(classes)  # every class pays

    kept, trials = choose_classes([FIRST, THE, DOT], perplexity, slots=2)
    assert kept == [FIRST, THE] and len(trials) == 2
    assert tried == [(), (FIRST,), (FIRST, THE)]


def test_kept_index_lists_each_sequence_in_stream_order():
    kept = torch.zeros(3, 8, dtype=torch.bool)
    kept[0, [5, 1]] = True
    kept[2, 7] = True
    assert kept_index(kept).tolist() == [[1, 5], [-1, -1], [7, -1]]


def discovered_row(trials):
    kept = [t["class"] for t in trials if t["entered"]]
    return {"name": "discovered", "positions": "cache", "classes": kept, "perplexity": 12.56,
            "calibration": [{"perplexity_without": 0.0, "perplexity_with": 0.0, **t} for t in trials]}


def test_summary_says_when_nothing_beyond_the_first_token_pays_off():
    from sinkscope.stream.run import summary

    first = {"class": "'<|im_start|>' (first token)", "token_id": None, "entered": True}
    the = {"class": "' the' (occurrence 1)", "token_id": 278, "entered": False}
    dependence = [{"positions": "cache", "best_first_k": "first-1", "perplexity_window": 22.72,
                   "perplexity_best_first_k": 12.56, "window_over_best_first_k": 1.809,
                   "window_over_best_first_k_ci": [1.6, 2.0], "discovered_over_best_first_k": 1.0,
                   "discovered_over_best_first_k_ci": [1.0, 1.0], "discovered_sink_eviction_ratio": 1.809}]
    lines = summary(dependence, [discovered_row([first, the])], None)
    assert lines[0].startswith("cache positions: evicting the first tokens") and "1.81x [1.60, 2.00]" in lines[0]
    assert "keeps '<|im_start|>' (first token); nothing beyond the first token lowered" in lines[1]
    assert "' the' (occurrence 1)" in lines[1]
    both = summary(dependence, [discovered_row([first, {**the, "entered": True}])], None)
    assert "nothing beyond" not in both[1]
    none = summary([], [discovered_row([{**first, "entered": False}])], None)
    assert "keeps nothing (the plain window)" in none[0]
    split = summary(dependence, [discovered_row([first, the])], {"n_sequences": 4, "classes": []}, "documents")
    assert split[-1] == ("discovered policy chosen on 4 calibration documents, windows of documents no evaluated "
                         "window comes from")


def test_layer_spans_read_as_runs():
    from sinkscope.stream.discover import layer_span

    assert layer_span(range(2, 11)) == "2-10"
    assert layer_span([5, 1, 3]) == "1, 3, 5"
    assert layer_span([*range(2, 11), *range(12, 30)]) == "2-10, 12-29"
    assert layer_span([3, 4, 9]) == "3, 4, 9"
