"""The verdict sentences of ``intervene isolate`` and ``intervene amplify``, in the words of :mod:`sinkscope.words`
(the report's story and the demo's summary judge by the same rules): no change reads as no change, and a
dose-response names its dips."""

from __future__ import annotations

from .words import NOT_RESOLVED, UNCHANGED, change, dose_shape, fold, resolved


def isolate_verdict(position: int, layer: int, before: float, after: float) -> str:
    """The sentence for isolate's largest gain, in the words of :mod:`sinkscope.words` (no change reads so)."""
    word = change(before, after)
    if word == UNCHANGED:
        return (f"isolating token {position} left its sink score unchanged: {before:.3f} -> {after:.3f} at layer "
                f"{layer}, where the after / before ratio is largest")
    return (f"isolating token {position} {word} its sink score at layer {layer} from {before:.3f} to {after:.3f} "
            f"({fold(before, after)})")


def amplify_verdict(body: dict, position: int) -> str:
    """The dose-response in the words of :mod:`sinkscope.words`: its overall change, then its shape."""
    scores, cis, lambdas = body["sink_score"], body["sink_score_ci"], body["lambdas"]
    head = (f"amplifying token {position}'s variance in layers {','.join(map(str, body['layers']))} "
            f"(lambda {lambdas[0]:g} -> {lambdas[-1]:g})")
    word = change(scores[0], scores[-1], cis[-1])
    if word == UNCHANGED:
        return f"{head} left its sink score at layer {body['observe']} unchanged ({scores[0]:.3f} -> {scores[-1]:.3f})"
    note = "" if resolved(scores[0], cis[-1]) else f"; {NOT_RESOLVED}"
    return (f"{head} {word} its sink score at layer {body['observe']} from {scores[0]:.3f} to {scores[-1]:.3f} "
            f"({fold(scores[0], scores[-1])}{note}), {dose_shape(scores, cis, lambdas, arrow='->')}")
