"""``sinkscope intervene MODEL massive``: Sun et al.'s set-to-zero / set-to-mean test.

The massive activations (the chain's massive dims, at the block whose output first carries them,
or ``--dims`` / ``--layers``) are overwritten with zero and, separately, with their mean over the
same sequences (measured first, without edits); perplexity with 95 % CIs and the sink score per
layer are reported for the original model and both edits, as in their Table 3.
"""

from __future__ import annotations

import torch

from .capture.runner import Sweep, run_sweep
from .config import parse_dims, parse_layers
from .errors import SinkscopeError
from .interventions.massive import MassiveMeans, ResetMassive
from .metrics.perplexity import perplexity_with_ci


def _targets(exp) -> tuple[int, tuple[int, ...]]:
    config = exp.config
    layers = parse_layers(config.layers, None)
    auto_dims = config.dims in (None, "auto")
    chain = _chain(exp) if auto_dims or layers is None else {}
    if auto_dims:
        dims = tuple(chain.get("massive_dims") or ())
        if not dims:
            raise SinkscopeError("the chain finder found no massive dim; pass --dims C[,C] and --layers L")
    else:
        dims = parse_dims(config.dims)
    if layers is None:
        jump = chain.get("disparity_layer_input")
        if jump is None or jump < 1:
            raise SinkscopeError("the chain finder found no layer where the massive dims appear; pass --layers L")
        layers = (jump - 1,)  # layer input k is the output of block k - 1
    if len(layers) != 1:
        raise SinkscopeError(f"massive resets one block's output, as Sun et al. do; pass a single --layers, got {layers}")
    return layers[0], dims


def _chain(exp) -> dict:
    """The probe's chain section on the experiment's sequences (one probe for dims and layer)."""
    from .config import ProbeConfig
    from .probe import probe

    config = ProbeConfig(data=exp.config.data, criteria=exp.config.criteria, chain=True)
    result = probe(exp.model, exp.sequences, tokenizer=exp.loaded.tokenizer, config=config)
    return result.to_dict().get("chain") or {}


def massive(exp) -> dict:
    layer, dims = _targets(exp)
    nll = exp.adapter.causal
    means = MassiveMeans(dims)
    block = ResetMassive(layer=layer, dims=dims).sweep(exp.model, exp.adapter).forward_hooks[0][0]
    run_sweep(exp.model, exp.adapter, exp.loaded.tokenizer, exp.sequences,
              Sweep(forward_hooks=[(block, means.hook)], batch_listeners=[means]),
              batch_size=exp.config.data.batch_size, padding_side=exp.config.data.padding_side)
    first, other = means.means()
    runs = {"original": exp.sweep(nll=nll, label="baseline"),
            "zero": exp.sweep([ResetMassive(layer, dims, "zero")], nll=nll, label="set to zero"),
            "mean": exp.sweep([ResetMassive(layer, dims, "mean", first, other)], nll=nll, label="set to mean")}
    scores = {k: r["sink"].sink_score()[:, :, 0].float().mean(1) for k, r in runs.items()}
    body = {
        "layer": layer, "dims": list(dims), "mean_values": {"first_token": list(first), "top_token": list(other)},
        "per_layer": [{"layer": i, **{f"sink_score_{k}": float(s[i]) for k, s in scores.items()}}
                      for i in range(exp.n_layers)],
        "max_abs_activation": {k: r["hidden"].tally["max_abs"].tolist() for k, r in runs.items()},
        "sink_rate": {k: float(r["sink"].gu_sink_rate()[0]) for k, r in runs.items()},
        "perplexity": {k: perplexity_with_ci(r["nll"]) for k, r in runs.items()} if nll else None,
    }
    peak = int(torch.argmax(scores["original"]))
    text = (f"massive dims {list(dims)} after layer {layer}: peak sink score {scores['original'][peak]:.3f} -> "
            f"{scores['zero'][peak]:.3f} (zero) / {scores['mean'][peak]:.3f} (mean) at layer {peak}")
    if nll:
        ppl = {k: v["perplexity"] for k, v in body["perplexity"].items()}
        text += f"; perplexity {ppl['original']:.2f} -> {ppl['zero']:.2f} (zero) / {ppl['mean']:.2f} (mean)"
    body["verdict"] = text
    return exp.payload("massive", body)
