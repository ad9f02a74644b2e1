"""stdlib/classification.loss against plain-torch references (float64), edge cases and extreme inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lossdsl import stdlib

from .helpers import assert_finite, check, low_precision


def extreme_logits(n: int = 6, c: int = 3) -> torch.Tensor:
    return torch.tensor([1e4, -1e4, 0.0])[torch.randint(0, 3, (n, c))]


# ---- sigmoid_focal_loss: torchvision.ops.sigmoid_focal_loss, term by term
def ref_sigmoid_focal(x, y, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss.mean()


@settings(max_examples=15, deadline=None)
@given(alpha=st.sampled_from([0.25, 0.9, -1.0]), gamma=st.sampled_from([0.0, 1.0, 2.0, 3.5]))
def test_sigmoid_focal_matches_torchvision(alpha: float, gamma: float) -> None:
    x, y = torch.randn(4, 5, dtype=torch.float64) * 3, torch.randint(0, 2, (4, 5)).double()
    check(stdlib.sigmoid_focal_loss(alpha=alpha, gamma=gamma), lambda a, b: ref_sigmoid_focal(a, b, alpha, gamma), x, y)


def test_sigmoid_focal_defaults_and_all_easy_samples() -> None:
    y = torch.randint(0, 2, (8,)).double()
    easy = (2 * y - 1) * 30.0  # confidently right everywhere
    out = check(stdlib.sigmoid_focal_loss(), ref_sigmoid_focal, easy, y)
    assert 0 <= out.item() < 1e-20


@low_precision
def test_sigmoid_focal_extreme_logits(dtype: torch.dtype) -> None:
    x = extreme_logits()
    assert_finite(stdlib.sigmoid_focal_loss(), x, torch.randint(0, 2, x.shape).float(), dtype=dtype)


# ---- focal_loss (multi-class)
def ref_focal(x, y, alpha, gamma=2.0):
    lp = F.log_softmax(x, dim=1)
    lpt = lp.gather(1, y.unsqueeze(1)).squeeze(1)
    return (-alpha[y] * (1 - lpt.exp()) ** gamma * lpt).mean()


@settings(max_examples=10, deadline=None)
@given(c=st.integers(2, 5), gamma=st.sampled_from([0.0, 2.0, 0.5]), spatial=st.sampled_from([(), (3,), (2, 2)]))
def test_focal_matches_reference(c: int, gamma: float, spatial: tuple) -> None:
    x = torch.randn(3, c, *spatial, dtype=torch.float64)
    y = torch.randint(0, c, (3, *spatial))
    alpha = torch.rand(c, dtype=torch.float64)
    check(stdlib.focal_loss(alpha=alpha, gamma=gamma), lambda a, b: ref_focal(a, b, alpha, gamma), x, y)


def test_focal_gamma_zero_is_cross_entropy_and_one_class_is_zero() -> None:
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    check(stdlib.focal_loss(gamma=0.0), F.cross_entropy, x, y)
    one = stdlib.focal_loss()(torch.randn(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    assert one.item() == 0.0


@low_precision
def test_focal_extreme_logits(dtype: torch.dtype) -> None:
    assert_finite(stdlib.focal_loss(), extreme_logits(), torch.randint(0, 3, (6,)), dtype=dtype)


# ---- label_smoothing_cross_entropy: the textbook snippet (smoothing / (K - 1) off the target)
def ref_label_smoothing(x, y, smoothing=0.1):
    log_probs = F.log_softmax(x, dim=-1)
    true_dist = torch.full_like(log_probs, smoothing / (x.shape[1] - 1))
    true_dist.scatter_(1, y.unsqueeze(1), 1.0 - smoothing)
    return torch.mean(torch.sum(-true_dist * log_probs, dim=-1))


@settings(max_examples=10, deadline=None)
@given(c=st.integers(2, 6), smoothing=st.sampled_from([0.0, 0.1, 0.5]))
def test_label_smoothing_matches_textbook(c: int, smoothing: float) -> None:
    x, y = torch.randn(4, c, dtype=torch.float64), torch.randint(0, c, (4,))
    module = stdlib.label_smoothing_cross_entropy(smoothing=smoothing)
    check(module, lambda a, b: ref_label_smoothing(a, b, smoothing), x, y)
    # the same as torch's label_smoothing (smoothing / K over all classes) at smoothing * K / (K - 1)
    if smoothing * c / (c - 1) <= 1:
        check(module, lambda a, b: F.cross_entropy(a, b, label_smoothing=smoothing * c / (c - 1)), x, y)


def test_label_smoothing_single_class_is_zero() -> None:
    x = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    out = stdlib.label_smoothing_cross_entropy()(x, torch.zeros(3, dtype=torch.long))
    assert out.item() == 0.0
    assert torch.equal(torch.autograd.grad(out, x)[0], torch.zeros_like(x))


@low_precision
def test_label_smoothing_extreme_logits(dtype: torch.dtype) -> None:
    assert_finite(stdlib.label_smoothing_cross_entropy(), extreme_logits(), torch.randint(0, 3, (6,)), dtype=dtype)


# ---- weighted_bce: torch's pos_weight, rescaled by the negative weight
@settings(max_examples=10, deadline=None)
@given(pos=st.integers(1, 1000), neg=st.integers(1, 1000))
def test_weighted_bce_matches_pos_weight(pos: int, neg: int) -> None:
    x, y = torch.randn(6, dtype=torch.float64) * 2, torch.randint(0, 2, (6,)).double()
    w1, w0 = (pos + neg) / (2 * pos), (pos + neg) / (2 * neg)

    def ref(a, b):
        return w0 * F.binary_cross_entropy_with_logits(a, b, pos_weight=torch.tensor(w1 / w0, dtype=a.dtype))

    check(stdlib.weighted_bce(pos_count=pos, neg_count=neg), ref, x, y)


def test_weighted_bce_balanced_counts_is_plain_bce() -> None:
    x, y = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    check(stdlib.weighted_bce(pos_count=7, neg_count=7), F.binary_cross_entropy_with_logits, x, y)


@low_precision
def test_weighted_bce_extreme_logits(dtype: torch.dtype) -> None:
    x = extreme_logits()
    assert_finite(stdlib.weighted_bce(pos_count=1, neg_count=3), x, torch.randint(0, 2, x.shape).float(), dtype=dtype)


# ---- hinge_loss
def test_hinge_matches_reference() -> None:
    x = torch.tensor([-2.0, -0.5, 0.3, 0.7, 1.5, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    check(stdlib.hinge_loss(), lambda a, b: torch.clamp(1 - a * b, min=0).mean(), x, y)
    check(stdlib.hinge_loss(margin=2.0), lambda a, b: torch.clamp(2 - a * b, min=0).mean(), x, y)


def test_hinge_all_beyond_margin_is_zero() -> None:
    y = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    assert stdlib.hinge_loss()(3 * y, y).item() == 0.0


@low_precision
def test_hinge_extreme_inputs(dtype: torch.dtype) -> None:
    x = torch.tensor([1e4, -1e4, 0.0, 5e3])
    assert_finite(stdlib.hinge_loss(), x, torch.tensor([1.0, 1.0, -1.0, -1.0]), dtype=dtype)


# ---- poly1_cross_entropy (Leng et al.'s reference code)
def ref_poly1(x, y, epsilon=1.0):
    ce = F.cross_entropy(x, y, reduction="none")
    pt = (F.one_hot(y, x.shape[1]).to(x.dtype) * F.softmax(x, dim=1)).sum(dim=1)
    return (ce + epsilon * (1 - pt)).mean()


@pytest.mark.parametrize("epsilon", [1.0, -1.0, 2.5])
def test_poly1_matches_reference(epsilon: float) -> None:
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    check(stdlib.poly1_cross_entropy(epsilon=epsilon), lambda a, b: ref_poly1(a, b, epsilon), x, y)


def test_poly1_single_class_is_zero() -> None:
    assert stdlib.poly1_cross_entropy()(torch.randn(3, 1), torch.zeros(3, dtype=torch.long)).item() == 0.0


@low_precision
def test_poly1_extreme_logits(dtype: torch.dtype) -> None:
    assert_finite(stdlib.poly1_cross_entropy(), extreme_logits(), torch.randint(0, 3, (6,)), dtype=dtype)
