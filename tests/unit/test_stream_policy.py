import pytest
import torch

from sinkscope.criteria import Criteria
from sinkscope.errors import SinkscopeError
from sinkscope.stream.discover import TokenClass, discover, kept_positions, sink_keys, token_class
from sinkscope.stream.policy import first_tokens, policy_mask, window_size


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
    found = discover(sequences, is_sink, torch.full((4, 2, 6), 5.0), Criteria(secondary_pool_min_support=0.5))
    first, newline = found["classes"][0], found["classes"][1]
    assert (first["token_id"], first["share"], first["kept"]) == (None, 1.0, True)
    assert (newline["token_id"], newline["occurrence"], newline["share"], newline["kept"]) == (9, 1, 0.75, True)
    assert found["classes"][2]["kept"] is False  # present in 1 of 4 sequences: below a support share of 0.5
    kept = kept_positions(sequences, [TokenClass(None, 0), TokenClass(9, 1)], 6)
    assert kept.nonzero().tolist() == [[0, 0], [0, 2], [1, 0], [1, 1], [2, 0], [2, 3], [3, 0], [3, 1]]
    assert found["tokens"][0] == {"token_id": 9, "token": "#9", "occurrences": 5, "occurrences_sink": 4,
                                  "sequences_with": 4, "sequences_sink": 3}
