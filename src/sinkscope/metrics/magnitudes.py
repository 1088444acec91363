"""Activation magnitudes as the peers measure them: pure functions on one sequence's tensors.

Sun et al. 2024 (locuslab/massive-activations, ``main_llm.py`` ``--exp2``) take a layer's output
for one sequence, sort |x| over all tokens and dims, keep the top 3 and ``torch.median`` (the lower
middle value for an even count), in float64. Yu et al. 2024 (mengxiayu/LLMSuperWeight,
``analyze.py`` ``check_module_hidden_states``) keep, per layer, the signed value and the
(token, channel) of the largest |x| at the down projection's input and output.
"""

from __future__ import annotations

import torch

SUN_STATS = ("top1", "top2", "top3", "median")


def layer_magnitudes(x: torch.Tensor) -> torch.Tensor:
    """(4,) float64: top-1, top-2, top-3 and median |x| over every entry of one sequence's (T, D) output.

    Sun et al. cast to float64 first; |x|, ordering and the median are exact in any float dtype, so
    casting the four results instead gives the same numbers without a float64 copy of the layer.
    """
    mags = x.detach().abs().flatten()
    top = mags.topk(min(3, mags.numel())).values.double()
    top = torch.cat([top, top.new_full((3 - len(top),), float("nan"))])
    return torch.cat([top, mags.median().double()[None]])


def top_spike(x: torch.Tensor) -> tuple[float, int, int]:
    """(signed value, token, channel) of the largest |x| in one sequence's (T, C) activations."""
    flat = int(x.abs().flatten().argmax())
    token, channel = divmod(flat, x.shape[-1])
    return float(x[token, channel]), token, channel
