"""SSL losses as pure functions of projections, each tested against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2N samples: each z1[i] must pick z2[i] (and vice versa) among the other 2N - 1.

    l_i = -log exp(cos(z_i, z_j(i)) / t) / sum_{k != i} exp(cos(z_i, z_k) / t), averaged over 2N.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    positives = torch.arange(2 * n, device=z.device).roll(n)  # n..2n-1, then 0..n-1
    return F.cross_entropy(logits, positives)


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP (Radford et al. 2021): row i of ``a`` must pick row i of ``b`` among all of ``b``'s rows and vice
    versa, by cosine similarity x exp(``logit_scale``) (capped at 100, as CLIP); the two cross-entropies
    averaged."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = logit_scale.exp().clamp(max=100.0) * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def vicreg(
    z1: torch.Tensor, z2: torch.Tensor, sim_weight: float, var_weight: float, cov_weight: float,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg: sim * MSE(z1, z2) + var * mean hinge on the std of each dim + cov * off-diagonal covariance.

    The variance term is averaged over the two branches and the covariance term summed, as in lightly.
    """
    def variance(z: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        z = z - z.mean(dim=0)
        cov = z.T @ z / (n - 1)
        off_diagonal = cov - torch.diag(torch.diag(cov))
        return off_diagonal.pow(2).sum() / d

    return (
        sim_weight * F.mse_loss(z1, z2)
        + var_weight * 0.5 * (variance(z1) + variance(z2))
        + cov_weight * (covariance(z1) + covariance(z2))
    )


def nt_xent_with_queue(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float):
    """MoCo's InfoNCE: each query must pick its own key among the key and the queued ``negatives``.

    l_i = -log exp(cos(q_i, k_i) / t) / (exp(cos(q_i, k_i) / t) + sum_j exp(cos(q_i, n_j) / t)).
    """
    q, k, n = F.normalize(query, dim=1), F.normalize(key, dim=1), F.normalize(negatives, dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ n.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-mean cos(p_i, z_i), with no gradient through ``z`` (SimSiam, BYOL)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, C the cross-correlation of batch-standardised z."""
    n = z1.shape[0]
    c = ((z1 - z1.mean(0)) / z1.std(0)).T @ ((z2 - z2.mean(0)) / z2.std(0)) / n
    on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
    off_diagonal = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal


def masked_mse(reconstruction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor,
               average: str = "masked") -> torch.Tensor:
    """Squared error on the entries of ``loss_mask`` only: averaged over those entries (``masked``, the
    paper's definition), or over all entries (``all_entries``, Richter et al.'s code, whose weight on the
    masked entries so grows with the mask rate)."""
    squared = (reconstruction - target).pow(2) * loss_mask
    if average == "all_entries":
        return squared.mean()
    return squared.sum() / loss_mask.sum().clamp(min=1)
