"""Attention mass that a learned sink logit (gpt-oss ``s_aux``, softmax1, sinkscope's ``sink_logit``) absorbs."""

from __future__ import annotations

import torch


def learned_sink_share(sink_logit: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """(B, H, T) share of each query's softmax that goes to the virtual sink key: 1 - sum of weights on real keys.

    sink_logit (H,): the per-head logit of a key with no value. lse (B, H, T): log-sum-exp over the
    real keys *and* the sink, so the sink's weight is exactly exp(s_h - lse).

    >>> lse = torch.logaddexp(torch.zeros(1, 2, 1), torch.tensor([0.0, 2.0]).view(1, 2, 1))
    >>> learned_sink_share(torch.tensor([0.0, 2.0]), lse).flatten().tolist()  # one real key of logit 0
    [0.5, 0.8807970285415649]
    """
    return torch.exp(sink_logit.float().view(1, -1, 1) - lse.float())
