"""Ordinal (cumulative-link) head: monotone expected score, proper probabilities, model hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from her2scope.errors import ConfigError
from her2scope.models import create_model
from her2scope.models.ordinal import (
    CumulativeLinkHead,
    cumulative_log_probs,
    expected_score,
    make_ordinal,
)


def test_expected_score_is_monotone_in_the_score_on_hand_built_inputs() -> None:
    """Features along the score direction: a larger projection never lowers the expected grade."""
    torch.manual_seed(0)
    head = CumulativeLinkHead(in_features=4, num_classes=3)
    with torch.no_grad():
        head.score.weight.copy_(torch.tensor([[1.0, -0.5, 0.0, 2.0]]))
        head.score.bias.zero_()
        head.raw_gaps.copy_(torch.tensor([0.3]))  # arbitrary learnt-looking thresholds
        head.first_threshold.copy_(torch.tensor([-0.7]))
    direction = torch.tensor([1.0, -0.5, 0.0, 2.0])
    ts = torch.linspace(-1, 1, 49)[:, None]
    x = ts * direction[None, :] + torch.tensor([0.0, 0.0, 5.0, 0.0])  # the 3rd feature is ignored
    logp = head(x)
    e = expected_score(logp).detach()
    assert torch.all(e[1:] > e[:-1]), e
    assert float(e[0]) < 0.05 and float(e[-1]) > 1.95
    np.testing.assert_allclose(logp.exp().sum(1).detach().numpy(), 1.0, atol=1e-6)
    # softmax of the outputs gives the probabilities back (they are log probabilities)
    np.testing.assert_allclose(
        torch.softmax(logp, 1).detach().numpy(), logp.exp().detach().numpy(), atol=1e-6
    )


def test_cumulative_log_probs_match_the_definition_and_stay_finite() -> None:
    z = torch.tensor([[-50.0], [-1.0], [0.0], [0.4], [3.0], [60.0]])
    th = torch.tensor([-0.5, 0.5, 2.0])  # four classes
    logp = cumulative_log_probs(z, th)
    assert torch.isfinite(logp).all()
    s = torch.sigmoid(z - th[None, :])  # P(y > k)
    want = torch.cat([1 - s[:, :1], s[:, :-1] - s[:, 1:], s[:, -1:]], dim=1)
    np.testing.assert_allclose(logp.exp().numpy(), want.numpy(), atol=1e-6)
    # two classes: a logistic regression
    two = cumulative_log_probs(z, th[:1]).exp()
    np.testing.assert_allclose(two[:, 1].numpy(), torch.sigmoid(z[:, 0] + 0.5).numpy(), atol=1e-6)


def test_thresholds_stay_ordered_whatever_the_parameters() -> None:
    head = CumulativeLinkHead(8, 4)
    with torch.no_grad():
        head.raw_gaps.copy_(torch.tensor([-30.0, 5.0]))
    th = head.thresholds()
    assert torch.all(th[1:] > th[:-1])
    assert torch.isfinite(head(torch.randn(5, 8))).all()


def test_create_model_ordinal_builds_and_trains_one_step() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet", 3, pretrained=False, input_px=64, objective="ordinal")
    assert isinstance(model.classifier[6], CumulativeLinkHead)
    x = torch.randn(4, 3, 64, 64)
    out = model(x)
    assert out.shape == (4, 3)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 1]))
    loss.backward()
    assert model.classifier[6].raw_gaps.grad is not None
    with pytest.raises(ConfigError, match="softmax or ordinal"):
        create_model("alexnet", 3, objective="regression")


def test_make_ordinal_on_a_plain_attribute_and_a_non_linear_is_an_error() -> None:
    net = torch.nn.Module()
    net.fc = torch.nn.Linear(3, 4)
    make_ordinal(net, "fc")
    assert isinstance(net.fc, CumulativeLinkHead) and net.fc.num_classes == 4
    with pytest.raises(TypeError, match="not a Linear"):
        make_ordinal(net, "fc")
