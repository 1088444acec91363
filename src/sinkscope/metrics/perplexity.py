"""Perplexity and means with 95 % confidence intervals over sequences. Pure tensor functions."""

from __future__ import annotations

import math

import torch

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def sequence_nll(valid: torch.Tensor, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) per-sequence summed next-token negative log-likelihood and number of predicted tokens."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target[..., None])[..., 0]  # (B, T-1)
    pairs = valid[:, 1:] & valid[:, :-1]
    return torch.stack([(nll * pairs).sum(1), pairs.sum(1).float()], dim=1).double().cpu()


def perplexity_with_ci(per_sequence: torch.Tensor) -> dict:
    """Perplexity exp(mean NLL per token) with a 95 % CI from the spread of per-sequence mean NLL."""
    total = per_sequence[:, 0].sum() / per_sequence[:, 1].sum()
    means = per_sequence[:, 0] / per_sequence[:, 1].clamp(min=1)
    half = Z95 * means.std() / math.sqrt(len(means)) if len(means) > 1 else torch.tensor(math.nan)
    return {"perplexity": math.exp(total), "ci": [math.exp(total - half), math.exp(total + half)]}


def mean_with_ci(values: torch.Tensor) -> tuple[float, list[float]]:
    mean = values.mean().item()
    half = Z95 * values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, [mean - half, mean + half]
