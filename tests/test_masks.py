"""masks.py: one-hot terms scatter and off-diagonal masks set a diagonal, with torch's values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from tests.conftest import assert_close, grads
from tests.test_emit import D, X, Y

ONE_HOT = {  # formulas with a one-hot [c == y] term: the emitter scatters instead of comparing densely
    "minus": ("loss a(x[n, c], y[n]: index(c)):\n    sum_c((x - [c == y])^2)",
              lambda x, y: ((x - F.one_hot(y, 4)) ** 2).sum(1)),
    "scaled": ("loss a(x[n, c], y[n]: index(c); s = 3):\n    sum_c(x^2 - s * x[n, 0] * [c == y])",
               lambda x, y: (x**2).sum(1) - 3 * x[:, 0]),
    "ignored": ("loss a(x[n, c], y[n]: index(c); ignore_index: int = -100):\n"
                "    where(y != ignore_index, 1, 2) * sum_c((x - [c == y])^2)",
                lambda x, y: torch.where(y >= 0, 1, 2) * ((x - _one_hot_or_zero(y)) ** 2).sum(1)),
}


def _one_hot_or_zero(y: torch.Tensor, c: int = 4) -> torch.Tensor:
    """F.one_hot with an all-zero row for an ignored (negative) target."""
    return F.one_hot(y.clamp(min=0), c) * (y >= 0)[:, None]


@pytest.mark.parametrize("name", sorted(ONE_HOT))
@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_one_hot_terms_scatter_and_match_torch(name: str, mode: str) -> None:
    """Value and gradient (autograd through the scatter, or the symbolic one in fused mode) against a
    dense F.one_hot reference, with an ignored row where the loss allows one."""
    text, ref = ONE_HOT[name]
    module = lossdsl.compile(text, reduction="none", mode=mode)
    x, y = X(), Y()
    if name == "ignored":
        y[1] = -100
    out = module(x, y)
    assert_close(out, ref(x, y))
    assert_close(grads(out, x)[0], grads(ref(x, y), x)[0])
    source = module.loss.to_source()
    assert "arange" not in source.split("class ")[-1] and "scatter" in source


OFF_DIAGONAL = {  # [i != j] masks over one axis: the emitter sets a diagonal instead of comparing densely
    "bracket": ("loss a(x[i, j]):\n    sum_j([i != j] * x^2)",
                lambda x: ((x**2) * (1 - _eye(x))).sum(1)),
    "conditional_sum": ("loss a(x[i, j]):\n    sum_{j != i}(exp(x))",
                        lambda x: (torch.exp(x) * (1 - _eye(x))).sum(1)),
    "conditional_max": ("loss a(x[i, j]):\n    max_{j != i}(x)",
                        lambda x: x.masked_fill(_eye(x).bool(), -torch.inf).amax(1)),
    "logsumexp": ("loss a(x[i, j]):\n    logsumexp_{j != i}(x)",
                  lambda x: torch.logsumexp(x.masked_fill(_eye(x).bool(), -torch.inf), 1)),
    "where": ("loss a(x[i, j]):\n    sum_j(where(i != j, x, 3) + where(i == j, -1, x))",
              lambda x: (torch.where(_eye(x).bool(), 2.0, 2 * x)).sum(1)),
}


def _eye(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(*x.shape, dtype=D)


@pytest.mark.parametrize("name", sorted(OFF_DIAGONAL))
@pytest.mark.parametrize("mode", ["eager", "fused"])
@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_off_diagonal_masks_set_the_diagonal_and_match_torch(name: str, mode: str, shape: tuple) -> None:
    """Value and gradient against a dense eye() reference, square or not; the bracket is 0 on the diagonal
    even where the masked value is infinite (x = inf there would make a dense mask multiply NaN)."""
    text, ref = OFF_DIAGONAL[name]
    module = lossdsl.compile(text, reduction="none", mode=mode)
    x = torch.randn(shape, dtype=D).requires_grad_()
    out = module(x)
    assert_close(out, ref(x))
    assert_close(grads(out, x)[0], grads(ref(x), x)[0])
    source = module.loss.to_source()
    assert "_diagonal_set" in source and "arange" not in source.split("class ")[-1]
    if name == "bracket":
        inf_diag = torch.diag(torch.full((4,), torch.inf, dtype=D)) + torch.ones(4, 4, dtype=D)
        assert torch.isfinite(module(inf_diag)).all()
