"""The chain's streamed observers, added to the probe's one sweep over the data."""

from __future__ import annotations

from ..adapters import block_part, blocks, head_counts, mlp_weights, weight_out_in
from ..adapters.coverage import blocks_with
from ..capture.activations import SharedMedians
from ..capture.runner import Sweep
from ..capture.selectivity import SelectivityObserver
from ..config import ProbeConfig
from ..criteria import Criteria
from ..errors import SinkscopeError
from .attribution import AttributionObserver
from .observers import DisparityObserver, NeuronObserver, QueryObserver, ValueOutputObserver


def chain_observers(model, adapter, config: ProbeConfig, max_len: int, medians: SharedMedians | None = None) -> dict:
    """The streamed chain observers, keyed by name; each has a ``.tally``. The neuron evidence and the
    selectivity trace read dense FFNs only; attribution reads every FFN, experts included."""
    check_chain_config(config)
    c = config.criteria
    n_layers = len(blocks(model, adapter))
    n_heads, _, head_dim = head_counts(model.config)
    hidden = model.config.hidden_size
    width_in = weight_out_in(block_part(model, adapter, 0, "o_proj"), adapter).shape[1]
    observers = {
        "values": ValueOutputObserver(n_layers, n_heads, width_in, hidden, max_len, config.variance_positions),
        "disparity": DisparityObserver(n_layers, hidden, max_len, c.massive_abs_paper, c.massive_rel_paper,
                                       c.disparity_contrast, medians=medians),
        "queries": QueryObserver(n_layers, n_heads, head_dim),
        "attribution": AttributionObserver(model, adapter),
    }
    dense = blocks_with(model, adapter, "mlp_down")
    if dense:
        channels = mlp_weights(model, adapter, dense[0])["down"].shape[1]
        observers["neurons"] = NeuronObserver(n_layers, channels, hidden, c.spike_token_ratio, c.spike_channel_ratio,
                                              dense)
        if config.selectivity_positions:  # the MLP input is a normalised residual-stream token: width = hidden
            observers["selectivity"] = SelectivityObserver(n_layers, hidden, channels, max_len,
                                                           config.selectivity_positions, dense)
    return observers


def check_chain_config(config: ProbeConfig) -> None:
    """Refuse chain settings that cannot mean anything, naming the flag to change."""
    if config.variance_positions < 1:
        raise SinkscopeError("--variance-positions must be at least 1")
    if config.neuron_top_k < 1:
        raise SinkscopeError("--neuron-top-k must be at least 1")
    if config.selectivity_positions < 0:
        raise SinkscopeError("--selectivity-positions must be 0 (no trace) or more")
    check_criteria(config.criteria)


def check_criteria(c: Criteria) -> None:
    """Refuse criteria that cannot mean anything, naming the flag to change."""
    for name in ("sink_ratio_min", "spike_token_ratio", "spike_channel_ratio", "weight_outlier",
                 "disparity_contrast", "massive_abs_paper", "massive_rel_paper", "lock_alignment_z"):
        if not getattr(c, name) >= 0:
            raise SinkscopeError(f"--{name.replace('_', '-')} must be non-negative")
    for name in ("sink_confidence", "onset_fraction", "spike_persistence", "writer_share", "massive_persistence",
                 "lock_positive_share"):
        if not 0 <= getattr(c, name) <= 1:
            raise SinkscopeError(f"--{name.replace('_', '-')} must lie in [0, 1] (a share)")
    if not 0 < c.sink_confidence < 1:
        raise SinkscopeError("--sink-confidence must lie in (0, 1) (a confidence level)")
    if not 0 < c.writer_share <= 1:
        raise SinkscopeError("--writer-share must lie in (0, 1] (a share of the rise)")
    if c.onset_min_layers < 1:
        raise SinkscopeError("--onset-min-layers must be at least 1")


def extend_sweep(sweep: Sweep, observers: dict, model, adapter) -> Sweep:
    """Add the chain observers' hooks to a probe sweep (in place) and return it."""
    for name in ("values", "neurons", "selectivity"):
        if name in observers:  # dense FFNs only; selectivity is optional (--selectivity-positions 0)
            pre, post = observers[name].hooks(model, adapter)
            sweep.forward_pre_hooks += pre
            sweep.forward_hooks += post
            sweep.batch_listeners.append(observers[name])
    pre, post = observers["attribution"].hooks()
    sweep.forward_pre_hooks += pre
    sweep.forward_hooks += post
    sweep.batch_listeners.append(observers["attribution"])
    pre, post = observers["disparity"].hooks(model, adapter)
    sweep.forward_pre_hooks += pre
    sweep.forward_hooks += post
    sweep.batch_listeners.append(observers["disparity"])
    sweep.attention_observers.append(observers["queries"])
    return sweep
