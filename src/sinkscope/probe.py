"""``sinkscope probe``: where does the sink form, and how strong is it?

Runs the model over the data once, with the attention routed through sinkscope's capture, and
reduces the streamed tallies into a :class:`ProbeResult` (the content of ``probe.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import blocks, head_counts, mlp_weights
from .adapters.coverage import blocks_with
from .capture.activations import DownProjSpikeObserver, LayerMagnitudeObserver, SharedMedians
from .capture.hidden import HiddenObserver
from .capture.learned_sink import LearnedSinkObserver
from .capture.runner import Sweep, run_sweep
from .capture.sink import EffectiveTokensObserver, KeyStatsObserver, SinkObserver
from .chain import chain_observers, extend_sweep, reduce_chain
from .config import DataConfig, ProbeConfig, build
from .data import describe_data, load_sequences
from .distributed import init_from_env
from .errors import SinkscopeError
from .chain.experts import expert_observer, reduce_experts
from .loading import LoadedModel, prepare_model
from .metrics.norms import norm_ratio
from .metrics.sink import sink_rate, uniform_attention_baseline
from .peers import compare_published, reduce_sun, reduce_yu, super_weight_triples
from .results import SCHEMA_VERSION, provenance, write_json, write_parquet
from .tables import long_table
from .verdicts import reduce_sink

FULL_PATTERN_MAX_LEN = 512  # beyond this a (L, H, T, T) table is too large to be useful in a results file


@dataclass
class ProbeResult:
    """What ``probe`` found; ``to_dict()`` is exactly the content of ``probe.json``."""

    payload: dict
    tables: dict[str, dict]  # Parquet tables: column name -> numpy array (tables.long_table) or list

    def __getitem__(self, key: str):
        return self.payload[key]

    @property
    def sink_score(self) -> list[list[float]]:
        return self.payload["sink_score"]

    @property
    def onset_layer(self) -> int | None:
        return self.payload["onset_layer"]

    @property
    def sink_rate(self) -> float:
        return self.payload["sink_rate"]

    def to_dict(self) -> dict:
        return self.payload

    def save(self, out: str | Path) -> Path:
        """Write probe.json and one Parquet file per table into folder ``out``, atomically."""
        out = Path(out)
        for name, columns in self.tables.items():
            write_parquet(out / f"{name}.parquet", columns)
        return write_json(out / "probe.json", self.payload)


def sequences_for(data, loaded: LoadedModel, cfg: DataConfig) -> list[list[int]]:
    config = loaded.model.config
    vocab = config.vocab_size
    if data is None or isinstance(data, (str, Path)):
        if data is not None:
            cfg = dataclasses.replace(cfg, data=str(data))
        return load_sequences(cfg, loaded.tokenizer, vocab, getattr(config, "bos_token_id", None))
    if isinstance(data, torch.Tensor):
        data = data.tolist()
    if data and all(isinstance(d, str) for d in data):
        if loaded.tokenizer is None:
            raise SinkscopeError("texts need a tokenizer: pass tokenizer=... or token ids")
        from .data import special_tokens

        prefix, suffix = special_tokens(loaded.tokenizer, cfg.bos, getattr(config, "bos_token_id", None))
        return [prefix + loaded.tokenizer(t, add_special_tokens=False)["input_ids"][: cfg.seq_len - len(prefix) - len(suffix)]
                + suffix for t in data]
    if data and all(isinstance(d, (list, tuple)) for d in data):
        return [list(map(int, d)) for d in data]
    raise SinkscopeError("data must be a path, a list of texts, a list of token-id lists or an (N, T) tensor")


def _check_inputs(sequences: list[list[int]], loaded: LoadedModel, positions: Sequence[int]) -> int:
    config = loaded.model.config
    longest = max(len(s) for s in sequences)
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and longest > max_positions:
        raise SinkscopeError(f"sequences of {longest} tokens exceed this model's {max_positions} positions; "
                             f"lower --seq-len to at most {max_positions}")
    shortest = min(len(s) for s in sequences)
    for p in positions:
        if p >= shortest or -p > shortest:
            raise SinkscopeError(f"key position {p} is past the end of a {shortest}-token sequence; "
                                 f"use a position in [-{shortest}, {shortest - 1}] or longer sequences")
    vocab = config.vocab_size
    if any(t < 0 or t >= vocab for s in sequences for t in s):
        raise SinkscopeError(f"token ids must lie in [0, {vocab}) for this model")
    return longest


def probe(model, data=None, *, tokenizer=None, config: ProbeConfig | None = None, out: str | Path | None = None,
          progress: bool = False, **overrides) -> ProbeResult:
    """Measure attention sinks of ``model`` on ``data``; returns the content of probe.json.

    ``model`` is a loaded transformers model (left exactly as it was) or a hub id / local folder /
    embedded checkpoint name. ``data`` is None (the embedded prompts), a path, a list of texts, a
    list of token-id lists or an (N, T) tensor. Keyword overrides set fields of
    :class:`~sinkscope.config.DataConfig` / :class:`~sinkscope.config.CaptureConfig` by name.

    >>> import torch, transformers, sinkscope
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    >>> model = transformers.AutoModelForCausalLM.from_config(cfg)
    >>> result = sinkscope.probe(model, torch.randint(0, 64, (4, 16)), chain=False)
    >>> len(result["sink_score"]), len(result["sink_score"][0]), 0 <= result["sink_rate"] <= 100
    (2, 4, True)
    """
    config = _apply_overrides(config or ProbeConfig(), overrides)
    loaded = prepare_model(model, tokenizer, config.load)
    sequences = sequences_for(data, loaded, config.data)
    positions = config.capture.sink_positions
    if config.capture.sink_positions == (0,):
        positions = loaded.adapter.candidate_sinks
    max_len = _check_inputs(sequences, loaded, positions)
    if config.capture.full_pattern and max_len > FULL_PATTERN_MAX_LEN:
        raise SinkscopeError(f"--full-pattern is for sequences up to {FULL_PATTERN_MAX_LEN} tokens; "
                             "drop it (the sink statistics need no T x T matrix)")
    rank, world = init_from_env("gloo")  # the tallies live on the CPU
    tallies = _run(loaded, sequences[rank::world], config, positions, max_len, progress and rank == 0,
                   shard=(rank, world, len(sequences)))
    for observer in tallies.values():
        observer.tally.all_reduce()
    result = _reduce(loaded, tallies, config, positions, len(sequences), max_len, sequences)
    if "experts" in tallies:
        result.payload["expert_neurons"] = reduce_experts(tallies["experts"], loaded.model, loaded.adapter,
                                                          config.criteria)
    if out is not None and rank == 0:
        result.save(out)
    return result


def _apply_overrides(config: ProbeConfig, overrides: dict) -> ProbeConfig:
    if not overrides:
        return config
    values = dataclasses.asdict(config)
    sections = {f.name for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))}
    for key, value in overrides.items():
        for section in sections:
            if key in values[section]:
                values[section][key] = value
                break
        else:
            values[key] = value
    return build(ProbeConfig, values)


def _run(loaded: LoadedModel, sequences, config: ProbeConfig, positions, max_len, progress,
         shard: tuple[int, int, int]) -> dict:
    """``shard``: (rank, world size, number of sequences over all processes)."""
    model, adapter = loaded.model, loaded.adapter
    n_layers = len(blocks(model, adapter))
    n_heads, _, _ = head_counts(model.config)
    observers = {"sink": SinkObserver(n_layers, n_heads, max_len, positions, gu_eps=config.criteria.sink_rate_eps),
                 "learned_sink": LearnedSinkObserver(n_layers, n_heads),
                 "hidden": HiddenObserver(n_layers, max_len, effective_rank=config.capture.block_effective_rank)}
    if config.capture.key_importance or config.capture.full_pattern:  # the T x S pass; its effective tokens serve the chain
        observers["keys"] = KeyStatsObserver(n_layers, n_heads, max_len, config.capture.query_chunk,
                                             config.capture.full_pattern)
    elif config.chain:
        observers["effective_tokens"] = EffectiveTokensObserver(n_layers, n_heads, max_len, config.variance_positions,
                                                                config.capture.query_chunk)
    if config.capture.secondary_sinks:
        from .stream.discover import SinkKeyObserver

        observers["secondary"] = SinkKeyObserver(n_layers, config.criteria, config.capture.query_chunk, max_len=max_len)
    sweep = Sweep(attention_observers=[o for name, o in observers.items() if name != "hidden"],
                  forward_hooks=observers["hidden"].hooks(model, adapter), batch_listeners=[observers["hidden"]])
    medians = SharedMedians()  # Sun's per-sequence median, shared by the magnitude and disparity observers
    if config.chain:
        chain = chain_observers(model, adapter, config, max_len, medians)
        extend_sweep(sweep, chain, model, adapter)
        observers.update(chain)
    _add_peer_observers(observers, sweep, model, adapter, config, n_layers, max_len, shard, medians)
    finder = expert_observer(model, adapter, config.criteria) if config.chain else None
    if finder is not None:  # the spike evidence inside experts (attribution reads them too)
        sweep.forward_pre_hooks += finder.hooks(model, adapter)
        sweep.batch_listeners.append(finder)
        observers["experts"] = finder
    run_sweep(model, adapter, loaded.tokenizer, sequences, sweep, batch_size=config.data.batch_size,
              padding_side=config.data.padding_side, query_chunk=config.capture.query_chunk, progress=progress)
    return observers


def _add_peer_observers(observers: dict, sweep: Sweep, model, adapter, config: ProbeConfig, n_layers: int,
                        max_len: int, shard: tuple[int, int, int], medians: SharedMedians) -> None:
    """Sun et al.'s layer-wise magnitudes always; Yu et al.'s down-projection spikes with the chain."""
    rank, world, total = shard
    magnitudes = LayerMagnitudeObserver(n_layers, model.config.hidden_size, max_len, total, rank, world, medians)
    sweep.forward_hooks += magnitudes.hooks(model, adapter)
    sweep.batch_listeners.append(magnitudes)
    observers["magnitudes"] = magnitudes
    dense = blocks_with(model, adapter, "mlp_down")  # Yu's procedure reads dense down projections
    if config.chain and dense:
        down = mlp_weights(model, adapter, dense[0])["down"]  # (D, I), as the chain reads it
        spikes = DownProjSpikeObserver(n_layers, down.shape[1], down.shape[0], config.criteria.yu_spike_threshold,
                                       dense)
        pre, post = spikes.hooks(model, adapter)
        sweep.forward_pre_hooks += pre
        sweep.forward_hooks += post
        sweep.batch_listeners.append(spikes)
        observers["yu"] = spikes


def _reduce(loaded: LoadedModel, observers: dict, config: ProbeConfig, positions, n_sequences: int,
            max_len: int, sequences: list[list[int]] | None = None) -> ProbeResult:
    sink, hidden = observers["sink"], observers["hidden"]
    score = sink.sink_score().float()  # (L, H, P)
    importance = sink.importance().float()
    layer_score = score[:, :, 0].mean(1)
    norms = hidden.norm_by_position().float()  # (L, T)
    criteria = config.criteria
    sink_section = reduce_sink(sink, layer_score, criteria)
    payload = {
        **_header(loaded, config, observers["learned_sink"].has_learned_sink(), n_sequences, max_len, sequences),
        "sink_positions": list(positions),
        "sink_score": score[:, :, 0].tolist(),
        "sink_score_by_key": {str(p): score[:, :, i].tolist() for i, p in enumerate(positions)},
        "layer_sink_score": layer_score.tolist(),
        "importance": importance[:, :, 0].tolist(),
        "learned_sink_mass": observers["learned_sink"].mass().float().tolist(),
        "sink_rate": float(sink.gu_sink_rate()[0]),
        "sink_rate_by_key": {str(p): float(r) for p, r in zip(positions, sink.gu_sink_rate())},
        "sink_share": sink.sink_share()[:, :, 0].float().tolist(),
        "sink_rate_pooled": sink_rate(importance[:, :, 0], criteria.sink_rate_eps),
        "sink_rate_eps": criteria.sink_rate_eps,
        "sink": sink_section,
        "onset_layer": sink_section["onset_layer"],
        "onset_layer_paper": sink_section["onset_layer_paper"],
        "onset_threshold_paper": criteria.onset_threshold_paper,
        "criteria": criteria.as_dict(),
        "uniform_baseline": uniform_attention_baseline(max_len),
        "norm_ratio": norm_ratio(norms[:, : _seen_len(norms)], 0).tolist(),
        "sink_dom_ratio": hidden.sink_dom_ratio().float().tolist(),
        "max_abs_activation": hidden.tally["max_abs"].float().tolist(),
    }
    if config.capture.block_effective_rank:
        payload["block_effective_rank"] = hidden.effective_rank().tolist()
    payload["layer_magnitudes"], sun_table = reduce_sun(observers["magnitudes"])
    tables = _tables(sink, hidden, observers.get("keys"), positions)
    tables["layer_magnitudes"] = sun_table
    _add_sections(payload, tables, loaded, observers, config, score[:, :, 0], sequences or [])
    return ProbeResult(payload=payload, tables=tables)


def _header(loaded: LoadedModel, config: ProbeConfig, learned_sink: bool, n_sequences: int, max_len: int,
            sequences: list[list[int]] | None) -> dict:
    """Schema, provenance, the model's shape and the data: what every probe.json starts with."""
    model_config = loaded.model.config
    n_heads, n_kv, head_dim = head_counts(model_config)
    parameter = next(loaded.model.parameters())
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "probe",
        "provenance": provenance(model=loaded.name, revision=loaded.revision, config=config, seed=config.data.seed,
                                 dtype=str(parameter.dtype).removeprefix("torch."), device=str(parameter.device),
                                 model_config=model_config.to_dict()),
        "model": {"model_type": model_config.model_type, "n_layers": len(blocks(loaded.model, loaded.adapter)),
                  "n_heads": n_heads, "n_kv_heads": n_kv, "head_dim": head_dim, "causal": loaded.adapter.causal,
                  "learned_sink": learned_sink},
        "data": {**describe_data(config.data.data, random_tokens=config.data.random_tokens, bos=config.data.bos,
                                 seq_len=config.data.seq_len, sequences=sequences or []),
                 "sequences": n_sequences, "max_len": max_len,
                 "source": "random-tokens" if config.data.random_tokens else (config.data.data or "embedded-prompts")},
    }


def _add_sections(payload: dict, tables: dict, loaded: LoadedModel, observers: dict, config: ProbeConfig,
                  first_score: torch.Tensor, sequences: list[list[int]]) -> None:
    """The optional sections: secondary sinks, the learned-sink verdict, the chain and the peers' coordinates."""
    if "secondary" in observers:
        from .stream.discover import discover_from_observer

        payload["secondary_sinks"] = discover_from_observer(observers["secondary"], sequences, loaded.tokenizer)
    learned = observers["learned_sink"]
    payload["learned_sink_verdict"] = (learned_sink_verdict(learned.mass().float(), first_score)
                                       if learned.has_learned_sink() else None)
    if payload["learned_sink_verdict"]:  # the sink verdict names both sinks
        payload["sink"]["verdict"] += " " + payload["learned_sink_verdict"]
    if config.chain:
        chain = reduce_chain(loaded, observers, config, first_score, payload["sink"], sequences)
        payload.update(chain.payload)
        tables.update(chain.tables)
        payload["super_weights"] = super_weight_triples(payload["chain"]["super_neurons"])
        payload["yu_super_weights"] = reduce_yu(observers["yu"]) if "yu" in observers else None
        found = {"chain": payload["super_weights"], "yu": (payload["yu_super_weights"] or {}).get("coordinates", [])}
        payload["published_super_weights"] = compare_published(loaded.name, found)


def learned_sink_verdict(mass: torch.Tensor, first: torch.Tensor) -> str:
    """One sentence setting each head's learned-sink share (L, H) beside its attention to the first token (L, H)."""
    prefer = int((mass > first).sum())
    worst = divmod(int(mass.argmax()), mass.shape[1])
    return (f"Learned sink: heads send on average {100 * float(mass.mean()):.1f}% of their attention to their "
            f"learned sink logit (most: layer {worst[0]} head {worst[1]}, {100 * float(mass.max()):.1f}%) and "
            f"{100 * float(first.mean()):.1f}% to the first token; {prefer} of {mass.numel()} heads give the "
            "learned sink more than the first token.")


def _seen_len(norm_by_position: torch.Tensor) -> int:
    seen = (~torch.isnan(norm_by_position[0])).nonzero()
    return int(seen[-1, 0]) + 1


def _tables(sink: SinkObserver, hidden: HiddenObserver, keys: KeyStatsObserver | None, positions) -> dict:
    """The per-position tables; a cell never observed (NaN) has no row."""
    by_pos = sink.by_position()  # (L, H, P, T)
    lse = sink.lse_by_position()  # (L, H, T)
    norms = hidden.norm_by_position()  # (L, T)
    tables = {
        "attention_by_position": long_table(("layer", "head", "key", "query_position"), ~by_pos.isnan(),
                                            {"attention": by_pos}, {"key": list(positions)}),
        "lse_by_position": long_table(("layer", "head", "position"), ~lse.isnan(), {"lse": lse}),
        "hidden_by_position": long_table(("layer", "position"), ~norms.isnan(), {"norm": norms}),
    }
    if keys is not None:
        importance = keys.key_importance()  # (L, H, T)
        tables["key_importance"] = long_table(("layer", "head", "key_position"), ~importance.isnan(),
                                              {"importance": importance, "effective_tokens": keys.effective_tokens()})
        if keys.full_pattern:
            pattern = keys.pattern()  # (L, H, T, T)
            tables["attention_pattern"] = long_table(("layer", "head", "query_position", "key_position"),
                                                     ~pattern.isnan(), {"attention": pattern})
    return tables
