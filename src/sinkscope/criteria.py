"""Every decision rule of the sink and chain verdicts, in one frozen dataclass.

A verdict ("sink", "super neuron", "massive dim", "disparity layer input", "QK-locked head", "consistent
chain") is a claim a researcher will quote, so each rule compares a statistic with the model's own
reference (the uniform baseline, the other tokens at the same layer, the other channels of the same
layer, or a null), never with a magnitude only one model has. The paper's absolute criteria (the
0.8 onset, Sun et al.'s |x| > 100 and 1000x the median) are kept, reported under their own
``*_paper`` names so that numbers stay comparable with Llama-2-7B; ``configs/criteria-paper.yaml``
shows them. Each field's metadata holds its reason (``why``, the CLI help) and ``source``.

Calibration (docs/metrics.md, "How sinkscope decides"): random-weight models of every supported
family must give no sink, no super neuron and no chain; planted chains (:mod:`sinkscope.fixtures`)
at widths 64-1024 and massive values 20-2000 must be found exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def rule(default, *, why: str, source: str, choices: tuple | None = None):
    """A criteria field: its value, a one-line reason and where the value comes from."""
    return dataclasses.field(default=default, metadata={"why": why, "source": source, "choices": choices, "cli": True})


@dataclass(frozen=True)
class Criteria:
    """The thresholds of every sink and chain verdict (see the module docstring)."""

    rules: str = rule("scale-free", why="which rules decide sink presence, onset and massive dims: scale-free "
                      "(against the model's own references) or the paper's absolute ones (0.8 onset; |x| > 100 "
                      "and 1000x the median)", source="ours; paper: Li et al. 2026 and Sun et al. 2024",
                      choices=("scale-free", "paper"))

    # ---- sink presence and onset -----------------------------------------------------------------
    sink_ratio_min: float = rule(
        2.0, why="a layer has a sink when the lower confidence bound of its head-mean first-token score is at least "
        "this many times the uniform baseline", source="ours: random-weight null at the families' init <= 1.1x "
        "(44 models); weakest real sink (organism-nobos) 2.6x, CI 2.3-2.9")
    sink_confidence: float = rule(0.95, why="level of the confidence interval over sequences of the sink ratio",
                                  source="ours: the usual 95 percent")
    onset_fraction: float = rule(
        0.5, why="onset = first layer of the first sustained sink whose excess over uniform reaches this share of "
        "that sink's own peak excess", source="ours: the paper's 0.8 on a scale whose top is 1, made relative to "
        "the sink's own peak; SmolLM2-135M: layer 2's 2.7x is 0.37 of layers 3-9's, layer 3 is 0.94")
    onset_min_layers: int = rule(
        2, why="a sink is sustained when it holds for this many consecutive layers (or holds the strongest layer): "
        "a one-layer blip before it is not its onset", source="ours: SmolLM2-135M sinks in runs of 8 and 18 layers; "
        "organism-nobos' only sink layer is its strongest")
    onset_threshold_paper: float = rule(0.8, why="the paper's onset: first layer whose head-mean score exceeds this "
                                        "(reported as onset_layer_paper)", source="Li et al. 2026, analysis notebook")
    sink_rate_eps: float = rule(0.3, why="a head sinks on a key whose importance exceeds eps (the sink rate)",
                                source="Gu et al. 2025")
    # ---- super neurons -------------------------------------------------------------------------
    spike_token_ratio: float = rule(
        100.0, why="a neuron spikes when |a| at the first token is at least this many times its mean |a| at the "
        "sequence's other tokens ...", source="ours: organisms' super neurons 374-402; alone it does not separate "
        "(ReLU channels keyed on a constant BOS reach 263 in random OPT)")
    spike_channel_ratio: float = rule(
        20.0, why="... and at least this many times the mean |a| of the layer's other channels at the first token",
        source="ours: random-weight null max 2.5 (88 models), organisms' super neurons 443")
    spike_persistence: float = rule(0.5, why="... in at least this share of the sequences",
                                    source="Yu et al. 2024 (repeat over prompts); share ours")
    yu_spike_threshold: float = rule(50.0, why="Yu et al.'s own procedure (reported as super_weights, not a "
                                     "verdict): a down_proj input/output spikes above this |x|; tiny models may "
                                     "never reach it", source="Yu et al. 2024, analyze.py")
    weight_outlier: float = rule(3.0, why="weight finder (evidence only): a gate/up row norm this many times its "
                                 "layer's median stands out", source="Li et al. 2026 (top rows by L2 norm); ratio ours")
    writer_share: float = rule(
        0.8, why="an episode's writers (erasers) are the fewest parts whose writes make up this share of its rise "
        "(fall): single neurons, attention, an FFN's biases, the norms, the embedding", source="ours: SmolLM2-135M's "
        "first rise of dim 507 (0 -> 682) is 84 percent three neurons (2:90, 2:430, 1:83)")
    # ---- massive dims and dimension disparity --------------------------------------------------
    disparity_contrast: float = rule(
        4.0, why="disparity: the first token's DomRatio is at least this many times the other tokens' median at the "
        "same layer input; a dim is massive where it alone reaches that", source="ours: random-weight null <= 1.64 "
        "(88 models), planted chains >= 5.0, organisms 8.5-11")
    massive_persistence: float = rule(0.5, why="a dim is massive at the first token in at least this share of "
                                      "sequences", source="ours")
    massive_abs_paper: float = rule(100.0, why="the paper's massive activation: |x| above this (reported as "
                                    "massive_paper)", source="Sun et al. 2024")
    massive_rel_paper: float = rule(1000.0, why="... and above this many times the median |x| of the "
                                    "sequence's whole layer output (their torch.median over all tokens and dims)",
                                    source="Sun et al. 2024")
    # ---- QK locking ----------------------------------------------------------------------------
    lock_positive_share: float = rule(0.9, why="a head is QK-locked when at least this share of its queries have "
                                      "q . k_first > 0 ...", source="ours: null 0.5 (a random key direction)")
    lock_alignment_z: float = rule(
        3.0, why="... and cos(top query direction, W_K row of the massive dim) x sqrt(head_dim) is at least this",
        source="ours: a random direction's cosine has std ~1/sqrt(head_dim)")

    # ---- secondary sinks (keys other than the first that act as sinks; probe --secondary-sinks, stream) ----
    secondary_ratio: float = rule(
        4.0, why="a query sinks on key j when its head-mean attention to j is at least this many times its uniform "
        "share 1/n_i ...", source="ours: random-weight Llamas give no majority at T = 64-256; organism-softmax's BOS "
        "gets 9-13x at T = 256 (docs/stream.md)")
    secondary_query_share: float = rule(
        0.5, why="... and key j acts as a sink when at least this share of its far queries sink on it",
        source="ours: a sink is attended by most later queries, a local or content token by a few")
    secondary_local_span: int = rule(
        4, why="queries closer than this to key j do not vote (previous-token and local heads are not sinks)",
        source="ours")
    secondary_min_far_queries: int = rule(
        8, why="a key needs at least this many far queries to be judged (the last keys are seen by too few)",
        source="ours")
    secondary_pool_share: float = rule(
        0.5, why="a token class (first token, or n-th occurrence of an id) is a candidate of the discovered policy "
        "(kept only if it lowers calibration perplexity) when it acts as a sink in at least this share of the "
        "sequences having it ...", source="ours")
    secondary_pool_min_support: float = rule(
        0.25, why="... and that occurs in at least this share of all sequences", source="ours: a class two "
        "sequences have is an anecdote")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe() -> list[dict]:
    """Every criterion with its default, reason and source (for docs and the report)."""
    return [{"name": f.name, "value": f.default, "why": f.metadata["why"], "source": f.metadata["source"]}
            for f in dataclasses.fields(Criteria)]
