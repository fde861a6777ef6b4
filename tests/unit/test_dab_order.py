"""The DAB-order loss of issue 11 (her2scope.engine.dab_order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from her2scope.engine.config import TrainConfig
from her2scope.engine.dab_order import DabOrderLoss, ordinal_latent, rank_score
from her2scope.errors import ConfigError
from her2scope.models.ordinal import CumulativeLinkHead, cumulative_log_probs
from her2scope.stain.augment import stain_basis


def _tiles(dab_levels: list[float], px: int = 8, h: float = 0.3) -> torch.Tensor:
    """Float [0, 1] tiles on the reference basis: hematoxylin ``h`` everywhere, DAB uniform at
    each level (one tile per level)."""
    b = stain_basis().double().numpy()
    out = []
    for d in dab_levels:
        conc = np.stack([np.full((px, px), h), np.full((px, px), d), np.zeros((px, px))])
        od = np.einsum("ij,ihw->jhw", b, conc)
        out.append((256.0 * np.exp(-od) - 1.0) / 255.0)
    return torch.from_numpy(np.stack(out)).float()


def _dab(x: torch.Tensor) -> np.ndarray:
    od = -torch.log((x.double() * 255.0 + 1.0) / 256.0)
    conc = torch.einsum("ij,njhw->nihw", torch.linalg.inv(stain_basis().double()).T, od)
    return conc[:, 1].mean(dim=(1, 2)).numpy()


def test_ordinal_latent_recovers_the_heads_score_exactly() -> None:
    z = torch.tensor([[-30.0], [-4.0], [-0.5], [0.0], [1.7], [6.0], [25.0]])
    thr = torch.tensor([-1.0, 0.5, 2.0])
    lp = cumulative_log_probs(z, thr)
    got = ordinal_latent(lp)
    # exact where the float32 probabilities can hold it; never out of order at the extremes
    np.testing.assert_allclose(got[1:-1].numpy(), (z[1:-1, 0] - thr[0]).numpy(), atol=1e-4)
    assert torch.all(got[1:] > got[:-1])
    assert torch.isfinite(got).all()


def test_rank_score_of_a_softmax_head_is_the_expected_class() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))
    np.testing.assert_allclose(rank_score(logits, "softmax").numpy(), [0.4, 1.6], atol=1e-6)


def test_pair_scales_only_dab_by_the_signed_factor() -> None:
    x = _tiles([0.0, 0.1, 0.2, 0.4])
    loss = DabOrderLoss(1.0, (1.5, 3.0), generator=torch.Generator().manual_seed(3))
    x2, logf = loss.pair(x)
    m = logf.abs()
    assert torch.all((m >= np.log(1.5) - 1e-6) & (m <= np.log(3.0) + 1e-6))
    d0, d1 = _dab(x), _dab(x2)
    # DAB scaled by exp(log f) (8-bit rounding aside); a tile without DAB gains none
    np.testing.assert_allclose(d1[1:], d0[1:] * logf[1:].exp().numpy(), rtol=0.06, atol=0.004)
    assert abs(d1[0]) < 0.004
    # hematoxylin untouched
    hb = stain_basis().double()
    od = -torch.log((x2.double() * 255.0 + 1.0) / 256.0)
    h = torch.einsum("ij,njhw->nihw", torch.linalg.inv(hb).T, od)[:, 0].mean(dim=(1, 2))
    np.testing.assert_allclose(h.numpy(), 0.3, atol=0.01)


def test_loss_has_no_gradient_for_a_tile_without_dab() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.head = CumulativeLinkHead(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.body(x.mean(dim=(2, 3)))))

    torch.manual_seed(0)
    net = Net()
    loss_fn = DabOrderLoss(1.0, (1.5, 3.0), generator=torch.Generator().manual_seed(0))
    x = _tiles([0.0, 0.0])
    x2, logf = loss_fn.pair(x)
    loss = loss_fn(net(x), net(x2), logf)
    loss.backward()
    grads = [p.grad.abs().max().item() for p in net.parameters() if p.grad is not None]
    assert max(grads) < 1e-6
    assert loss.item() == pytest.approx(np.log(2.0), abs=1e-5)


def test_order_loss_alone_teaches_a_score_that_rises_with_dab_below_the_training_range() -> None:
    """A tiny ordinal model whose score starts *falling* with DAB learns, from the order loss
    alone (no labels), to rank tiles by DAB — including levels far below those it trained on."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Softplus())
            self.head = CumulativeLinkHead(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # start anti-monotone: more DAB → lower score on this init
        rising = rank_score(net(_tiles([0.4])), "ordinal") > rank_score(
            net(_tiles([0.1])), "ordinal"
        )
        if bool(rising):
            net.head.score.weight.mul_(-1.0)
    probe = _tiles([0.01, 0.03, 0.06, 0.1])  # weak-assay levels, below the training tiles
    before = rank_score(net(probe), "ordinal").detach()
    assert not torch.all(before[1:] > before[:-1])

    loss_fn = DabOrderLoss(1.0, (1.25, 4.0), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    train = _tiles([0.15, 0.2, 0.3, 0.45, 0.6, 0.8])
    for _ in range(150):
        x2, logf = loss_fn.pair(train)
        out = net(torch.cat([train, x2]))
        loss = loss_fn(out[: len(train)], out[len(train) :], logf)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = rank_score(net(probe), "ordinal").detach()
    assert torch.all(after[1:] > after[:-1]), after


@pytest.mark.parametrize(
    ("weight", "rng"), [(-1.0, (1.25, 4.0)), (0.5, (0.8, 2.0)), (0.5, (3.0, 2.0)), (0.5, (2.0,))]
)
def test_bad_settings_are_refused_with_the_key(weight: float, rng: tuple[float, ...]) -> None:
    with pytest.raises((ConfigError, ValueError), match="dab_order"):
        if weight < 0:
            DabOrderLoss(weight, rng)
        else:
            TrainConfig(dab_order_weight=weight, dab_order_range=rng)
