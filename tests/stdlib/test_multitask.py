"""stdlib/multitask.loss against plain-torch references (float64), edge cases and extreme inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossdsl import stdlib

from .helpers import assert_finite, check, leaves, low_precision


def extreme_logits(n: int = 6, c: int = 3) -> torch.Tensor:
    return torch.tensor([1e4, -1e4, 0.0])[torch.randint(0, 3, (n, c))]


def check_learnable(module: torch.nn.Module, ref, init: torch.Tensor, *inputs) -> None:
    """Value and gradients (inputs and the learnable parameter) against a reference taking the parameter."""
    mine, theirs = leaves(inputs), leaves(inputs)
    param = init.clone().requires_grad_(True)
    out, expected = module(*mine), ref(*theirs, param)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    g1 = torch.autograd.grad(out, [*mine, *module.parameters()])
    g2 = torch.autograd.grad(expected, [*theirs, param])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ---- uncertainty and dynamic weighting
def test_uncertainty_weighting_matches_kendall() -> None:
    losses, init = torch.rand(3, dtype=torch.float64) * 5, torch.randn(3, dtype=torch.float64)
    module = stdlib.uncertainty_weighting(log_var=init)
    check_learnable(module, lambda ls, s: (torch.exp(-s) * ls + s).sum(), init, losses)


def test_uncertainty_weighting_starts_as_the_plain_sum_and_learns() -> None:
    module = stdlib.uncertainty_weighting(t=2)
    losses = torch.tensor([4.0, 0.5], dtype=torch.float64)
    assert module(losses).item() == pytest.approx(4.5)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        module(losses).backward()
        opt.step()
    s = module.log_var.detach()
    assert s[0] > s[1]  # the larger loss gets the larger variance, hence the smaller weight


def test_dynamic_weighting_matches_reference() -> None:
    losses, init = torch.rand(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    module = stdlib.dynamic_weighting(w=init, temperature=0.5)
    check_learnable(module, lambda ls, w: (F.softmax(w / 0.5, dim=0) * ls).sum(), init, losses)
    assert stdlib.dynamic_weighting(t=4)(losses).item() == pytest.approx(losses.mean().item(), rel=1e-12)


@low_precision
@pytest.mark.parametrize("name", ["uncertainty_weighting", "dynamic_weighting"])
def test_weightings_extreme_losses(name: str, dtype: torch.dtype) -> None:
    module = getattr(stdlib, name)(t=3)
    assert_finite(module, torch.tensor([1e4, 0.0, 1e-4]), dtype=dtype)


# ---- distillation
def ref_distillation(s, t, y, alpha=0.3, temperature=4.0):
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("alpha, temperature", [(0.3, 4.0), (0.0, 1.0), (1.0, 2.0), (0.5, 10.0)])
def test_distillation_matches_hinton(alpha: float, temperature: float) -> None:
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (5,))
    module = stdlib.distillation_loss(alpha=alpha, temperature=temperature)
    check(module, lambda a, b, c: ref_distillation(a, b, c, alpha, temperature), s, t, y)


def test_distillation_student_equal_to_teacher_leaves_only_the_ce() -> None:
    s, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 3, (4,))
    out = stdlib.distillation_loss()(s, s.clone(), y)
    assert out.item() == pytest.approx(0.3 * F.cross_entropy(s, y).item(), rel=1e-12)


@low_precision
def test_distillation_extreme_logits(dtype: torch.dtype) -> None:
    assert_finite(stdlib.distillation_loss(), extreme_logits(), extreme_logits(), torch.randint(0, 3, (6,)),
                  dtype=dtype)


# ---- OHEM
def ref_ohem(x, y, k):
    ce = F.cross_entropy(x, y, reduction="none")
    return ce.topk(min(k, len(ce))).values.mean()


@pytest.mark.parametrize("k", [1, 3, 8, 100])
def test_ohem_matches_topk(k: int) -> None:
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,))
    check(stdlib.ohem_cross_entropy(k=k), lambda a, b: ref_ohem(a, b, k), x, y)


def test_ohem_ties_keep_exactly_k_and_all_easy_samples() -> None:
    x = torch.tensor([[2.0, 0.0]] * 6, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(6, dtype=torch.long)
    out = stdlib.ohem_cross_entropy(k=2)(x, y)
    assert out.item() == pytest.approx(F.cross_entropy(x[:1], y[:1]).item(), rel=1e-12)
    assert (torch.autograd.grad(out, x)[0].abs().sum(1) > 0).tolist() == [True, True, False, False, False, False]
    easy = torch.tensor([[40.0, -40.0]] * 3, dtype=torch.float64)
    assert stdlib.ohem_cross_entropy(k=2)(easy, y[:3]).item() < 1e-30


@low_precision
def test_ohem_extreme_logits(dtype: torch.dtype) -> None:
    assert_finite(stdlib.ohem_cross_entropy(k=3), extreme_logits(), torch.randint(0, 3, (6,)), dtype=dtype)


# ---- Faster R-CNN
def ref_faster_rcnn(x, y, r, g, lam=1.0, beta=1.0):
    fg = y >= 1
    box = F.smooth_l1_loss(r[fg], g[fg], beta=beta, reduction="sum") / len(y)
    return F.cross_entropy(x, y) + lam * box


@pytest.mark.parametrize("lam, beta", [(1.0, 1.0), (2.0, 1 / 9)])
def test_faster_rcnn_matches_reference(lam: float, beta: float) -> None:
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 2, 1])
    r, g = torch.randn(6, 4, dtype=torch.float64) * 2, torch.randn(6, 4, dtype=torch.float64)
    module = stdlib.faster_rcnn_loss(lambda_=lam, beta=beta)
    check(module, lambda *a: ref_faster_rcnn(*a, lam, beta), x, y, r, g)


def test_faster_rcnn_all_background_is_the_ce() -> None:
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    r = leaves([torch.randn(4, 4, dtype=torch.float64)])[0]
    out = stdlib.faster_rcnn_loss()(x, y, r, torch.zeros(4, 4))
    assert out.item() == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-12)
    assert not torch.autograd.grad(out, r)[0].any()


@low_precision
def test_faster_rcnn_extreme_inputs(dtype: torch.dtype) -> None:
    r = torch.tensor([[1e4, -1e4, 0.0, 1.0]] * 6)
    assert_finite(stdlib.faster_rcnn_loss(), extreme_logits(), torch.tensor([0, 1, 2, 0, 1, 2]), r,
                  torch.zeros(6, 4), dtype=dtype)
