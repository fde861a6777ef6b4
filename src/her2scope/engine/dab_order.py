"""DAB-order loss: a tile with more membrane DAB must not score lower (issue 11).

HER2 grades are ordered by how much DAB the membranes carry. A model trained at one centre only
ever sees that centre's DAB levels with their labels, so nothing tells it how to rank tiles
*below* (or above) that range: at a centre whose assay shows 2–4× less DAB, every 1+ and 2+ tile
falls where the model's score is flat, and it ranks them alike.

:class:`DabOrderLoss` gives it that signal without inventing labels. For each training tile it
makes a copy whose DAB concentration (on the stain-normalised basis, in optical-density space,
:func:`her2scope.stain.augment.scale_concentrations`) is scaled by a factor ``f`` — down or up,
``|log f|`` log-uniform in ``[log lo, log hi]`` — and asks, with a logistic ranking loss, that the
copy score lower when ``f < 1`` and higher when ``f > 1``:

    loss = weight · mean softplus(−sign(log f) · (s(copy) − s(tile)))

The score ``s`` is the ordinal head's latent score (``z − θ_1``, recovered exactly from the log
probabilities; unbounded, so it does not saturate where the model is already sure of 1+), or the
expected class index for a softmax head. A tile without DAB is unchanged by the scaling, its two
scores are equal and the loss has no gradient for it; only the order is asked for, never a label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from her2scope.errors import ConfigError


def ordinal_latent(log_probs: torch.Tensor) -> torch.Tensor:
    """``z − θ_1`` (N,) of a cumulative-link head from its log probabilities (N, K):
    ``logit P(y > 0) = log(1 − p_0) − log p_0``, computed without cancellation."""
    lp0 = log_probs[:, 0].float().clamp(max=-1e-7)
    return torch.log(-torch.expm1(lp0)) - lp0


def rank_score(logits: torch.Tensor, objective: str) -> torch.Tensor:
    """The monotone per-tile score the order is asked of: the ordinal latent score, or the
    expected class index of a softmax head."""
    if objective == "ordinal":
        return ordinal_latent(logits)
    p = torch.softmax(logits.float(), dim=1)
    k = torch.arange(p.shape[1], dtype=p.dtype, device=p.device)
    return (p * k).sum(dim=1)


class DabOrderLoss:
    """Pairs of (tile, DAB-scaled tile) and the logistic ranking loss on their scores.

    ``factor_range`` = ``(lo, hi)`` with ``1 < lo <= hi``: the factor is ``m`` or ``1/m`` (each
    with probability ½) with ``log m`` uniform in ``[log lo, log hi]``. Randomness comes from
    torch's global RNG (or ``generator``), so a seeded run repeats.
    """

    def __init__(
        self,
        weight: float,
        factor_range: Sequence[float] = (1.25, 4.0),
        objective: str = "ordinal",
        stain_matrix: Sequence[Sequence[float]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        from her2scope.engine.config import order_range_problem
        from her2scope.stain.augment import stain_basis

        message = order_range_problem(tuple(float(v) for v in factor_range))
        if message:
            raise ConfigError(message)
        lo, hi = (float(v) for v in factor_range)
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"train.dab_order_weight={weight}: must be > 0 to use the loss")
        self.weight, self.lo, self.hi = float(weight), lo, hi
        self.objective = objective
        self.basis = stain_basis(stain_matrix)
        self.generator = generator

    def log_factors(self, n: int, device: torch.device) -> torch.Tensor:
        """(n,) signed log factors: ``±log m``."""
        u = torch.rand(n, generator=self.generator)
        mag = math.log(self.lo) + (math.log(self.hi) - math.log(self.lo)) * u
        sign = torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0)
        return (sign * mag).to(device)

    def pair(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DAB-scaled copies of a float RGB batch in [0, 1] and their signed log factors."""
        from her2scope.stain.augment import scale_concentrations

        logf = self.log_factors(x01.shape[0], x01.device)
        ones = torch.ones_like(logf)
        factors = torch.stack([ones, logf.exp(), ones], 1)  # H, DAB, residual
        return scale_concentrations(x01, factors, self.basis), logf

    def __call__(
        self, logits: torch.Tensor, logits_pair: torch.Tensor, log_factors: torch.Tensor
    ) -> torch.Tensor:
        """Weighted mean logistic ranking loss of the copies against their tiles."""
        s = rank_score(logits, self.objective)
        s_pair = rank_score(logits_pair, self.objective)
        margin = torch.sign(log_factors).to(s.dtype) * (s_pair - s)
        return self.weight * F.softplus(-margin).mean()
