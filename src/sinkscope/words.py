"""Plain verdict words, one rule everywhere: intervene.json's verdicts, the report's story and the demo's summary
judge a change and a dose-response with these functions, so that the three never disagree.

- A move under ``NO_CHANGE_ABS`` of the attention, or under ``NO_CHANGE_REL`` of the value before, is no change,
  unless the file records a CI of the value after that excludes the value before. A larger move whose CI
  holds the value before is a change that is said to be not resolved, never called "unchanged".
- A dose-response is monotone when no step goes against its overall direction by more than the CIs allow;
  where one does, the steps against the direction are named (a dip in a rise), never hidden behind "not monotone".
"""

from __future__ import annotations

NO_CHANGE_ABS = 0.01  # sink scores are shares of attention: a move under 1 % of the attention is no change
NO_CHANGE_REL = 0.2  # ... nor is one under 20 % of the score, where no CI is recorded (isolate's single pass)
UNCHANGED, RAISED, LOWERED = "left unchanged", "raised", "lowered"


def change(before: float, after: float, ci: tuple | list | None = None) -> str:
    """RAISED, LOWERED or UNCHANGED. A move outside ``ci`` (the interval of ``after``) is a change, however small;
    otherwise a move inside the NO_CHANGE bands is no change. A larger move whose CI still holds the value
    before is a change that is not resolved: :func:`resolved` says so, and the sentence must too.

    >>> change(0.020, 0.0201), change(0.004, 0.352), change(0.5, 0.45, [0.4, 0.51]), change(35, 123, [20, 400])
    ('left unchanged', 'raised', 'left unchanged', 'raised')
    """
    if resolved(before, ci) or (abs(after - before) >= NO_CHANGE_ABS and
                                abs(after - before) >= NO_CHANGE_REL * abs(before)):
        if after == before:
            return UNCHANGED
        return RAISED if after > before else LOWERED
    return UNCHANGED


def resolved(before: float, ci: tuple | list | None) -> bool:
    """Whether a move is resolved: the value before lies outside the CI of the value after. Without a CI only
    the NO_CHANGE bands judge (see :func:`change`), so this is False.

    >>> resolved(35, [20, 400]), resolved(0.5, [0.1, 0.2]), resolved(0.5, None)
    (False, True, False)
    """
    return ci is not None and ci[0] is not None and ci[1] is not None and not ci[0] <= before <= ci[1]


NOT_RESOLVED = "not resolved: the value before lies within the 95 % CI of the value after"


def monotone_within_ci(scores: list[float], cis: list | None, rising: bool = True) -> bool:
    """No step against the direction larger than the CIs allow: for a rise, each later score's upper bound
    reaches every earlier score's lower bound (without CIs, the scores themselves must not fall).

    >>> monotone_within_ci([0.01, 0.013, 0.010, 0.2], [[0, 0.02], [0.005, 0.02], [0.004, 0.016], [0.1, 0.3]])
    True
    """
    cis = cis or [[s, s] for s in scores]
    if not rising:
        scores, cis = [-s for s in scores], [[-hi, -lo] for lo, hi in cis]
    return all(cis[j][1] >= cis[i][0] for i in range(len(scores)) for j in range(i + 1, len(scores)))


def against(scores: list[float], rising: bool = True) -> list[int]:
    """Steps i -> i + 1 that go against the overall direction (the dips of a rise, the rebounds of a fall)."""
    return [i for i in range(len(scores) - 1) if (scores[i + 1] < scores[i]) == rising and scores[i + 1] != scores[i]]


def fold(before: float, after: float) -> str:
    """The value after over the value before, '21.5x' (a rise) or '0.3x' (a fall), as the report cites ``gain``."""
    return f"{after / before:.1f}x" if before else "from zero"


def dose_shape(scores: list[float], cis: list | None, lambdas: list[float], number=None, arrow: str = "→") -> str:
    """How a dose-response runs, after its overall change: 'monotone within its CI', or its steps against
    the direction by name, 'with one dip at lambda 2 → 5 (0.013 → 0.010)'. ``number(i)`` renders score i
    (default '.3f'; the report cites it from its field).

    >>> dose_shape([0.01, 0.013, 0.001, 0.2], [[0, 0.02], [0.005, 0.02], [0, 0.002], [0.1, 0.3]], [1, 2, 5, 20])
    'with one dip at lambda 2 → 5 (0.013 → 0.001)'
    """
    number = number or (lambda i: f"{scores[i]:.3f}")
    rising = scores[-1] >= scores[0]
    if monotone_within_ci(scores, cis, rising):
        return "monotone within its CI" if cis else "monotone"
    steps = against(scores, rising)
    word = "dip" if rising else "rise"
    count = "one" if len(steps) == 1 else str(len(steps))
    where = "; ".join(f"lambda {lambdas[i]:g} {arrow} {lambdas[i + 1]:g} ({number(i)} {arrow} {number(i + 1)})"
                      for i in steps)
    return f"with {count} {word}{'s' if len(steps) != 1 else ''} at {where}"
