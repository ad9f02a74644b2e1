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


LISTED = torch.tensor([[0, 2, 2], [3, 1, 0], [1, 1, 1]])  # [n, k] class lists over c = 4, with repeats


@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_a_sum_over_a_listed_one_hot_scatters(mode: str) -> None:
    """sum_k(v[n, k] * [c == t[n, k]]) keeps c: a scatter_add of v along c (repeats add up), checked with
    its gradients against the dense F.one_hot contraction it replaces."""
    module = lossdsl.compile("loss a(x[n, c], t[n, k]: index(c), v[n, k]):\n    sum_c(x * sum_k(v * [c == t]))",
                             reduction="none", mode=mode)
    x, v = X(), torch.randn(3, 3, dtype=D, requires_grad=True)
    ref = (x * (F.one_hot(LISTED, 4).to(D) * v[..., None]).sum(1)).sum(1)
    out = module(x, LISTED, v)
    assert_close(out, ref)
    for a, b in zip(grads(out, x, v), grads(ref, x, v), strict=True):
        assert_close(a, b)
    forward = module.loss.to_source().split("def forward(")[-1]
    assert "_scatter_sum(" in forward and "einsum" not in forward


def test_the_gradient_of_a_listed_gather_scatters() -> None:
    """d/dx of sum_k(x[n, t[n, k]])^2 reaches x through every listed class: the fused backward scatters
    2 s[n] along c (multilabel margin's and center loss's gradients), with no [n, c, k] one-hot."""
    module = lossdsl.compile("loss b(x[n, c], t[n, k]: index(c)):\n    sum_k(x[n, t[n, k]])^2", mode="fused")
    x = X()
    ref = (x.gather(1, LISTED).sum(1) ** 2).mean()
    assert_close(grads(module(x, LISTED), x)[0], grads(ref, x)[0])
    from lossdsl import fused

    source = fused._backward_class(module, ("x",), kernel=None).__lossdsl_source__.split("def forward(")[-1]
    assert "_scatter_sum(" in source and "einsum" not in source and "arange" not in source


def _triangle_ref(x: torch.Tensor, op: str, suffix: bool) -> torch.Tensor:
    """out[n, k] = op over m <= k (or m >= k) of x[n, m], one masked reduction per k."""
    cols = []
    for k in range(x.shape[1]):
        part = x[:, k:] if suffix else x[:, : k + 1]
        cols.append({"sum": part.sum(1), "prod": part.prod(1), "max": part.amax(1), "min": part.amin(1),
                     "logsumexp": torch.logsumexp(part, 1)}[op])
    return torch.stack(cols, 1)


@pytest.mark.parametrize("op", ["sum", "prod", "max", "min", "logsumexp"])
@pytest.mark.parametrize(("cond", "suffix"), [("m <= k", False), ("m >= k", True)])
@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_a_triangular_reduction_is_a_scan(op: str, cond: str, suffix: bool, mode: str) -> None:
    """op_{m <= k}(x[n, m]) is torch's cumulative op (a flipped one for m >= k), values and gradients equal
    to a reduction per k; no [n, k, m] mask is built."""
    module = lossdsl.compile(f"loss a(x[n, k], y[n, k]):\n    sum_k(y * {op}_{{{cond}}}(x[n, m]))",
                             reduction="none", mode=mode)
    x, y = torch.randn(3, 5, dtype=D, requires_grad=True), torch.randn(3, 5, dtype=D)
    ref = (y * _triangle_ref(x, op, suffix)).sum(1)
    out = module(x, y)
    assert_close(out, ref)
    assert_close(grads(out, x)[0], grads(ref, x)[0])
    body = module.loss.to_source().split("def forward(")[-1]
    assert "cum" in body and "arange" not in body
    if mode == "fused" and op == "sum":  # the gradient, sum_k([m <= k] y[n, k]), is the opposite scan
        from lossdsl import fused

        grad = fused._backward_class(module, ("x",), kernel=None).__lossdsl_source__.split("def forward(")[-1]
        assert "torch.cumsum" in grad and "arange" not in grad and "einsum" not in grad


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


RANKS = {  # sum_m over a pair of indicators: the stable rank, lowered to a sort
    "ascending": "loss r(v[n]):\n    sum_m([v[m] < v[n]] + [m < n and v[m] == v[n]])",
    "descending": "loss r(v[n]):\n    sum_m([v[m] > v[n]] + [m < n and v[m] == v[n]])",
    "of an expression": "loss r(v[n]):\n    sum_m([2 * v[m] > 2 * v[n]] + [v[n] == v[m] and n > m])",
}


def _pairwise_rank(v: torch.Tensor, descending: bool) -> torch.Tensor:
    """The definition, as an [n, n] comparison."""
    before = (v[:, None] > v[None, :]) if descending else (v[:, None] < v[None, :])
    earlier = torch.arange(len(v))[:, None] < torch.arange(len(v))[None, :]
    return (before | (earlier & (v[:, None] == v[None, :]))).sum(0).to(v.dtype)


@pytest.mark.parametrize("name", sorted(RANKS))
def test_stable_rank_is_a_sort_with_the_pairwise_values(name: str) -> None:
    nan, inf = float("nan"), float("inf")
    values = [[3.0, 1.0, 3.0, -0.0, 0.0, 2.0, 1.0], [nan, 1.0, nan, -inf, inf, 1.0, -inf, 0.5], [5.0], []]
    module = lossdsl.compile(RANKS[name], reduction="none")
    assert "_stable_rank(" in type(module).__lossdsl_source__
    for v in values:
        v = torch.tensor(v, dtype=torch.float64)
        assert torch.equal(module(v), _pairwise_rank(v, name != "ascending")), v


def test_ohem_keeps_the_hardest_without_a_pairwise_matrix() -> None:
    """OHEM's keep mask through the sort, against torch's topk of the per-sample cross-entropy (the values
    are distinct), in eager and fused mode; the rank itself has no gradient."""
    torch.manual_seed(0)
    x, y = torch.randn(300, 7, dtype=torch.float64), torch.randint(7, (300,))
    ce = F.cross_entropy(x, y, reduction="none")
    for mode in ("eager", "fused"):
        module = lossdsl.stdlib.ohem_cross_entropy(k=40, mode=mode)
        xs = x.clone().requires_grad_()
        assert "_stable_rank(" in type(module).__lossdsl_source__
        torch.testing.assert_close(module(xs, y), ce.topk(40).values.mean())
        xr = x.clone().requires_grad_()
        ref = F.cross_entropy(xr, y, reduction="none").topk(40).values.mean()
        assert_close(grads(module(xs, y), xs)[0], grads(ref, xr)[0])
