"""``sinkscope intervene``: create a sink anywhere (isolate, amplify) or remove it (ablate, massive).

Each experiment runs instrumented sweeps with and without its interventions over the same token
sequences and writes ``intervene.json`` (keys documented in docs/results.md).
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from pathlib import Path

import torch

from .adapters import block_part, blocks, head_counts
from .capture.hidden import HiddenObserver
from .capture.runner import Sweep, run_sweep
from .capture.sink import SinkObserver
from .config import InterveneConfig, ProbeConfig, parse_dims, parse_layers  # InterveneConfig lives in config.py: `intervene --help` needs no torch
from .data import describe_data
from .errors import SinkscopeError
from .interventions import AblateDims, AblateNeurons, Amplify, Isolate, compose
from .interventions.ablate_experts import SHARED, AblateExpertNeurons
from .loading import LoadedModel, prepare_model
from .metrics.norms import norm_ratio
from .metrics.perplexity import mean_with_ci, perplexity_with_ci, sequence_nll
from .results import SCHEMA_VERSION, provenance, write_json
from .chain.verdict import part_name
from .intervene_episode import ablate_sentence, episode_effect
from .verdicts import reduce_sink
from .intervene_words import amplify_verdict, isolate_verdict
from .words import monotone_within_ci

def _parse_pairs(text: str) -> tuple[tuple, ...]:
    """LAYER:INDEX (a dense FFN) or LAYER:EXPERT:INDEX (an expert; EXPERT may be "shared") items."""
    try:
        pairs = tuple(tuple(x if x == SHARED and i == 1 and item.count(":") == 2 else int(x)
                            for i, x in enumerate(item.split(":"))) for item in text.split(","))
    except ValueError:
        pairs = ()
    if not pairs or any(len(p) not in (2, 3) for p in pairs):
        raise SinkscopeError(f"--neurons must be auto or LAYER:INDEX / LAYER:EXPERT:INDEX[,...], got {text!r}")
    return pairs


class _Experiment:
    def __init__(self, loaded: LoadedModel, config: InterveneConfig, progress: bool, data=None):
        from .probe import sequences_for

        self.loaded, self.config, self.progress = loaded, config, progress
        self.model, self.adapter = loaded.model, loaded.adapter
        self.n_layers = len(blocks(self.model, self.adapter))
        self.n_heads = head_counts(self.model.config)[0]
        sequences = sequences_for(data, loaded, config.data)
        longest = max(len(s) for s in sequences)
        if config.position < 0 or config.position > longest - 2:
            raise SinkscopeError(f"--position {config.position} must lie in [0, {longest - 2}] so that later "
                                 f"queries can attend it (sequences have up to {longest} tokens)")
        # windows cut from the end of a document can be too short to hold the target and a later query
        self.sequences = [s for s in sequences if len(s) >= config.position + 2]
        self.max_len = max(len(s) for s in self.sequences)
        self.auto_probe: dict | None = None  # probe.json of the first --neurons/--dims auto

    def sweep(self, interventions=(), positions=(0,), per_sequence=False, nll=False, label="sweep",
              collectors=(), stop_after: int | None = None) -> dict:
        """One pass; ``collectors`` (pre-hook owners with a ``batch``) gather their own tallies in it too;
        ``stop_after``: the last layer read (the statistics of later layers are left empty)."""
        sink = SinkObserver(self.n_layers, self.n_heads, self.max_len, positions, per_sequence=per_sequence,
                            gu_eps=self.config.criteria.sink_rate_eps)
        hidden = HiddenObserver(self.n_layers, self.max_len, positions)
        base = Sweep(attention_observers=[sink], forward_hooks=hidden.hooks(self.model, self.adapter),
                     forward_pre_hooks=[h for c in collectors for h in c.hooks(self.model, self.adapter)],
                     batch_listeners=[hidden, *collectors], stop_after=stop_after)
        losses: list[torch.Tensor] = []
        if nll:
            base.on_logits = lambda batch, ids, logits: losses.append(sequence_nll(batch.valid, ids, logits))
        sweep = compose(self.model, self.adapter, interventions, base)
        run_sweep(self.model, self.adapter, self.loaded.tokenizer, self.sequences, sweep,
                  batch_size=self.config.data.batch_size, padding_side=self.config.data.padding_side,
                  query_chunk=self.config.query_chunk, progress=self.progress, label=label)
        return {"sink": sink, "hidden": hidden, "nll": torch.cat(losses) if losses else None}

    def payload(self, kind: str, body: dict) -> dict:
        config = self.config
        return {"schema_version": SCHEMA_VERSION, "kind": kind, "position": config.position,
                "provenance": provenance(model=self.loaded.name, revision=self.loaded.revision, config=config,
                                         seed=config.data.seed, dtype=config.load.dtype, device=config.load.device,
                                         model_config=self.model.config.to_dict()),
                "data": {**describe_data(config.data.data, random_tokens=config.data.random_tokens, bos=config.data.bos,
                                         seq_len=config.data.seq_len, sequences=self.sequences),
                         "max_len": self.max_len}, **body}


def _target_scores(result: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) head-mean score of the target (tracked key 1) and of the original sink (key 0), queries after each."""
    after = result["sink"].score_after().float().mean(1)  # (L, P)
    return after[:, 1], after[:, 0]


def _norm_ratio_at(hidden: HiddenObserver, position: int) -> torch.Tensor:
    norms = hidden.norm_by_position().float()  # (L, T)
    seen = int((~torch.isnan(norms[0])).sum())
    return norm_ratio(norms[:, :seen], position)


def isolate(exp: _Experiment) -> dict:
    config = exp.config
    layers = parse_layers(config.layers, None)
    p = config.position
    before = exp.sweep(positions=(0, p), label="baseline")
    after = exp.sweep([Isolate(position=p, layers=layers)], positions=(0, p), label="isolate")
    target_b, sink_b = _target_scores(before)
    target_a, sink_a = _target_scores(after)
    dom_b, dom_a = before["hidden"].dom_ratio()[:, 1], after["hidden"].dom_ratio()[:, 1]
    norm_b, norm_a = _norm_ratio_at(before["hidden"], p), _norm_ratio_at(after["hidden"], p)
    per_layer = [{"layer": layer, "sink_score_before": target_b[layer].item(), "sink_score_after": target_a[layer].item(),
                  "original_sink_before": sink_b[layer].item(), "original_sink_after": sink_a[layer].item(),
                  "dom_ratio_before": dom_b[layer].item(), "dom_ratio_after": dom_a[layer].item(),
                  "norm_ratio_before": norm_b[layer].item(), "norm_ratio_after": norm_a[layer].item()}
                 for layer in range(exp.n_layers)]
    best = int(torch.argmax(target_a / target_b.clamp_min(1e-12)))
    gain = (target_a[best] / target_b[best].clamp_min(1e-12)).item()
    return exp.payload("isolate", {
        "layers": list(layers) if layers is not None else "all", "per_layer": per_layer,
        "max_gain_layer": best, "max_gain": gain,
        "verdict": isolate_verdict(p, best, target_b[best].item(), target_a[best].item()),
    })


class _ValueMean:
    """Attention observer: mean value vector per layer (B, H, T, D values, already expanded for GQA)."""

    def __init__(self, n_layers: int):
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, float] = {}

    def observe(self, call) -> None:
        valid = call.batch.valid[:, None, :, None]  # (B, 1, T, 1)
        total = (call.value.double() * valid).sum((0, 2))  # (H, D)
        self.sums[call.layer] = self.sums.get(call.layer, 0) + total.cpu()
        self.counts[call.layer] = self.counts.get(call.layer, 0) + float(call.batch.valid.sum())

    def mean(self) -> torch.Tensor:
        """(L, H*D) in the layout of the o_proj input (heads concatenated)."""
        return torch.stack([(self.sums[i] / self.counts[i]).reshape(-1) for i in sorted(self.sums)]).float()


_VALUE_MEAN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(tokens, seed): mu}


def value_mean(exp: _Experiment, last: int | None = None) -> torch.Tensor:
    """mu: mean value-projection output over uniformly random tokens, per layer up to ``last`` (the last layer
    amplify edits; None: every layer), cached per model, size and last layer."""
    config = exp.config
    cache = _VALUE_MEAN_CACHE.setdefault(exp.model, {})
    key = (config.value_mean_tokens, config.data.seed, last)
    if key in cache:
        return cache[key]
    length = min(exp.max_len, 64)
    n_seq = max(1, config.value_mean_tokens // length)
    generator = torch.Generator().manual_seed(config.data.seed + 1)
    seqs = torch.randint(0, exp.model.config.vocab_size, (n_seq, length), generator=generator).tolist()
    observer = _ValueMean(exp.n_layers)
    run_sweep(exp.model, exp.adapter, exp.loaded.tokenizer, seqs,
              Sweep(attention_observers=[observer], stop_after=last),
              batch_size=config.data.batch_size, query_chunk=config.query_chunk)
    cache[key] = observer.mean()
    return cache[key]


def amplify(exp: _Experiment) -> dict:
    config = exp.config
    layers = parse_layers(config.layers, (0, 1))
    layers = tuple(range(exp.n_layers)) if layers is None else layers
    if any(lam <= 0 for lam in config.lambdas):
        raise SinkscopeError(f"--lambdas must all be positive, got {','.join(map(str, config.lambdas))}")
    if not 0 <= config.observe < exp.n_layers:
        raise SinkscopeError(f"--observe {config.observe} is out of range: this model has layers 0..{exp.n_layers - 1}")
    mu = value_mean(exp, max(layers))
    p = config.position
    rows = {"amplify": [], "control": []}
    for lam in config.lambdas:
        for name, mean in (("amplify", mu), ("control", None)):
            if name == "control" and config.control == "none":
                continue
            result = exp.sweep([Amplify(position=p, lam=lam, layers=layers, mean=mean)], positions=(0, p),
                               per_sequence=True, label=f"{name} lambda={lam:g}", stop_after=config.observe)
            per_seq = result["sink"].per_sequence_after(config.observe)[:, 1]  # (N,)
            score = result["sink"].score_after()[config.observe, :, 1].float().mean().item()
            rows[name].append((score, mean_with_ci(per_seq)[1]))
    scores, cis = [s for s, _ in rows["amplify"]], [ci for _, ci in rows["amplify"]]
    control = [s for s, _ in rows["control"]]
    body = {"layers": list(layers), "observe": config.observe, "lambdas": list(config.lambdas),
            "sink_score": scores, "sink_score_ci": cis, "gain": scores[-1] / max(scores[0], 1e-12),
            "control_sink_score": control or None, "control_sink_score_ci": [ci for _, ci in rows["control"]] or None,
            "monotone": monotone_within_ci(scores, cis)}
    body["control_differs"] = (bool(rows["control"]) and rows["amplify"][-1][1][0] > rows["control"][-1][1][1])
    body["verdict"] = amplify_verdict(body, p) + (
        f"; the norm-only control reached {control[-1]:.3f}, "
        f"{'clearly below' if body['control_differs'] else 'not clearly below'} the amplified score" if control else "")
    return exp.payload("amplify", body)


def _auto_chain(exp: _Experiment) -> dict:
    """The chain found on the experiment's data; one probe serves every auto choice."""
    from .probe import probe

    if exp.auto_probe is None:
        config = ProbeConfig(data=exp.config.data, criteria=exp.config.criteria, chain=True)
        exp.auto_probe = probe(exp.model, exp.sequences, tokenizer=exp.loaded.tokenizer, config=config).payload
    return exp.auto_probe.get("chain") or {}


def _episode_writers(exp: _Experiment) -> tuple[dict, tuple]:
    """The episode --neurons auto targets (--episode, else the one present at the onset) and its writer neurons
    as (LAYER, INDEX) or (LAYER, EXPERT, INDEX)."""
    chain = _auto_chain(exp)
    episodes = chain.get("episodes") or []
    index = exp.config.episode if exp.config.episode is not None else chain.get("onset_episode")
    if not episodes:
        raise SinkscopeError("no dim dominates the first token on these data, so no episode has writers to ablate; "
                             "pass --neurons LAYER:INDEX or --neurons none with --dims")
    if index is None:
        raise SinkscopeError(f"no episode holds the sink's onset on these data; name one with --episode "
                             f"0..{len(episodes) - 1} (probe.json's chain.episodes)")
    if not 0 <= index < len(episodes):
        raise SinkscopeError(f"--episode {index} is out of range: these data have episodes 0..{len(episodes) - 1}")
    episode = episodes[index]
    neurons = tuple((w["layer"], w["index"]) if w["expert"] is None else (w["layer"], w["expert"], w["index"])
                    for w in episode["rise"]["writers"] if w["kind"] == "neuron")
    if not neurons:
        carried = ", ".join(part_name(w) for w in episode["rise"]["writers"]) or "nothing"
        raise SinkscopeError(f"episode {index} (dim {episode['dim']}) was written by {carried}, not by neurons; "
                             "pass --neurons LAYER:INDEX or --dims with --neurons none")
    return {**episode, "index": index}, neurons


def _same_sequences(exp: _Experiment, probe: dict) -> dict:
    """``probe`` when it measured the experiment's data (file SHA-256, BOS, sequence and token counts), else an error."""
    data = exp.config.data
    ours = describe_data(data.data, random_tokens=data.random_tokens, bos=data.bos, seq_len=data.seq_len,
                         sequences=exp.sequences)
    theirs = probe.get("data") or {}
    keys = ("sha256", "sequences", "tokens", "bos")
    if [theirs.get(k) for k in keys] != [ours.get(k) for k in keys]:
        raise SinkscopeError("the probe passed to intervene measured other sequences than the intervention's; "
                             "leave probe= out to probe these")
    return probe


class _NeuronMeans:
    """Mean activation of chosen FFN neurons over real tokens other than the first (for mean ablation)."""

    def __init__(self, neurons):
        self.neurons = neurons
        self.batch = None
        self.sums: dict = {}
        self.count = 0.0

    def hooks(self, model, adapter):
        by_layer: dict[int, list[int]] = {}
        for layer, index in self.neurons:
            by_layer.setdefault(layer, []).append(index)
        return [(block_part(model, adapter, layer, "mlp_down"), self._hook(layer, indices))
                for layer, indices in by_layer.items()]

    def _hook(self, layer, indices):
        def pre_hook(module, args):
            x = args[0]  # (B, T, I)
            others = self.batch.others()
            values = x[..., indices][others].double().sum(0).cpu()  # (k,)
            for i, v in zip(indices, values):
                self.sums[(layer, i)] = self.sums.get((layer, i), 0.0) + float(v)
            if layer == self.neurons[0][0]:
                self.count += float(others.sum())
        return pre_hook

    def means(self) -> dict:
        return {key: total / max(self.count, 1.0) for key, total in self.sums.items()}


def _neuron_ablations(exp: _Experiment, neurons: tuple, collectors: list) -> list:
    """Interventions for dense neurons (LAYER, INDEX) and neurons inside experts (LAYER, EXPERT, INDEX).

    Mean ablation appends to ``collectors`` what the baseline pass must gather for its means."""
    config = exp.config
    in_experts = tuple(n for n in neurons if len(n) == 3)
    dense = tuple(n for n in neurons if len(n) == 2)
    if in_experts and (config.mode, config.target) != ("zero", "activation"):
        raise SinkscopeError("neurons inside experts are ablated with --mode zero --target activation only")
    out = [AblateExpertNeurons(neurons=in_experts)] if in_experts else []
    if dense:
        if config.mode == "mean":  # the means come from the baseline pass, before the neurons are ablated
            collectors.append(_NeuronMeans(dense))
        out.append(AblateNeurons(neurons=dense, mode=config.mode, target=config.target))
    return out


def ablate(exp: _Experiment) -> dict:
    config = exp.config
    interventions, collectors = [], []
    neurons: tuple = ()
    episode = None
    if config.neurons != "none":
        if config.neurons == "auto":
            episode, neurons = _episode_writers(exp)
        else:
            neurons = _parse_pairs(config.neurons)
        interventions += _neuron_ablations(exp, neurons, collectors)
    dims: tuple = ()
    if config.dims is not None:
        if config.dims == "auto":
            dims = tuple(_auto_chain(exp).get("massive_dims") or ())
            if not dims:
                raise SinkscopeError("the chain finder found no massive dim; pass --dims C[,C]")
        else:
            dims = parse_dims(config.dims)
        interventions.append(AblateDims(dims=dims, layers=parse_layers(config.layers, None), mode=config.mode))
    if not interventions:
        raise SinkscopeError("nothing to ablate: pass --neurons and/or --dims")
    nll = exp.adapter.causal
    before = exp.sweep(nll=nll, label="baseline", collectors=collectors)
    if collectors:
        i = next(i for i, item in enumerate(interventions) if isinstance(item, AblateNeurons))
        interventions[i] = replace(interventions[i], means=collectors[0].means())
    after = exp.sweep(interventions, nll=nll, label="ablate")
    score_b = before["sink"].sink_score()[:, :, 0].float().mean(1)
    score_a = after["sink"].sink_score()[:, :, 0].float().mean(1)
    body = {
        "neurons": [list(n) for n in neurons], "dims": list(dims), "mode": config.mode, "target": config.target,
        "per_layer": [{"layer": layer, "sink_score_before": score_b[layer].item(),
                       "sink_score_after": score_a[layer].item()} for layer in range(exp.n_layers)],
        "dom_ratio_before": before["hidden"].sink_dom_ratio().tolist(),
        "dom_ratio_after": after["hidden"].sink_dom_ratio().tolist(),
        "max_abs_activation_before": before["hidden"].tally["max_abs"].tolist(),
        "max_abs_activation_after": after["hidden"].tally["max_abs"].tolist(),
        "sink_rate_before": float(before["sink"].gu_sink_rate()[0]),
        "sink_rate_after": float(after["sink"].gu_sink_rate()[0]),
        "sink_before": reduce_sink(before["sink"], score_b, config.criteria),
        "sink_after": reduce_sink(after["sink"], score_a, config.criteria),
        "perplexity_before": perplexity_with_ci(before["nll"]) if nll else None,
        "perplexity_after": perplexity_with_ci(after["nll"]) if nll else None,
    }
    if episode is not None:
        body["episode"] = episode_effect(episode, before, after, neurons)
    body["verdict"] = ablate_sentence(body, neurons, dims, score_b, score_a, nll)
    return exp.payload("ablate", body)


def massive(exp: _Experiment) -> dict:
    from .intervene_massive import massive as run  # Sun et al.'s reset, in its own module

    return run(exp)


EXPERIMENTS = {"isolate": isolate, "amplify": amplify, "ablate": ablate, "massive": massive}


def intervene(model, kind: str, config: InterveneConfig | None = None, *, data=None, tokenizer=None,
              out: str | Path | None = None, progress: bool = False, probe: dict | None = None) -> dict:
    """Run one intervention experiment and return the content of intervene.json.

    ``model`` is a loaded transformers model (left unchanged) or a hub id / folder / embedded name;
    ``data`` is as for :func:`sinkscope.probe` (None: ``config.data`` decides). ``probe``: a probe.json payload
    (with the chain) measured on these same sequences with the same criteria, which ``--neurons/--dims auto``
    then read instead of probing again (the demo passes the one it just ran).
    """
    config = config or InterveneConfig()
    if kind not in EXPERIMENTS:
        raise SinkscopeError(f"unknown intervention {kind!r}; choose one of {', '.join(EXPERIMENTS)}")
    loaded = prepare_model(model, tokenizer, config.load)
    exp = _Experiment(loaded, config, progress, data)
    if probe is not None:
        exp.auto_probe = _same_sequences(exp, probe)
    payload = EXPERIMENTS[kind](exp)
    if out is not None:
        write_json(Path(out) / "intervene.json", payload)
    return payload

