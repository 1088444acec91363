"""Secondary-sink discovery: every key that acts as a sink, per layer and sequence, pooled by token.

A key j *acts as a sink* in a layer when most of the queries far enough after it give it several
times their uniform share of attention (head mean). The uniform share of query i is 1 / n_i, n_i
the number of keys it sees, so the rule is scale-free: it needs no magnitude that only one model
has, and it adapts to each key's position (key j is seen by T - j causal queries, each with its own
baseline). Occurrences are then pooled by token identity across sequences ("BOS in 100 % of
sequences, '\\n' at its first occurrence in 63 %"), and each pooled class is measured by the attention it
takes: the head-mean attention that the queries seeing it give it, in each layer where it acts as a sink.

The pass is the chunked exact one of :class:`~sinkscope.capture.sink.KeyStatsObserver`: attention
weights come from ``AttentionCall.probs_block`` one query chunk at a time, so memory is O(B*H*chunk*T)
transiently and O(N*L*T) kept.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from ..capture.attention import AttentionCall
from ..capture.sink import check_finite
from ..criteria import Criteria
from ..errors import SinkscopeError

STATISTICS = ("votes", "far", "received", "uniform", "seen")  # SinkKeyObserver's tallies, each (N, L, T)


class SinkKeyObserver:
    """Per sequence, layer and key: far-query votes, far-query count and received attention vs uniform.

    Tallies, each a list over layers of (N, T) tensors concatenated over batches:
      votes: far queries (i >= j + local_span) whose head-mean attention to j is >= ratio / n_i;
      far: the number of those far queries;
      received / uniform: sum over queries i >= j of the head-mean a_ij and of 1 / n_i (their ratio is
      Gu et al.'s importance over its uniform baseline);
      seen: the number of queries i >= j (received / seen is the mean attention j takes).
    Padded batches are fine: only real queries vote, and each row is stored from its first real token,
    padded with zeros to ``max_len`` (default: the first batch's width). ``chunk``: queries per exact pass,
    the caller's --query-chunk.
    """

    def __init__(self, n_layers: int, criteria: Criteria, chunk: int, max_len: int | None = None):
        self.criteria, self.chunk, self.max_len = criteria, chunk, max_len
        self.ratio, self.local_span = criteria.secondary_ratio, criteria.secondary_local_span
        self.stats = {name: [[] for _ in range(n_layers)] for name in STATISTICS}

    def observe(self, call: AttentionCall) -> None:
        check_finite(call)
        B, _, T, S = *call.query.shape[:3], call.key.shape[2]
        counts = call.visible_counts()[:, 0].float()  # (B, T) keys each query sees
        share = 1.0 / counts  # uniform share of each query
        votes = torch.zeros(B, S)
        far = torch.zeros(B, S)
        received = torch.zeros(B, S)
        uniform = torch.zeros(B, S)
        seen_by = torch.zeros(B, S)
        keys = torch.arange(S, device=call.query.device)
        valid = call.batch.valid if call.batch is not None else torch.ones(B, T, dtype=torch.bool)
        for t0 in range(0, T, self.chunk):
            t1 = min(T, t0 + self.chunk)
            probs = call.probs_block(t0, t1).mean(1)  # (B, C, S) head mean
            seen = call.visible_block(t0, t1)[:, 0] & valid[:, t0:t1, None].to(probs.device)  # (B, C, S) real queries
            rows = torch.arange(t0, t1, device=keys.device) + (S - T)
            is_far = seen & (rows[:, None] - keys[None, :] >= self.local_span)  # (B, C, S)
            block_share = share[:, t0:t1, None]  # (B, C, 1)
            votes += ((probs >= self.ratio * block_share) & is_far).sum(1).cpu()
            far += is_far.sum(1).cpu()
            received += probs.sum(1).cpu()
            uniform += (block_share * seen).sum(1).cpu()
            seen_by += seen.sum(1).cpu()
        first = call.batch.first.cpu() if call.batch is not None else torch.zeros(B, dtype=torch.long)
        width = self.max_len = self.max_len or S
        for name, value in zip(STATISTICS, (votes, far, received, uniform, seen_by)):
            aligned = torch.zeros(B, width)
            for b in range(B):  # from each row's first real token (left padding shifts it)
                row = value[b, int(first[b]):][:width]
                aligned[b, :len(row)] = row
            self.stats[name][call.layer].append(aligned)

    @property
    def tally(self) -> SinkKeyObserver:
        return self  # probe reduces every observer's tally; per-sequence rows have nothing to sum

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise SinkscopeError("--secondary-sinks keeps per-sequence rows and runs in one process; "
                                 "drop it under torchrun or run without torchrun")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Each statistic as (N, L, T)."""
        return {name: torch.stack([torch.cat(rows) for rows in layers], 1) for name, layers in self.stats.items()}


def sink_keys(votes: torch.Tensor, far: torch.Tensor, share: float, min_far: int) -> torch.Tensor:
    """(N, L, T) bool: key acts as a sink in that layer (a majority of enough far queries sink on it)."""
    return (far >= min_far) & (votes >= share * far)


@dataclass(frozen=True)
class TokenClass:
    """What the discovered policy keeps: the first token, or the n-th occurrence of a token id."""

    token_id: int | None  # None: the first token of the sequence, whatever it is
    occurrence: int  # 1 for the first occurrence (0 for the first-token class)

    def positions(self, ids: list[int]) -> list[int]:
        if self.token_id is None:
            return [0]
        seen = 0
        for position, token in enumerate(ids[1:], start=1):
            seen += token == self.token_id
            if token == self.token_id and seen == self.occurrence:
                return [position]
        return []


def token_class(ids: list[int], position: int) -> TokenClass:
    if position == 0:
        return TokenClass(None, 0)
    return TokenClass(ids[position], ids[1:position + 1].count(ids[position]))


def discover(sequences: list[list[int]], is_sink: torch.Tensor, ratio: torch.Tensor, attention: torch.Tensor,
             criteria: Criteria, tokenizer=None) -> dict:
    """Pool the per-sequence sink keys by token class, strongest class first.

    is_sink (N, L, T) bool; ratio (N, L, T) received attention over its uniform baseline; attention (N, L, T)
    the mean head-mean attention that the queries seeing a key give it. Returns {"occurrences": [...],
    "classes": [...], "tokens": [...]} ready for stream.json: ``classes`` pools by (token, occurrence),
    ranked by ``attention_mass`` (the attention a class takes in the layers where it acts as a sink, summed
    over those layers, mean over the sequences having it); ``tokens`` pools by token id.
    """
    N, L, T = is_sink.shape
    occurrences = []
    found: dict[TokenClass, list[dict]] = defaultdict(list)
    for n, ids in enumerate(sequences):
        for position in is_sink[n].any(0).nonzero()[:, 0].tolist():
            layers = is_sink[n, :, position].nonzero()[:, 0].tolist()
            taken = attention[n, layers, position].tolist()
            occurrence = {"sequence": n, "position": position, "token_id": ids[position],
                          "token": token_text(tokenizer, ids[position]), "layers": layers,
                          "ratio_to_uniform": float(ratio[n, layers, position].max()),
                          "attention": dict(zip(layers, taken)), "attention_mass": sum(taken)}
            occurrences.append(occurrence)
            found[token_class(ids, position)].append(occurrence)
    classes = [_pooled(cls, hits, sequences, criteria, tokenizer) for cls, hits in found.items()]
    classes.sort(key=lambda c: (-c["attention_mass"], c["occurrence"]))
    return {"occurrences": occurrences, "classes": classes, "tokens": _by_token(sequences, occurrences, tokenizer),
            "n_sequences": N,
            "rule": {"sink_ratio": criteria.secondary_ratio, "query_share": criteria.secondary_query_share,
                     "local_span": criteria.secondary_local_span,
                     "min_far_queries": criteria.secondary_min_far_queries,
                     "pool_share": criteria.secondary_pool_share,
                     "pool_min_support": criteria.secondary_pool_min_support}}


def _pooled(cls: TokenClass, hits: list[dict], sequences: list[list[int]], criteria: Criteria, tokenizer) -> dict:
    """One class's row: where it sinks, how much attention it takes there, and whether it is a candidate."""
    having = sum(1 for ids in sequences if cls.positions(ids))
    share = len(hits) / having  # a class has at most one position per sequence, so hits are sequences
    layers = Counter(layer for hit in hits for layer in hit["layers"])
    by_layer = {layer: sum(hit["attention"].get(layer, 0.0) for hit in hits) / count
                for layer, count in sorted(layers.items())}
    first_ids = sorted({ids[0] for ids in sequences})
    token = "<first token>" if cls.token_id is None else token_text(tokenizer, cls.token_id)
    if cls.token_id is None and tokenizer is not None and len(first_ids) == 1:
        token = token_text(tokenizer, first_ids[0])
    return {"token_id": cls.token_id, "occurrence": cls.occurrence, "token": token,
            "first_token_ids": first_ids if cls.token_id is None else None,
            "sequences_with": having, "sequences_sink": len(hits), "share": share,
            "layers": dict(sorted(layers.items())),
            "median_ratio_to_uniform": float(torch.tensor([h["ratio_to_uniform"] for h in hits]).median()),
            "attention_by_layer": by_layer,
            "attention_mass": sum(h["attention_mass"] for h in hits) / having,
            "candidate": share >= criteria.secondary_pool_share
            and having >= criteria.secondary_pool_min_support * len(sequences)}


def _by_token(sequences: list[list[int]], occurrences: list[dict], tokenizer) -> list[dict]:
    """Per token id (position 0 excluded): how many of its occurrences and sequences act as sinks."""
    hits = Counter(o["token_id"] for o in occurrences if o["position"] > 0)
    sequences_hit = defaultdict(set)
    for o in occurrences:
        if o["position"] > 0:
            sequences_hit[o["token_id"]].add(o["sequence"])
    rows = []
    for token_id, n_sink in hits.most_common():
        total = sum(ids[1:].count(token_id) for ids in sequences)
        having = sum(1 for ids in sequences if token_id in ids[1:])
        rows.append({"token_id": token_id, "token": token_text(tokenizer, token_id), "occurrences": total,
                     "occurrences_sink": n_sink, "sequences_with": having,
                     "sequences_sink": len(sequences_hit[token_id])})
    return rows


def discover_from_observer(observer: SinkKeyObserver, sequences: list[list[int]], tokenizer=None) -> dict:
    """:func:`discover` on what a :class:`SinkKeyObserver` saw of ``sequences`` (in the order it saw them)."""
    stats, c = observer.tensors(), observer.criteria
    is_sink = sink_keys(stats["votes"], stats["far"], c.secondary_query_share, c.secondary_min_far_queries)
    return discover(sequences, is_sink, stats["received"] / stats["uniform"].clamp(min=1e-30),
                    stats["received"] / stats["seen"].clamp(min=1), c, tokenizer)


FIRST_TOKEN = TokenClass(None, 0)


def candidate_classes(discovery: dict) -> list[TokenClass]:
    """The classes the discovered policy may keep, strongest first (the order of ``discovery["classes"]``).

    The first token is always one: it is StreamingLLM's choice, so the discovered policy can fall back on it
    (it still enters only if it pays). Where the rule does not find it a sink, it is tried first.
    """
    ranked = [TokenClass(c["token_id"], c["occurrence"]) for c in discovery["classes"] if c["candidate"]]
    return ranked if FIRST_TOKEN in ranked else [FIRST_TOKEN, *ranked]


def kept_positions(sequences: list[list[int]], classes: list[TokenClass], seq_len: int) -> torch.Tensor:
    """(N, seq_len) bool: the keys the discovered policy keeps in each sequence (decided from tokens only)."""
    kept = torch.zeros(len(sequences), seq_len, dtype=torch.bool)
    for n, ids in enumerate(sequences):
        for cls in classes:
            for position in cls.positions(ids):
                kept[n, position] = True
    return kept


def token_text(tokenizer, token_id: int) -> str:
    """A readable token string (repr-escaped, so '\\n' shows as such); the id when there is no tokenizer."""
    if tokenizer is None:
        return f"#{token_id}"
    return repr(tokenizer.decode([token_id]))[1:-1]


def class_label(c: dict) -> str:
    """"'the' (occurrence 1)" or "'<|im_start|>' (first token)" for one row of ``discovery["classes"]``."""
    return f"'{c['token']}' ({'first token' if c['token_id'] is None else 'occurrence ' + str(c['occurrence'])})"


def layer_span(layers) -> str:
    """"2-10" for consecutive layers, "1, 3, 5" for scattered ones, "2-10, 12-29" for runs with gaps."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


def describe(discovery: dict, limit: int = 5) -> list[str]:
    """One line per pooled class, strongest first: where it acts as a sink and how much attention it takes."""
    lines = []
    for c in discovery["classes"][:limit]:
        low, high = (f"{100 * f(c['attention_by_layer'].values()):.0f}" for f in (min, max))
        lines.append(f"{class_label(c)} acts as a sink in {100 * c['share']:.0f} % of the {c['sequences_with']} "
                     f"sequences that have it; layers {layer_span(c['layers'])}, taking "
                     f"{low if low == high else low + '-' + high} % of the attention there "
                     f"(mass {c['attention_mass']:.2f}){'; candidate' if c['candidate'] else ''}")
    return lines
