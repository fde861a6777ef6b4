"""Ordinal (cumulative-link) classifier head: one shared score and K−1 ordered thresholds.

HER2 grades are ordered (1+ < 2+ < 3+), and under a shift in assay or scanner a model should at
least keep that order. :class:`CumulativeLinkHead` replaces a K-way linear head with a single
score ``z = w·x + b`` and thresholds ``θ_1 < … < θ_{K−1}`` (cumulative logit / proportional-odds
model, McCullagh 1980; CORAL's shared-weight design, Cao et al. 2020):

    P(y > k | x) = σ(z − θ_k),   k = 1 … K−1

It returns **log class probabilities** (K columns). They are ordinary logits for everything
downstream: ``softmax`` of them gives the class probabilities back exactly, cross-entropy on them
is the cumulative-link negative log-likelihood, and prediction, evaluation and Grad-CAM work
unchanged. The expected score ``Σ_k P(y > k)`` is monotone increasing in ``z`` by construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Smallest gap between neighbouring thresholds (keeps every middle class's probability > 0).
MIN_GAP = 1e-3
#: Initial gap between neighbouring thresholds (in units of the score).
INIT_GAP = 2.0


class CumulativeLinkHead(nn.Module):
    """``in_features`` → log probabilities of ``num_classes`` ordered classes (see module doc)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"an ordinal head needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.score = nn.Linear(in_features, 1)
        k = num_classes - 1
        first = -INIT_GAP * (k - 1) / 2  # thresholds start centred on 0, INIT_GAP apart
        raw_gap = math.log(math.expm1(INIT_GAP - MIN_GAP))  # softplus⁻¹
        self.first_threshold = nn.Parameter(torch.tensor([first]))
        self.raw_gaps = nn.Parameter(torch.full((k - 1,), raw_gap))

    def thresholds(self) -> torch.Tensor:
        """The K−1 thresholds, strictly increasing."""
        gaps = F.softplus(self.raw_gaps) + MIN_GAP
        return torch.cat([self.first_threshold, self.first_threshold + torch.cumsum(gaps, 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.score(x)  # (N, 1)
        return cumulative_log_probs(z, self.thresholds())


def cumulative_log_probs(z: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Log class probabilities (N, K) of scores ``z`` (N, 1) under increasing ``thresholds``
    (K−1); numerically stable (no log of a difference of probabilities)."""
    a = z.float() - thresholds.float()[None, :]  # (N, K−1): logit of P(y > k)
    first = F.logsigmoid(-a[:, :1])  # P(y = 0) = 1 − σ(z − θ_1)
    last = F.logsigmoid(a[:, -1:])  # P(y = K−1) = σ(z − θ_{K−1})
    if a.shape[1] == 1:
        return torch.cat([first, last], dim=1)
    # P(y = k) = σ(a_{k−1}) − σ(a_k) = σ(a_{k−1}) · σ(−a_k) · (1 − e^{a_k − a_{k−1}})
    lo, hi = a[:, :-1], a[:, 1:]
    middle = F.logsigmoid(lo) + F.logsigmoid(-hi) + torch.log1p(-torch.exp(hi - lo))
    return torch.cat([first, middle, last], dim=1)


def expected_score(log_probs: torch.Tensor) -> torch.Tensor:
    """Expected class index ``Σ_k k·p_k`` (N,) from log probabilities (N, K)."""
    k = torch.arange(log_probs.shape[1], dtype=log_probs.dtype, device=log_probs.device)
    return (log_probs.exp() * k).sum(dim=1)


def make_ordinal(model: nn.Module, head_path: str) -> nn.Module:
    """Replace the linear layer at dotted ``head_path`` (e.g. ``classifier.6``, ``fc``) with a
    :class:`CumulativeLinkHead` of the same input width and class count; returns ``model``."""
    old = model.get_submodule(head_path)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"ordinal head: '{head_path}' is {type(old).__name__}, not a Linear layer")
    parent_path, _, attr = head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = CumulativeLinkHead(old.in_features, old.out_features)
    if isinstance(parent, nn.Sequential) and attr.isdigit():
        parent[int(attr)] = head
    else:
        setattr(parent, attr, head)
    return model
