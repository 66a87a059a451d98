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
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)


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
