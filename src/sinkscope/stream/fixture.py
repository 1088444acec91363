"""A planted model with a secondary sink: a second token id flagged like BOS, so it sinks wherever it occurs.

Built on :func:`sinkscope.fixtures.planted_sink_model`: that model's super neuron fires on the BOS
flag dim, writes the massive dim, and every later head locks its queries onto keys holding that dim.
Giving token ``secondary_id`` the same flag makes each of its occurrences a sink as strong as BOS,
so discovery must report exactly position 0 and the occurrences of ``secondary_id``.

>>> model, answer = planted_secondary_sink_model(secondary_id=7)
>>> ids = secondary_sink_inputs(answer, 7, n=2, seq_len=32, at=(10,))
>>> ids[0][0] == answer.bos_token_id, ids[0][10], ids[0].count(7)
(True, 7, 1)
"""

from __future__ import annotations

import torch

from ..fixtures import FLAG_VALUE, PlantedAnswer, planted_sink_model


def planted_secondary_sink_model(secondary_id: int = 7, **kwargs):
    """(model, PlantedAnswer) of :func:`planted_sink_model` with ``secondary_id`` flagged as a second sink."""
    model, answer = planted_sink_model(**kwargs)
    with torch.no_grad():
        model.model.embed_tokens.weight[secondary_id, answer.flag_dim] = FLAG_VALUE
    return model, answer


def secondary_sink_inputs(answer: PlantedAnswer, secondary_id: int, n: int, seq_len: int, at: tuple[int, ...],
                          seed: int = 0) -> list[list[int]]:
    """BOS, then random ids that are never BOS, pad or ``secondary_id``, with ``secondary_id`` placed at ``at``."""
    rows = []
    for ids in answer.inputs(n, seq_len, seed):
        ids = [t if t != secondary_id else secondary_id + 1 for t in ids]
        for position in at:
            ids[position] = secondary_id
        rows.append(ids)
    return rows
