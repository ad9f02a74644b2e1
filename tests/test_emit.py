"""One test per row of LANGUAGE.md's expression table: the compiled value and gradient against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from tests.conftest import AtenOps, TorchCalls, assert_close, grads

D = torch.float64


def X(n: int = 3, c: int = 4) -> torch.Tensor:
    return torch.randn(n, c, dtype=D).requires_grad_()


def Y(n: int = 3, c: int = 4) -> torch.Tensor:
    return torch.randint(0, c, (n,))


ROWS = {
    "arithmetic": ("loss a(x[n, c]):\n    sum_c(-(x + 1) * x / 2 - x^2 ** 1 + 2^-1)", lambda x, y: (
        -(x + 1) * x / 2 - x**2 + 0.5).sum(1)),
    "power_right_assoc_unary": ("loss a(x[n, c]):\n    sum_c(-x^2 + 2^x^2)",
                                lambda x, y: (-(x**2) + 2 ** (x**2)).sum(1)),
    "conditions": ("loss a(x[n, c]):\n    sum_c([x > 0 and not x > 1 or x <= -2] + [x != 0.5] * [x >= 0] * [x == x])",
                   lambda x, y: ((((x > 0) & ~(x > 1)) | (x <= -2)).to(D) + ((x != 0.5) & (x >= 0)).to(D)).sum(1)),
    "iverson_onehot": ("loss a(x[n, c], y[n]: index(c)):\n    sum_c([c == y] * x)",
                       lambda x, y: x.gather(1, y[:, None])[:, 0]),
    "choice": ("loss a(x[n, c]):\n    sum_c((x if x > 0 else 2*x) + where(x < 1, x^2, 1))",
               lambda x, y: (torch.where(x > 0, x, 2 * x) + torch.where(x < 1, x**2, 1.0)).sum(1)),
    "abs_bars": ("loss a(x[n, c]):\n    sum_c(|x - 1| + abs(x))", lambda x, y: ((x - 1).abs() + x.abs()).sum(1)),
    "index_gather_const": ("loss a(x[n, c], y[n]: index(c)):\n    x[n, y] - x[n, 0] + x[n, c]",
                           lambda x, y: x.gather(1, y[:, None]) - x[:, :1] + x),
    "elementwise": ("loss a(x[n, c]):\n    sum_c(exp(x) + log(x*x) + sqrt(x*x) + abs(x) + sign(x) + sin(x) + cos(x)"
                    " + tanh(x) + cosh(x) + sinh(x) + acos(x/10) + sigmoid(x) + logsigmoid(x) + softplus(x)"
                    " + relu(x) + log1p(x*x) + expm1(x) + erf(x))",
                    lambda x, y: (x.exp() + torch.log(x * x) + (x * x).sqrt() + 2 * x.abs() + x.sign() + x.sin()
                                  + x.cos() + x.tanh() + x.cosh() + x.sinh() + torch.acos(x / 10) + x.sigmoid()
                                  + F.logsigmoid(x) + F.softplus(x) + x.relu() + torch.log1p(x * x) + torch.expm1(x)
                                  + torch.erf(x)).sum(1) - x.abs().sum(1)),
    "two_three_args": ("loss a(x[n, c]):\n    sum_c(min(x, 0.5) + max(x, -x) + clamp(x, -1, 1) + xlogy(x*x, x*x))",
                       lambda x, y: (x.clamp(max=0.5) + torch.maximum(x, -x) + x.clamp(-1, 1)
                                     + torch.xlogy(x * x, x * x)).sum(1)),
    "reductions": ("loss a(x[n, c]):\n    sum_c(x) + mean_c(x) + prod_c(x) + max_c(x) + min_c(x) + logsumexp_c(x)"
                   " + norm_c(x)",
                   lambda x, y: x.sum(1) + x.mean(1) + x.prod(1) + x.amax(1) + x.amin(1) + torch.logsumexp(x, 1)
                   + x.norm(dim=1)),
    "several_indices": ("loss a(x[n, c]):\n    sum_{n, c}(x) * x[n, 0]", lambda x, y: x.sum() * x[:, 0]),
    "condition_on_index": ("loss a(x[n, c]):\n    sum_{k != n}(x[k, 0]) + prod_{k <= c}(x[n, k])[n, 1]",
                           lambda x, y: x[:, 0].sum() - x[:, 0] + torch.cumprod(x, 1)[:, 1]),
    "pairwise_mask": ("loss a(x[n, c]):\n    sum_{c, k}([c != k] * x[n, c] * x[n, k])",
                      lambda x, y: x.sum(1) ** 2 - (x * x).sum(1)),
    "whole": ("loss a(x[n, c]):\n    sum(x) + mean(x) * max(x) - min(x)",
              lambda x, y: x.sum() + x.mean() * x.max() - x.min()),
    "normalisers": ("loss a(x[n, c]):\n    sum_c(softmax_c(x) * log_softmax_c(x) + normalize_c(x) * x)",
                    lambda x, y: (torch.softmax(x, 1) * torch.log_softmax(x, 1) + F.normalize(x, dim=1) * x).sum(1)),
    "axis_size": ("loss a(x[n, c]):\n    sum_c(x) / C + N", lambda x, y: x.sum(1) / x.shape[1] + x.shape[0]),
    "greek_and_sigma": ("loss a(x[n, c]; α = 2.0, τ = 0.5):\n    Σ_c(alpha * x) / tau + ∑_c(x)",
                        lambda x, y: 5 * x.sum(1)),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_expression_table_row(name: str) -> None:
    src, ref_fn = ROWS[name]
    x, y = X(), Y()
    out = lossdsl.compile(src, reduction="none")(x, y) if "y[n]" in src else lossdsl.compile(
        src, reduction="none")(x)
    ref = ref_fn(x, y)
    assert_close(out, ref.expand_as(out))
    assert out.requires_grad == ref.requires_grad
    if ref.requires_grad:
        assert_close(grads(out, x)[0], grads(ref.expand_as(out), x)[0])


def test_empty_condition_set_gives_the_reduction_identity() -> None:
    src = "loss a(x[n, c]):\n    sum_{k < 0}(x[k, 0]) + prod_{k < 0}(x[k, 0]) * x[n, 0]"
    x = X()
    out = lossdsl.compile(src, reduction="none")(x)
    assert_close(out, x[:, 0])
    mean = lossdsl.compile("loss a(x[n, c]):\n    mean_{k < 0}(x[k, 0]) * x[n, 0]", reduction="none")(X())
    assert torch.isnan(mean).all()
    others = "loss a(x[n, c]):\n    sum_{k != n}(x[k, 0]) + prod_{k != n}(x[k, 1]) + max_{k != n}(x[k, 1])"
    single = lossdsl.compile(others, reduction="none")(X(1, 4))  # one sample: every set {k != n} is empty
    assert single.tolist() == [-float("inf")]  # the mean of nothing is undefined, as torch.mean of an empty tensor


def test_grad_and_fn_calls() -> None:
    critic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    src = "loss gp(x[n, d], f: fn):\n    g = grad(f(x), x)\n    (norm_d(g) - 1)^2 + f(x)[n, k][n, 0]"
    x = torch.randn(5, 3, dtype=D)
    out = lossdsl.compile(src, reduction="none")(x, critic)
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(critic(xr).sum(), xr, create_graph=True)
    assert_close(out, (g.norm(dim=1) - 1) ** 2 + critic(x)[:, 0])


def test_calls_of_other_losses_inline_their_formula() -> None:
    src = """
loss sq(a, b; w = 1):
    w * (a - b)^2

loss pair(x[n, c], y[n, c]):
    sum_c(sq(x, y, w = 3) + sq(x, 0))
"""
    x, y = X(), torch.randn(3, 4, dtype=D)
    out = lossdsl.compile(src, reduction="none")(x, y)
    assert_close(out, (3 * (x - y) ** 2 + x**2).sum(1))


def test_params_broadcast_along_their_axis() -> None:
    src = "loss a(x[n, c]; w[c] = 2):\n    sum_c(w * x)"
    x = X()
    assert_close(lossdsl.compile(src, reduction="none")(x), 2 * x.sum(1))
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    assert_close(lossdsl.compile(src, reduction="none", w=w)(x), (w * x).sum(1))
    with pytest.raises(lossdsl.InputError, match="parameter 'w' has shape"):
        lossdsl.compile(src, w=torch.ones(3))(x)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 5), c=st.integers(1, 6), red=st.sampled_from(["mean", "sum", "none", "batchmean"]))
def test_reductions_over_random_shapes(n: int, c: int, red: str) -> None:
    x = torch.randn(n, c, dtype=D)
    out = lossdsl.compile("loss a(x[n, c]):\n    logsumexp_c(x) - x[n, 0]", reduction=red)(x)
    per = torch.logsumexp(x, 1) - x[:, 0]
    ref = {"mean": per.mean(), "sum": per.sum(), "none": per, "batchmean": per.sum() / max(n, 1)}[red]
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_reduce_lines_weighted_and_batchmean() -> None:
    src = "loss kl(lp[n, c], t[n, c]):\n    sum_c(t * (log(t) - lp))\n    reduce batchmean"
    lp, t = torch.log_softmax(torch.randn(4, 3, dtype=D), 1), torch.softmax(torch.randn(4, 3, dtype=D), 1)
    assert_close(lossdsl.compile(src)(lp, t), F.kl_div(lp, t, reduction="batchmean"))
    w = "loss a(x[n], w[n]):\n    x * w\n    reduce mean weighted by w"
    x, wt = torch.randn(5, dtype=D), torch.rand(5, dtype=D)
    assert_close(lossdsl.compile(w)(x, wt), (x * wt).sum() / wt.sum())
    assert_close(lossdsl.compile(w, reduction="sum")(x, wt), (x * wt).sum())


def test_pairwise_similarity_lowers_to_one_einsum() -> None:
    src = "loss sim(a[i, d], b[j, d]):\n    s[i, j] = sum_d(a[i, d] * b[j, d])\n    logsumexp_j(s) - s[i, i]"
    text = lossdsl.parse(src).to_source()
    assert text.count("torch.einsum('id,jd->ij'") == 1
    a, b = X(5, 3), torch.randn(5, 3, dtype=D)
    out = lossdsl.compile(src, reduction="none")(a, b)
    assert_close(out, F.cross_entropy(a @ b.T, torch.arange(5), reduction="none"))


@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_a_transposed_read_reuses_the_product(mode: str) -> None:
    """s[j, i] is s[i, j] with its free indices renamed: read transposed, not a second matrix product (CLIP's
    symmetric loss; two more products in the backward)."""
    src = ("loss sym(a[i, d], b[j, d]):\n    s[i, j] = sum_d(a[i, d] * b[j, d])\n"
           "    logsumexp_j(s[i, j]) + logsumexp_j(s[j, i]) - 2 * s[i, i]")
    assert lossdsl.parse(src).to_source().count("torch.einsum(") == 1
    a, b = X(5, 3), X(5, 3)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out = lossdsl.compile(src, reduction="none", mode=mode)(a, b)
    logits, labels = a2 @ b2.T, torch.arange(5)
    ref = F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")
    assert_close(out, ref)
    assert_close(torch.cat(grads(out, a, b)), torch.cat(grads(ref, a2, b2)))


def test_an_intermediate_with_a_prefix_condition_read_at_two_names_is_computed_once() -> None:
    """r[n, c] read as r[n, c] and as r[n, j]: renaming c to j rebuilt the inner `m <= k` as `k >= m`, so
    the two reads looked different and the cumprod and the scatter ran twice (multilabel_margin_loss)."""
    src = ("loss pairs(x[n, c], t[n, k]: index(c)):\n"
           "    r[n, c] = sum_k(prod_{m <= k}([t[n, m] != -1]) * [t == c])\n"
           "    sum_{c, j}(r[n, c] * [r[n, j] == 0] * relu(1 - x[n, c] + x[n, j]))")
    text = lossdsl.parse(src).to_source().split("def forward(")[-1]
    assert text.count("_prefix_all(") == 1 and text.count("_scatter_sum(") == 1
    x, t = X(4, 5), torch.tensor([[0, 2, -1, 1, 1], [3, -1, 0, 0, 0], [4, 3, 2, 1, 0], [-1, 1, 1, 1, 1]])
    x2 = x.detach().clone().requires_grad_()
    out = lossdsl.compile(src, reduction="none")(x, t)
    ref = F.multilabel_margin_loss(x2, t, reduction="none") * 5
    assert_close(out, ref)
    assert_close(grads(out, x)[0], grads(ref, x2)[0])


GATHER_WITH_AXIS = {  # an index with an axis of its own (k): (formula, x's shape, t's shape, reference)
    "trailing": ("loss a(x[n, c], t[n, k]: index(c)):\n    sum_k(x[n, t[n, k]]^2 * (1 + k))", (4, 5), (4, 3),
                 lambda x, t: (x.gather(1, t) ** 2 * torch.arange(1, 4, dtype=D)).sum(1)),
    "leading": ("loss a(x[c, n], t[k, n]: index(c)):\n    sum_k(exp(x[t[k, n], n]))", (5, 4), (3, 4),
                lambda x, t: x.gather(0, t).exp().sum(0)),
    "broadcast": ("loss a(x[n, m, c], t[n, k]: index(c)):\n    sum_{m, k}(x[n, m, t[n, k]] * m)", (4, 2, 5), (4, 3),
                  lambda x, t: (x[:, :, None, :] * torch.arange(2, dtype=D)[:, None, None]).expand(4, 2, 3, 5)
                  .gather(3, t[:, None, :, None].expand(4, 2, 3, 1)).sum((1, 2, 3))),
}


@pytest.mark.parametrize("mode", ["eager", "fused"])
@pytest.mark.parametrize("case", sorted(GATHER_WITH_AXIS))
def test_an_index_with_its_own_axis_gathers(case: str, mode: str) -> None:
    """x[n, t[n, k]] is Tensor.gather along c (its backward a scatter_add), not advanced indexing over an arange
    of n (an index_put backward, and the arange saved for it: multilabel margin)."""
    src, xs, ts, ref_fn = GATHER_WITH_AXIS[case]
    text = lossdsl.parse(src).to_source()
    assert ".gather(" in text and "torch.arange(S_n" not in text and "torch.arange(N_n" not in text
    x = torch.randn(*xs, dtype=D, requires_grad=True)
    t = torch.randint(0, 5, ts)
    out = lossdsl.compile(src, reduction="none", mode=mode)(x, t)
    ref = ref_fn(x, t)
    assert_close(out, ref)
    assert_close(grads(out, x)[0], grads(ref, x)[0])


@pytest.mark.parametrize("use_sigmoid, use_softmax, sigmoids, softmaxes",
                         [(False, False, 0, 0), (True, False, 1, 0), (False, True, 0, 1), (True, True, 1, 0)])
def test_branches_chosen_by_parameters_run_only_when_taken(use_sigmoid, use_softmax, sigmoids, softmaxes) -> None:
    """dice_loss's `q = sigmoid(p) if use_sigmoid else (softmax_c(p) if use_softmax else p)`: the branch not
    taken is not computed, and the one taken once although q appears twice (in q^2 and q g)."""
    p = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(2, 3, 4, 4) > 0.5).double()
    module = lossdsl.stdlib.dice_loss(use_sigmoid=use_sigmoid, use_softmax=use_softmax)
    with TorchCalls() as calls:
        out = module(p, g)
    assert calls.names.count("sigmoid") == sigmoids and calls.names.count("softmax") == softmaxes
    q = torch.sigmoid(p) if use_sigmoid else (torch.softmax(p, dim=1) if use_softmax else p)
    num, den = 2 * (q * g).sum(dim=(2, 3)) + 1e-5, (q * q).sum(dim=(2, 3)) + (g * g).sum(dim=(2, 3)) + 1e-5
    ref = (1 - num / den).mean()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(out, p)[0], torch.autograd.grad(ref, p)[0], rtol=1e-10, atol=1e-14)


def test_branch_with_a_call_check_stays_correct_when_emitted_eagerly() -> None:
    """A branch whose code checks a call's result shape cannot be guarded line by line: it is emitted as
    before (both branches computed), with the right value for either flag."""
    src = "loss l(x[n, d], f: fn; scaled: bool = false):\n    (2 * f(x)[n, k] if scaled else x) ^ 2"
    f = torch.nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    for scaled in (False, True):
        out = lossdsl.compile(src, reduction="sum", scaled=scaled)(x, f)
        ref = ((2 * f(x)) ** 2).sum() if scaled else (x ** 2).sum()
        torch.testing.assert_close(out, ref)


def test_products_combine_operands_with_fewer_axes_first() -> None:
    """beta * x[n, c, s] * u[n, c] / w[n, c]: the scale beta * u / w is formed over [n, c], then one multiply
    over [n, c, s] (three before: a fused Tversky backward held four such chains)."""

    module = lossdsl.compile("loss a(x[n, c, s], u[n, c], w[n, c]; beta = 2.0):\n    beta * x * u / w",
                             reduction="none")
    x, u = torch.randn(3, 4, 50, dtype=D, requires_grad=True), torch.randn(3, 4, dtype=D)
    w = torch.rand(3, 4, dtype=D) + 1
    with AtenOps() as ops:
        out = module(x, u, w)
    assert [op for op, numel in ops.ops if numel == x.numel()] == ["mul"]
    ref = 2 * x * u[..., None] / w[..., None]
    assert_close(out, ref)
    assert_close(grads(out, x)[0], grads(ref, x)[0])


def test_scalar_parameters_are_combined_before_the_full_size_inputs() -> None:
    """0.5 * y * total * logsigmoid(x) / pos_count (weighted_bce's first term, with inputs of undeclared
    shape) runs as one 0-d product and two full-size multiplies, not four full-size ones; same value."""

    module = lossdsl.compile("loss f(x, y; a = 3, b = 2):\n    0.5 * y * (a + b) * logsigmoid(x) / a\n",
                             reduction="none")
    x, y = torch.randn(64, dtype=D), torch.rand(64, dtype=D)
    with AtenOps() as ops:
        out = module(x, y)
    full = [name for name, numel in ops.ops if numel == 64 and name in ("mul", "div")]
    assert len(full) == 2, ops.ops
    assert_close(out, 0.5 * y * 5 * F.logsigmoid(x) / 3)
