"""QK locking (method.md section 4): heads whose queries all point at the sink's fixed key.

Pure tensor functions. Dh head dim. After RMSNorm a token dominated by dim c is nearly a scaled
basis vector, so its key in every head is nearly W_K[:, c]: one fixed direction. A head is
"locked" when its queries' dominant direction aligns with that key, so q . k_sink > 0 for nearly
every query.
"""

from __future__ import annotations

import math

import torch

# Share of queries with q . k_sink > 0 when the key's direction is unrelated to them (a coin flip): the null
# that a locked head's positive share is set against.
NULL_POSITIVE_SHARE = 0.5


def top_principal_direction(second_moment: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Unit top eigenvector of the (uncentred) query second moment E[q q^T], signed along E[q].

    second_moment: (..., Dh, Dh) symmetric; mean: (..., Dh). Returns (..., Dh) float64. Uncentred
    is our choice: the common direction all queries share is what makes q . k_sink positive, and
    centring would remove exactly that.
    """
    _, vectors = torch.linalg.eigh(second_moment.double())
    top = vectors[..., -1]  # eigh sorts eigenvalues ascending
    sign = torch.sign((top * mean.double()).sum(-1, keepdim=True))
    return top * torch.where(sign == 0, torch.ones_like(sign), sign)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Signed cosine similarity over the last dim, float64; 0 where either vector is zero."""
    a, b = a.double(), b.double()
    denom = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return (a * b).sum(-1) / denom.clamp_min(1e-300)


def positive_dot_count(queries: torch.Tensor, sink_key: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Number of queries with q . k_sink > 0, per head.

    queries: (B, H, T, Dh); sink_key: (B, H, Dh) each sequence's key at its sink token; mask:
    (B, T) bool, the queries to count. Returns (H,) float64.
    """
    dots = torch.einsum("bhtd,bhd->bht", queries.float(), sink_key.float())
    return ((dots > 0) & mask[:, None]).sum((0, 2)).double()


def key_rows(k_weight: torch.Tensor, n_kv: int, head_dim: int, n_heads: int) -> torch.Tensor:
    """Split an (n_kv * Dh, D) key projection into per-query-head blocks (H, Dh, D) (GQA expanded)."""
    per_kv = k_weight.reshape(n_kv, head_dim, k_weight.shape[-1])
    return per_kv.repeat_interleave(n_heads // n_kv, dim=0)


def locked(positive_share: float, alignment: float | None, head_dim: int, min_share: float, alignment_z: float) -> bool:
    """Whether a head is QK-locked: most queries point at the first token's key (share >= ``min_share``;
    null :data:`NULL_POSITIVE_SHARE`) and their top direction aligns with the massive dim's key row beyond chance
    (alignment >= ``alignment_z`` / sqrt(head_dim): a random direction's cosine has std ~1/sqrt(head_dim))."""
    return positive_share >= min_share and (alignment or 0.0) >= alignment_z / math.sqrt(head_dim)
