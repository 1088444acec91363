"""Which discovered sinks the discovered policy keeps: only those that pay for their slot on calibration text.

Every kept sink costs the recent window one slot, so acting as a sink is not enough: on SmolLM2 the
first token, three occurrences of ' the' and one of '.' all act as sinks, and keeping all five
shrank the window from 124 to 24 tokens and nearly doubled perplexity. So the candidates (the pooled
classes of :mod:`sinkscope.stream.discover`) are tried strongest first, by the attention they take,
starting from the plain window: a class enters only if keeping it lowers the perplexity of the
calibration documents below that of the classes kept so far. The ``slots`` strongest candidates are
tried (at most ``slots`` can enter, and a weaker class would only be reached where a stronger one
failed; each trial costs one pass over the calibration documents).
The calibration documents are disjoint from the evaluated ones, so the evaluation measures the
choice instead of fitting it.
"""

from __future__ import annotations

from collections.abc import Callable

from .discover import TokenClass


def choose_classes(candidates: list[TokenClass], perplexity: Callable[[list[TokenClass]], float],
                   slots: int) -> tuple[list[TokenClass], list[dict]]:
    """Greedy forward selection over ``candidates`` (strongest first) under at most ``slots`` kept classes.

    ``perplexity(classes)`` is the calibration perplexity of the policy keeping ``classes``. Returns the
    kept classes and one trial per class tried: {token_id, occurrence, perplexity_without, perplexity_with,
    entered}.

    >>> first, the = TokenClass(None, 0), TokenClass(278, 1)
    >>> table = {(): 22.7, (first,): 12.6, (first, the): 12.7}
    >>> kept, trials = choose_classes([first, the], lambda classes: table[tuple(classes)], slots=4)
    >>> kept == [first], [t["entered"] for t in trials]
    (True, [True, False])
    """
    kept: list[TokenClass] = []
    best = perplexity(kept)
    trials = []
    for cls in candidates[:slots]:
        trial = perplexity([*kept, cls])
        entered = trial < best
        trials.append({"token_id": cls.token_id, "occurrence": cls.occurrence, "perplexity_without": best,
                       "perplexity_with": trial, "entered": entered})
        if entered:
            kept, best = [*kept, cls], trial
    return kept, trials
