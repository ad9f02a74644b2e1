"""stdlib/regression.loss against plain-torch references (float64), edge cases and extreme inputs."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import stdlib

from .helpers import assert_finite, check, low_precision


def test_rmse_matches_reference() -> None:
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    check(stdlib.rmse_loss(), lambda a, b: torch.sqrt(F.mse_loss(a, b) + 1e-8), x, y)
    check(stdlib.rmse_loss(eps=0.0), lambda a, b: torch.sqrt(F.mse_loss(a, b)), x, y)


def test_rmse_is_a_scalar_whatever_the_reduction() -> None:
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert stdlib.rmse_loss(reduction="none")(x, y).shape == ()


def test_rmse_exact_prediction_has_finite_gradient() -> None:
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = stdlib.rmse_loss()(x, x.detach())
    assert math.isclose(out.item(), 1e-4)
    assert torch.equal(torch.autograd.grad(out, x)[0], torch.zeros_like(x))


@low_precision
def test_rmse_extreme_inputs(dtype: torch.dtype) -> None:
    assert_finite(stdlib.rmse_loss(), torch.tensor([100.0, -100.0, 0.0]), torch.tensor([-100.0, 100.0, 0.0]),
                  dtype=dtype)


def ref_log_cosh(x, y):
    return torch.log(torch.cosh(x - y)).mean()


def test_log_cosh_matches_the_formula() -> None:
    x, y = torch.randn(6, dtype=torch.float64) * 4, torch.randn(6, dtype=torch.float64)
    check(stdlib.log_cosh_loss(), ref_log_cosh, x, y)


def test_log_cosh_limits() -> None:
    small = stdlib.log_cosh_loss(reduction="none")(torch.tensor([1e-3], dtype=torch.float64), torch.zeros(1))
    assert math.isclose(small.item(), 0.5e-6, rel_tol=1e-6)
    big = stdlib.log_cosh_loss()(torch.tensor([1000.0], dtype=torch.float64), torch.zeros(1))  # cosh overflows
    assert math.isclose(big.item(), 1000 - math.log(2), rel_tol=1e-12)


@low_precision
def test_log_cosh_extreme_inputs(dtype: torch.dtype) -> None:
    assert_finite(stdlib.log_cosh_loss(), torch.tensor([1e4, -1e4, 0.0]), torch.tensor([-1e4, 0.0, 0.0]),
                  dtype=dtype)


def test_log_cosh_small_errors_keep_float32_precision() -> None:
    """The textbook |e| + softplus(-2|e|) - log 2 subtracts log 2 from log 2 + e^2/2: at e = 1e-4 in float32
    nothing of e^2/2 = 5e-9 survives. The stdlib's log(cosh(e)) is rewritten to log1p(2 sinh(e / 2)^2)
    below |e| = 20."""
    e = torch.tensor([1e-4, -3e-3, 0.2, 5.0, 30.0], dtype=torch.float32, requires_grad=True)
    out = stdlib.log_cosh_loss(reduction="none")(e, torch.zeros(5))
    (g,) = torch.autograd.grad(out.sum(), e)
    e64 = e.detach().double()
    want = torch.log(torch.cosh(e64))
    torch.testing.assert_close(out.double(), want, rtol=4 * 2**-24, atol=0)
    torch.testing.assert_close(g.double(), torch.tanh(e64), rtol=4 * 2**-24, atol=0)
    naive = lossdsl.compile("loss l(e):\n    |e| + softplus(-2*|e|) - log(2)\n", reduction="none")
    assert naive(e)[0].item() == pytest.approx(5e-9, rel=1e-6)  # the rewrite rule recognises that form too


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_log_cosh_is_within_a_few_ulp_of_mpmath(dtype: torch.dtype) -> None:
    """Value and gradient (tanh e) at 1201 errors from 1e-6 to 1e4 in magnitude, both signs, across the
    rule's switch at |e| = 1, against 50-digit mpmath evaluated at the rounded inputs."""
    mags = torch.cat([torch.logspace(-6, 4, 1000, dtype=torch.float64), torch.linspace(0.9, 1.1, 200).double()])
    e = torch.cat([mags, -mags, torch.zeros(1, dtype=torch.float64)]).to(dtype)
    e = e[torch.isfinite(e)].requires_grad_(True)
    out = stdlib.log_cosh_loss(reduction="none")(e, torch.zeros_like(e))
    (g,) = torch.autograd.grad(out.sum(), e)
    with mpmath.workdps(50):
        pts = [mpmath.mpf(v) for v in e.detach().double().tolist()]
        want = torch.tensor([float(mpmath.log(mpmath.cosh(v))) for v in pts], dtype=torch.float64)
        slope = torch.tensor([float(mpmath.tanh(v)) for v in pts], dtype=torch.float64)
    info = torch.finfo(dtype)
    normal = want > info.tiny * 2**10  # below, e^2/2 is subnormal or underflows in the dtype itself
    ulps = ((out.detach().double() - want).abs() / (want.abs() * info.eps))[normal]
    assert float(ulps.max()) <= 3, float(ulps.max())
    gulps = ((g.double() - slope).abs() / (slope.abs().clamp_min(info.tiny) * info.eps))[slope.abs() > info.tiny]
    assert float(gulps.max()) <= 3, float(gulps.max())
