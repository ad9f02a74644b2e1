"""stdlib/torch_nn.loss against torch.nn.functional at the edges that tests/test_functional.py stays away from.

test_functional.py property-tests every drop-in on well-behaved inputs. This file compares values, gradients
and result dtypes (float64 to 1e-10 relative; float32, float16 and bfloat16 against a float64 evaluation of the
same rounded inputs) on parameter grids (weights and pos_weight of every shape torch broadcasts, ignore_index
present / absent / everywhere, label smoothing with both, margins, p, swap, log_target, full, eps, beta and
delta down to 0 and up to 1e8, zero_infinity, blank), on shapes (0-d, 1-D, K-dim class losses (N, C, d1, d2),
a batch of one, empty batches) and on edge values (probabilities of exactly 0 and 1, logits of +-1e4, -inf
log-probabilities, kinks, identical embeddings, zero vectors), and checks that where torch rejects an input
lossdsl raises a LossError.

Every mismatch found is kept as a strict xfail (`test_bug_*`), most harmful first; two found here were fixed
while it was written (c9af7f6: NaN embeddings and NaN BCE probabilities) and are plain regression tests.
Differences that docs/dropins.md or the definitions' docstrings document are not tested as bugs: BCE's
gradient at an input of exactly 0 or 1, gaussian_nll_loss's var gradient below eps, the zero gradient of a 0/0
mean, kl_div's batchmean of an empty batch, CTC's gradient with respect to raw log-probabilities, and the zero
gradient of a masked term whose unused branch is log(0) (kl_div's target gradient at target 0,
poisson_nll_loss's target gradient at target 0 with full=True, where torch's gradient is nan). Where torch
overflows and lossdsl does not (soft_margin_loss at |x| = 1e4, cosine_embedding_loss in float16), a passing
test pins lossdsl's finite value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
import lossdsl.functional as LF

torch.set_num_threads(1)  # tiny tensors: threads only contend on the shared CPUs

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
REDUCTIONS = ("none", "mean", "sum")
TOL = {F64: {"rtol": 1e-10, "atol": 1e-12}, F32: {"rtol": 1e-4, "atol": 1e-5}}
INF, NAN = math.inf, math.nan
HYPOTHESIS = settings(max_examples=12, deadline=None)


# ---- helpers
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape: Sequence[int], seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(tuple(shape), generator=gen(seed), dtype=F64)


def rand(shape: Sequence[int], seed: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(tuple(shape), generator=gen(seed), dtype=F64)


def signs(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randint(0, 2, tuple(shape), generator=gen(seed)).double() * 2 - 1


def labels(shape: Sequence[int], classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, classes, tuple(shape), generator=gen(seed))


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _cast(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(dtype)
    return value


def _leaves(inputs: Sequence[object], grad: Sequence[int], dtype: torch.dtype) -> list[object]:
    """Fresh copies in dtype; floating inputs whose position is in grad require grad."""
    out: list[object] = []
    for k, value in enumerate(inputs):
        value = _cast(value, dtype)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.clone().requires_grad_(k in grad)
        out.append(value)
    return out


def _wrt(inputs: Sequence[object]) -> list[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def _call(fn: Callable[..., torch.Tensor], *args: object, **kw: object) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kl_div's 'mean', torch's size-mismatch and legacy warnings
        return fn(*args, **kw)


def _grads(out: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of a fixed weighting of out (so reduction='none' outputs are checked element by element)."""
    if not wrt or out.numel() == 0 or not out.requires_grad:
        return [torch.zeros_like(w) for w in wrt]
    weight = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), wrt, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]


def compare(name: str, inputs: Sequence[object], grad: Sequence[int] = (0,),
            reductions: Sequence[str] = REDUCTIONS, dtypes: Sequence[torch.dtype] = (F64, F32),
            rtol: float | None = None, atol: float | None = None, finite_grads_only: bool = True,
            **kw: object) -> None:
    """lossdsl.functional.<name> equals torch.nn.functional.<name>: shape, dtype, value and gradient, for every
    reduction and dtype. Gradients are skipped where torch's value is not finite (0/0 means: documented)
    unless finite_grads_only is False."""
    for dtype in dtypes:
        tol = dict(TOL[dtype])
        if rtol is not None:
            tol = {"rtol": rtol, "atol": atol if atol is not None else tol["atol"]}
        kw_d = {k: _cast(v, dtype) for k, v in kw.items()}
        for reduction in reductions:
            ours, theirs = _leaves(inputs, grad, dtype), _leaves(inputs, grad, dtype)
            ref = _call(getattr(TF, name), *theirs, reduction=reduction, **kw_d)
            out = _call(getattr(LF, name), *ours, reduction=reduction, **kw_d)
            where = f"{name} reduction={reduction} dtype={dtype}"
            assert out.shape == ref.shape, (where, out.shape, ref.shape)
            assert out.dtype == ref.dtype, (where, out.dtype, ref.dtype)
            torch.testing.assert_close(out, ref, equal_nan=True, msg=lambda m, w=where: f"{w}: {m}", **tol)
            if finite_grads_only and not bool(torch.isfinite(ref).all()):
                continue
            for k, (a, b) in enumerate(zip(_grads(out, _wrt(ours)), _grads(ref, _wrt(theirs)), strict=True)):
                torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m, w=where, k=k: f"{w} grad {k}: {m}",
                                           **tol)


def same_as_torch(call: Callable[[object], torch.Tensor], rtol: float = 1e-10, atol: float = 1e-12) -> None:
    """call(F) gives the same tensor (shape, dtype, value) with F = torch's functional and with lossdsl's."""
    ref, out = _call(call, TF), _call(call, LF)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, equal_nan=True)


def raises_loss_error(call: Callable[[object], object]) -> None:
    """lossdsl raises one of its own errors (never a bare RuntimeError from deep inside, never a result)."""
    with pytest.raises(lossdsl.LossError):
        _call(call, LF)


def torch_raises(call: Callable[[object], object]) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any of torch's errors
        _call(call, TF)


def both_refuse(call: Callable[[object], object]) -> None:
    """torch raises (any of its errors) and lossdsl raises one of its own."""
    torch_raises(call)
    raises_loss_error(call)


# ---- regression losses
KINKS = (t64(0.0, 1.0, 2.0, -1.0, 0.5, -3.0), t64(0.0, 1.5, 2.0, -3.0, 0.0, -2.0))  # errors 0, 0.5, 0, 2, 0.5, 1


@pytest.mark.parametrize("beta", [0.0, 1e-30, 1e-8, 0.5, 1.0, 2.0, 1e8])
def test_smooth_l1_beta_grid_at_kinks(beta: float) -> None:
    """beta = 0 (the L1 loss), tiny and huge beta, and errors of exactly 0 and exactly beta."""
    compare("smooth_l1_loss", KINKS, grad=(0, 1), beta=beta)
    compare("smooth_l1_loss", KINKS, grad=(0, 1), beta=beta * 1e-270, dtypes=(F64,))


@pytest.mark.parametrize("delta", [1e-300, 1e-8, 0.5, 1.0, 2.0, 1e8])
@pytest.mark.parametrize("weighted", [False, True])
def test_huber_delta_grid_at_kinks(delta: float, weighted: bool) -> None:
    kw = {"weight": t64(1.0, 0.0, 2.0, 3.0, 0.5, 1.0)} if weighted else {}
    compare("huber_loss", KINKS, grad=(0, 1), delta=delta, **kw)


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss"])
@pytest.mark.parametrize("weight", ["none", "sparse", "zero"])
def test_l1_mse_at_kinks_and_zero_weights(name: str, weight: str) -> None:
    """A zero total weight is 0/0 (nan) in both; its gradient is documented to differ, so compare() skips it."""
    kw = {"none": {}, "sparse": {"weight": t64(1.0, 0.0, 2.0, 3.0, 0.0, 1.0)},
          "zero": {"weight": torch.zeros(6, dtype=F64)}}[weight]
    compare(name, KINKS, grad=(0, 1), **kw)


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss"])
@pytest.mark.parametrize(("x_shape", "y_shape"), [((3, 4), (4,)), ((4,), (3, 4)), ((3, 1), (1, 4)), ((), (2, 3)),
                                                  ((0, 3), (0, 3)), ((0, 3), (3,)), ((), ())])
def test_regression_broadcasting_and_empty(name: str, x_shape: tuple, y_shape: tuple) -> None:
    compare(name, [randn(x_shape, 0), randn(y_shape, 1)], grad=(0, 1))


def test_weighted_regression_weight_gradients() -> None:
    """torch's weighted l1/mse/huber are differentiable in the weight; so are lossdsl's."""
    x, y, w = randn((3, 4), 0), randn((3, 4), 1), rand((3, 4), 2)
    for name in ("l1_loss", "mse_loss", "huber_loss"):
        for reduction in REDUCTIONS:
            ours, theirs = w.clone().requires_grad_(), w.clone().requires_grad_()
            out = _call(getattr(LF, name), x, y, reduction=reduction, weight=ours)
            ref = _call(getattr(TF, name), x, y, reduction=reduction, weight=theirs)
            torch.testing.assert_close(out, ref, **TOL[F64])
            torch.testing.assert_close(_grads(out, [ours])[0], _grads(ref, [theirs])[0], **TOL[F64])


# ---- binary losses
EDGE_P = t64(0.0, 1.0, 0.0, 1.0, 0.5, 1e-300, 1 - 1e-16, 0.3)
EDGE_Y = t64(0.0, 1.0, 1.0, 0.0, 0.3, 0.0, 1.0, 1.0)


def test_bce_values_at_probabilities_0_and_1() -> None:
    """Values (each log clamped at -100) match torch at exactly 0 and 1; the gradient there is documented to
    differ, so only the value is compared."""
    compare("binary_cross_entropy", [EDGE_P, EDGE_Y], grad=())
    compare("binary_cross_entropy", [EDGE_P, EDGE_Y], grad=(), weight=rand((8,), 3))


@pytest.mark.parametrize("w_shape", [None, (), (1,), (4,), (3, 1), (3, 4), (1, 1)])
def test_bce_weight_shapes(w_shape: tuple | None) -> None:
    kw = {} if w_shape is None else {"weight": rand(w_shape, 2)}
    compare("binary_cross_entropy", [rand((3, 4), 0, 0.02, 0.98), rand((3, 4), 1)], grad=(0, 1), **kw)


@pytest.mark.parametrize("shape", [(), (1,), (0,), (0, 3), (1, 1, 1)])
def test_bce_small_and_empty_shapes(shape: tuple) -> None:
    compare("binary_cross_entropy", [rand(shape, 0, 0.02, 0.98), rand(shape, 1)], grad=(0, 1))
    compare("binary_cross_entropy_with_logits", [randn(shape, 0), rand(shape, 1)], grad=(0, 1))


LOGITS = t64(1e4, -1e4, 0.0, 3.0, -3.0, 1e4, -1e4, 40.0)
LOGIT_Y = t64(0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.25)


@pytest.mark.parametrize("pos_weight", [None, "zeros", "scalar"])
def test_bce_with_logits_extreme_logits(pos_weight: str | None) -> None:
    kw = {None: {}, "zeros": {"pos_weight": torch.zeros(8, dtype=F64)},
          "scalar": {"pos_weight": t64(2.5)}}[pos_weight]
    compare("binary_cross_entropy_with_logits", [LOGITS, LOGIT_Y], grad=(0, 1), **kw)


@pytest.mark.parametrize("pw_shape", [(5,), (1,), (), (3, 1), (1, 3, 5), (4, 3, 5), (4, 1, 1)])
@pytest.mark.parametrize("w_shape", [None, (5,), (4, 1, 1), (4, 3, 5)])
def test_bce_with_logits_weight_and_pos_weight_shapes(pw_shape: tuple, w_shape: tuple | None) -> None:
    kw = {"pos_weight": rand(pw_shape, 2, 0.0, 3.0)}
    if w_shape is not None:
        kw["weight"] = rand(w_shape, 3)
    compare("binary_cross_entropy_with_logits", [randn((4, 3, 5), 0, 3.0), rand((4, 3, 5), 1)], grad=(0, 1),
            dtypes=(F64,), **kw)


@pytest.mark.parametrize("big", [700.0, 80.0])
def test_soft_margin_edges(big: float) -> None:
    """|x| up to 700 (float64) and 80 (float32): beyond, torch's exp overflows (see the next test)."""
    dtypes = (F64,) if big > 80 else (F64, F32)
    x = t64(big, -big, 0.0, 50.0, -50.0, 1e-9)
    compare("soft_margin_loss", [x, t64(1.0, 1.0, -1.0, -1.0, 1.0, -1.0)], dtypes=dtypes)
    compare("soft_margin_loss", [x, t64(0.5, 0.0, 2.0, -1.0, 1.0, 0.0)], dtypes=dtypes)  # targets other than +-1
    compare("soft_margin_loss", [x, t64(-1.0)], dtypes=dtypes)  # a broadcast target
    compare("soft_margin_loss", [torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, dtype=F64)])


def test_soft_margin_stays_finite_where_torch_overflows() -> None:
    """torch's soft_margin_loss is log(1 + exp(-y x)): inf at y x = -1e4. lossdsl's is the exact 1e4 (and so
    finite in float32 too); this is a deliberate improvement, pinned here, not compared with torch."""
    x, y = t64(-1e4, 1e4), t64(1.0, 1.0)
    assert torch.isinf(TF.soft_margin_loss(x, y, reduction="none")[0])
    for dtype in (F64, F32):
        out = LF.soft_margin_loss(x.to(dtype), y.to(dtype), reduction="none")
        torch.testing.assert_close(out, torch.tensor([1e4, 0.0], dtype=dtype))


@pytest.mark.parametrize("w_shape", [None, (3,), ()])
@pytest.mark.parametrize("x_shape", [(4, 3), (2, 4, 3), (3,), (1, 3), (0, 3)])
def test_multilabel_soft_margin_shapes(w_shape: tuple | None, x_shape: tuple) -> None:
    kw = {} if w_shape is None else {"weight": rand(w_shape, 2)}
    x = randn(x_shape, 0, 3.0)
    if x.numel():
        x.view(-1)[0], x.view(-1)[-1] = 1e4, -1e4
    compare("multilabel_soft_margin_loss", [x, rand(x_shape, 1).round()], grad=(0, 1), **kw)


# ---- class losses: K-dim, weights, ignore_index, label smoothing
@pytest.mark.parametrize("smoothing", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("ignore", ["absent", "some", "all"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 2, 2), (1, 4, 2), (1, 4), (4,)], ids=["NCd1d2", "N1Cd", "N1C", "C"])
def test_cross_entropy_and_nll_grid(smoothing: float, ignore: str, weighted: bool, shape: tuple) -> None:
    c = shape[1] if len(shape) > 1 else shape[0]
    t_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    x, y = randn(shape, 0, 2.0), labels(t_shape, c, 1)
    kw: dict[str, object] = {"weight": rand((c,), 2, 0.1, 2.0)} if weighted else {}
    if ignore != "absent":
        kw["ignore_index"] = 1
        y = torch.full_like(y, 1) if ignore == "all" else torch.where(rand(t_shape, 3) < 0.5, 1, y)
    compare("cross_entropy", [x, y], label_smoothing=smoothing, **kw)
    if smoothing == 0:
        compare("nll_loss", [torch.log_softmax(x, 0 if len(shape) == 1 else 1), y], **kw)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2)])
def test_class_losses_on_an_empty_batch(name: str, shape: tuple) -> None:
    kw = {"weight": rand((3,), 2)}
    if name == "cross_entropy":
        kw["label_smoothing"] = 0.2
    compare(name, [randn(shape, 0), labels((0, *shape[2:]), 3, 1)], **kw)


def test_cross_entropy_extreme_and_infinite_logits() -> None:
    x = t64(1e4, -1e4, 0.0, -1e4, -1e4, 1e4).reshape(2, 3)
    for smoothing in (0.0, 0.1):
        compare("cross_entropy", [x, torch.tensor([1, 2])], label_smoothing=smoothing)
    compare("cross_entropy", [x, t64(0.0, 1.0, 0.0, 0.5, 0.5, 0.0).reshape(2, 3)], grad=(0, 1))
    x = t64(-INF, 0.0, 1.0, 0.0, 0.0, 0.0).reshape(2, 3)  # -inf on a class that is not the target
    compare("cross_entropy", [x, torch.tensor([1, 2])])
    compare("cross_entropy", [x, t64(0.0, 0.5, 0.5, 1.0, 0.0, 0.0).reshape(2, 3)])


def test_nll_loss_with_minus_inf_log_probabilities_off_target_and_ignored() -> None:
    x = t64(-INF, -1.0, -2.0, -0.5, -INF, -INF, -INF, -INF, 0.0).reshape(3, 3)
    compare("nll_loss", [x, torch.tensor([1, 0, -100])])
    compare("nll_loss", [x, torch.tensor([1, 0, 2])], weight=t64(0.0, 1.0, 2.0))


def test_cross_entropy_one_class_and_full_smoothing() -> None:
    compare("cross_entropy", [randn((3, 1), 0), torch.zeros(3, dtype=torch.long)], label_smoothing=0.2)
    compare("cross_entropy", [randn((3, 4), 0), labels((3,), 4, 1)], label_smoothing=1.0, weight=rand((4,), 2))


@pytest.mark.parametrize("shape", [(3, 4, 2, 2), (4,), (1, 4), (0, 4)])
def test_cross_entropy_probabilities_k_dim(shape: tuple) -> None:
    p = torch.softmax(randn(shape, 1), dim=0 if len(shape) == 1 else 1)
    compare("cross_entropy", [randn(shape, 0, 2.0), p], grad=(0, 1), weight=rand((4,), 2), label_smoothing=0.25)


# ---- kl_div, poisson, gaussian
KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_edges(log_target: bool) -> None:
    x = t64(-1.0, -2.0, -0.5, -3.0, -0.1, -1e4).reshape(2, 3)
    if log_target:
        target = t64(-1e4, -1.0, 0.0, 0.0, -1e4, -700.0).reshape(2, 3)
        grad: tuple[int, ...] = (0, 1)
    else:
        target = t64(0.0, 0.5, 0.5, 1.0, 0.0, 0.0).reshape(2, 3)  # target gradient at 0: documented
        grad = (0,)
    kw = {"log_target": log_target}
    compare("kl_div", [x, target], grad=grad, reductions=KL_REDUCTIONS, **kw)
    compare("kl_div", [x, target[0]], grad=grad, reductions=KL_REDUCTIONS, **kw)  # a broadcast target
    compare("kl_div", [x[0], target], grad=grad, reductions=KL_REDUCTIONS, **kw)  # a broadcast input
    compare("kl_div", [x[0, 0], target[0, 1]], grad=grad, reductions=KL_REDUCTIONS, **kw)  # 0-d
    compare("kl_div", [x[0], target[0]], grad=grad, reductions=KL_REDUCTIONS, **kw)  # 1-D


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-8, 0.5])
def test_poisson_rate_input_grid(full: bool, eps: float) -> None:
    """Rates including exactly 0 and below eps; counts 0, 1, fractional and > 1 (Stirling's term only for > 1).
    The target gradient at a target of 0 with full=True is nan in torch (documented masking), so the target
    gradient is compared only without full."""
    rate, count = t64(0.0, 1e-9, 0.5, 2.0, 10.0, 0.3), t64(0.0, 1.0, 2.0, 0.0, 1.5, 1.0000001)
    compare("poisson_nll_loss", [rate, count], grad=(0,) if full else (0, 1), log_input=False, full=full, eps=eps)


@pytest.mark.parametrize("full", [False, True])
def test_poisson_log_input_extremes(full: bool) -> None:
    log_rate, count = t64(-1e4, 0.0, 3.0, 700.0, -2.0, 1.0), t64(0.0, 1.0, 2.0, 0.0, 1.5, 5.0)
    compare("poisson_nll_loss", [log_rate, count], grad=(0,) if full else (0, 1), full=full)
    compare("poisson_nll_loss", [randn((4,), 0), rand((3, 4), 1, 0.0, 4.0)], full=full)  # broadcast
    compare("poisson_nll_loss", [rand((3, 4), 0, 0.1, 2.0), rand((4,), 1, 0.0, 4.0)], log_input=False, full=full)


@pytest.mark.parametrize("var_shape", [(3, 4), (3,), (3, 1), (1, 4)])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("eps", [1e-6, 0.05])
def test_gaussian_nll_var_shapes(var_shape: tuple, full: bool, eps: float) -> None:
    var = rand(var_shape, 2, 0.1, 2.0)
    compare("gaussian_nll_loss", [randn((3, 4), 0), randn((3, 4), 1), var], grad=(0, 1, 2), full=full, eps=eps)


def test_gaussian_nll_edges() -> None:
    x, y = randn((3, 4), 0), randn((3, 4), 1)
    tiny = t64(0.0, 1e-7, 1.0, 2.0).expand(3, 4)  # var below eps: values only (its gradient is documented)
    compare("gaussian_nll_loss", [x, y, tiny], grad=(0, 1))
    compare("gaussian_nll_loss", [x, y, tiny], grad=(0, 1), eps=0.0)
    compare("gaussian_nll_loss", [x, y, 0.0], grad=(0, 1))  # a float var
    compare("gaussian_nll_loss", [x, y[0], rand((3, 4), 2, 0.1, 1.0)], grad=(0, 1, 2))  # a broadcast target
    compare("gaussian_nll_loss", [x[0], y, rand((4,), 2, 0.1, 1.0)], grad=(0, 1, 2))  # a broadcast input
    compare("gaussian_nll_loss", [x[0], y[0], rand((1,), 2, 0.1, 1.0)], grad=(0, 1, 2))
    compare("gaussian_nll_loss", [x[:0], y[:0], rand((0,), 2)], grad=(0, 1, 2))


# ---- margin losses
MARGIN_X = t64(0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, -1.0).reshape(2, 4)  # margin terms hit 0 exactly


@pytest.mark.parametrize("target", [[[1, -1, 0, 0], [0, 1, 2, 3]], [[3, 0, -1, 1], [1, 1, 2, -1]],
                                    [[-1, 2, 3, 0], [2, -1, -1, -1]]], ids=["kinks", "duplicates", "empty"])
def test_multilabel_margin_targets(target: list) -> None:
    target_t = torch.tensor(target)
    compare("multilabel_margin_loss", [MARGIN_X, target_t])
    compare("multilabel_margin_loss", [randn((2, 4), 0), target_t])
    compare("multilabel_margin_loss", [randn((4,), 0), target_t[0]])  # unbatched
    compare("multilabel_margin_loss", [randn((1, 4), 0), target_t[:1]])


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [0.0, 1.0, -0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_multi_margin_grid(p: int, margin: float, weighted: bool) -> None:
    kw = {"weight": rand((4,), 2)} if weighted else {}
    for x, y in ((MARGIN_X, torch.tensor([1, 0])), (randn((3, 4), 0), torch.tensor([0, 3, 2])),
                 (randn((4,), 0), torch.tensor(2)), (randn((1, 4), 0), torch.tensor([3]))):
        compare("multi_margin_loss", [x, y], p=p, margin=margin, **kw)


def test_margin_class_losses_on_an_empty_batch() -> None:
    """torch's reduced loss of an empty batch is uninitialised memory here ('mean', test_functional.py; 'sum'
    too: 9.7e32 seen for multilabel_margin_loss in float32), so only reduction='none' is compared."""
    compare("multi_margin_loss", [randn((0, 4), 0), labels((0,), 4, 1)], reductions=("none",), p=2,
            weight=rand((4,), 2))
    compare("multilabel_margin_loss", [randn((0, 4), 0), labels((0, 4), 4, 1)], reductions=("none",))


@pytest.mark.parametrize("margin", [1.0, 2.0, -0.5, 0.0])
def test_hinge_embedding_edges(margin: float) -> None:
    x = t64(0.0, 1.0, 2.0, -1.0, 0.5, 1.0)
    compare("hinge_embedding_loss", [x, t64(1.0, -1.0, -1.0, -1.0, 0.0, 2.0)], grad=(0, 1), margin=margin)
    compare("hinge_embedding_loss", [x, t64(-1.0)], grad=(0, 1), margin=margin)  # a broadcast target
    compare("hinge_embedding_loss", [x[:1], signs((3,), 1)], grad=(0, 1), margin=margin)  # a broadcast input
    compare("hinge_embedding_loss", [x, torch.tensor([-1, 1, 1, -1, 1, -1])], margin=margin)  # integer target


@pytest.mark.parametrize("margin", [0.0, 1.0, -0.5])
def test_margin_ranking_edges(margin: float) -> None:
    a, b = t64(0.0, 1.0, 2.0, 0.5), t64(0.0, 1.5, 1.0, -0.5)
    compare("margin_ranking_loss", [a, b, t64(1.0, -1.0, 1.0, -1.0)], grad=(0, 1, 2), margin=margin)
    compare("margin_ranking_loss", [a, b, t64(1.0, 0.0, 2.0, -3.0)], grad=(0, 1, 2), margin=margin)
    compare("margin_ranking_loss", [a.reshape(4, 1), b.reshape(1, 4), signs((4, 1), 1)], grad=(0, 1), margin=margin)
    compare("margin_ranking_loss", [a[0], b[0], t64(1.0)[0]], grad=(0, 1), margin=margin)


# ---- embeddings
@pytest.mark.parametrize("case", ["zero", "identical", "opposite", "scaled", "tiny", "huge", "other_targets"])
@pytest.mark.parametrize("margin", [-0.5, 0.0, 0.5])
def test_cosine_embedding_edges(case: str, margin: float) -> None:
    a, b, y = randn((4, 3), 0), randn((4, 3), 1), t64(1.0, -1.0, 1.0, -1.0)
    if case == "zero":
        a[:2] = 0
        b[1] = 0
    b = {"identical": a.clone(), "opposite": -a, "scaled": 2 * a}.get(case, b)
    a, b = {"tiny": (a * 1e-8, b * 1e-8), "huge": (a * 1e100, b * 1e-100)}.get(case, (a, b))
    if case == "other_targets":
        y = t64(0.0, 2.0, 1.0, -1.0)
    compare("cosine_embedding_loss", [a, b, y], grad=(0, 1), margin=margin, rtol=1e-8)


@pytest.mark.parametrize("shape", [(3,), (1, 3), (0, 3)])
def test_cosine_embedding_small_batches(shape: tuple) -> None:
    compare("cosine_embedding_loss", [randn(shape, 0), randn(shape, 1), signs(shape[:-1], 2)], grad=(0, 1))


def test_cosine_embedding_stays_finite_in_float16_where_torch_overflows() -> None:
    """torch's float16 cosine_embedding_loss squares in float16: |x|^2 = 3e4 * ... overflows and cos is 0
    (loss 1 for a similar pair whose cosine is 0.39). lossdsl computes in float32 and rounds once."""
    a, b, y = randn((4, 3), 0, 100.0), randn((4, 3), 1, 100.0), t64(1.0, -1.0, 1.0, -1.0)
    truth = TF.cosine_embedding_loss(a.half().double(), b.half().double(), y, reduction="none")
    out = LF.cosine_embedding_loss(a.half(), b.half(), y.half(), reduction="none")
    assert out.dtype == F16
    torch.testing.assert_close(out.double(), truth, rtol=2e-3, atol=2e-3)


TRIPLET_P = [1.0, 2.0, 3.0, 0.5, 1.5, -1.0]


@pytest.mark.parametrize("p", TRIPLET_P)
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_margin_p_eps_swap(p: float, eps: float, swap: bool) -> None:
    a, pos, neg = randn((4, 3), 0), randn((4, 3), 1), randn((4, 3), 2)
    compare("triplet_margin_loss", [a, pos, neg], grad=(0, 1, 2), p=p, eps=eps, swap=swap, margin=2.0)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_margin_identical_embeddings_without_eps(p: float, swap: bool) -> None:
    """A distance of exactly 0: torch's norm has gradient 0 there, and so must lossdsl's."""
    a, pos, neg = randn((4, 3), 0), randn((4, 3), 1), randn((4, 3), 2)
    for triple in ((a, a.clone(), neg), (a, pos, a.clone()), (a, pos, pos.clone())):
        compare("triplet_margin_loss", list(triple), grad=(0, 1, 2), p=p, eps=0.0, swap=swap, margin=10.0)


@pytest.mark.parametrize("shapes", [((3,), (3,), (3,)), ((4, 3), (1, 3), (4, 3)), ((0, 3), (0, 3), (0, 3)),
                                    ((1, 3), (1, 3), (1, 3))])
def test_triplet_margin_shapes(shapes: tuple) -> None:
    compare("triplet_margin_loss", [randn(s, k) for k, s in enumerate(shapes)], grad=(0, 1, 2), swap=True)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - TF.cosine_similarity(a, b, dim=-1)


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum(-1)


@pytest.mark.parametrize("distance", [None, cosine_distance, squared_distance, torch.nn.PairwiseDistance(p=1.0)],
                         ids=["default", "cosine", "squared", "module"])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("shape", [(4, 3), (3,), (2, 4, 3), (0, 3)])
def test_triplet_with_distance_grid(distance: Callable | None, swap: bool, shape: tuple) -> None:
    inputs = [randn(shape, k) for k in range(3)]
    compare("triplet_margin_with_distance_loss", inputs, grad=(0, 1, 2), distance_function=distance, swap=swap,
            margin=1.5)


def test_triplet_with_distance_identical_embeddings() -> None:
    a = randn((4, 3), 0)
    compare("triplet_margin_with_distance_loss", [a, a.clone(), randn((4, 3), 1)], grad=(0, 1, 2), rtol=1e-9,
            dtypes=(F64,))  # float32: test_bug_pairwise_distance_rounds_eps_into_the_embedding


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 0.5])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("keepdim", [False, True])
def test_pairwise_distance(p: float, eps: float, keepdim: bool) -> None:
    for a, b in ((randn((4, 3), 0), randn((4, 3), 1)), (randn((3,), 0), randn((3,), 1))):
        ours, theirs = [a.clone().requires_grad_(), b.clone().requires_grad_()], [a.clone().requires_grad_(),
                                                                                  b.clone().requires_grad_()]
        out = LF.pairwise_distance(*ours, p=p, eps=eps, keepdim=keepdim)
        ref = torch.pairwise_distance(*theirs, p=p, eps=eps, keepdim=keepdim)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, **TOL[F64])
        for g, h in zip(_grads(out, ours), _grads(ref, theirs), strict=True):
            torch.testing.assert_close(g, h, **TOL[F64])


# ---- CTC (gradients through log_softmax: torch's own assumes it)
def compare_ctc(logits: torch.Tensor, targets: torch.Tensor, input_lengths: object, target_lengths: object,
                dtype: torch.dtype = F64, **kw: object) -> None:
    tol = TOL[dtype]
    for reduction in REDUCTIONS:
        x, x_ref = logits.to(dtype).requires_grad_(), logits.to(dtype).requires_grad_()
        out = LF.ctc_loss(x.log_softmax(-1), targets, input_lengths, target_lengths, reduction=reduction, **kw)
        ref = TF.ctc_loss(x_ref.log_softmax(-1), targets, input_lengths, target_lengths, reduction=reduction, **kw)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        torch.testing.assert_close(out, ref, equal_nan=True, **tol)
        if bool(torch.isfinite(ref).all()):
            torch.testing.assert_close(_grads(out, [x])[0], _grads(ref, [x_ref])[0], **tol)


CTC_LOGITS = randn((6, 3, 4), 8)
CTC_TARGETS = torch.tensor([[1, 2, 2], [3, 3, 1], [1, 1, 1]])


@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("lengths", [([6, 5, 6], [3, 2, 1]), ([2, 1, 6], [3, 2, 1]), ([0, 0, 6], [0, 2, 0]),
                                     ([6, 6, 6], [3, 3, 3])], ids=["fits", "impossible", "zero", "repeats"])
def test_ctc_lengths(zero_infinity: bool, lengths: tuple) -> None:
    il, tl = (torch.tensor(v) for v in lengths)
    compare_ctc(CTC_LOGITS, CTC_TARGETS, il, tl, zero_infinity=zero_infinity)


def test_ctc_options_and_forms() -> None:
    il, tl = torch.tensor([6, 5, 6]), torch.tensor([3, 2, 1])
    compare_ctc(CTC_LOGITS, CTC_TARGETS - 1, il, tl, blank=3)  # blank last, targets 0..2
    compare_ctc(CTC_LOGITS, CTC_TARGETS, (6, 5, 6), (3, 2, 1))  # tuples
    compare_ctc(CTC_LOGITS, CTC_TARGETS.int(), il.int(), tl.int())  # int32
    compare_ctc(CTC_LOGITS * 1e4, CTC_TARGETS, il, tl)  # extreme logits
    compare_ctc(CTC_LOGITS, CTC_TARGETS, il, tl, dtype=F32)
    compare_ctc(CTC_LOGITS[:, :1], CTC_TARGETS[:1], il[:1], tl[:1])  # a batch of one
    compare_ctc(CTC_LOGITS[:, 0], CTC_TARGETS[0], il[:1], tl[:1])  # unbatched


# ---- low precision: lossdsl computes in float32 and rounds once; compared with float64 on the rounded inputs
def _low_precision_cases() -> dict[str, tuple[list, dict]]:
    """name -> (inputs, options); the first two inputs are differentiated where they are floating (not
    soft_margin_loss's target: torch's is not differentiable)."""
    x, t = randn((6, 4), 10), randn((6, 4), 11)
    p, s = rand((6, 4), 12, 0.05, 0.95), signs((6, 4), 13)
    y = labels((6,), 4, 14)
    return {
        "l1_loss": ([x, t], {}), "mse_loss": ([x, t], {}), "smooth_l1_loss": ([x, t], {"beta": 0.5}),
        "huber_loss": ([x, t], {"delta": 0.5}), "binary_cross_entropy": ([p, p.flip(0)], {"weight": rand((4,), 1)}),
        "binary_cross_entropy_with_logits": ([3 * x, p], {"pos_weight": rand((4,), 2, 0.0, 2.0)}),
        "cross_entropy": ([3 * x, y], {"label_smoothing": 0.1, "weight": rand((4,), 3), "ignore_index": 1}),
        "nll_loss": ([torch.log_softmax(x, 1), y], {"weight": rand((4,), 3)}),
        "kl_div": ([torch.log_softmax(x, 1), torch.softmax(t, 1)], {}),
        "poisson_nll_loss": ([x, 3 * p], {"full": True}), "gaussian_nll_loss": ([x, t, p], {"full": True}),
        "soft_margin_loss": ([3 * x, s], {}), "multilabel_soft_margin_loss": ([3 * x, p.round()], {}),
        "multilabel_margin_loss": ([x, torch.tensor([[0, 2, -1, 1]] * 6)], {}),
        "multi_margin_loss": ([x, y], {"p": 2, "weight": rand((4,), 3)}), "hinge_embedding_loss": ([x, s], {}),
        "margin_ranking_loss": ([x, t, s], {"margin": 0.2}), "cosine_embedding_loss": ([x, t, s[:, 0]], {}),
        "triplet_margin_loss": ([x, t, p], {"swap": True}), "triplet_margin_with_distance_loss": ([x, t, p], {}),
    }


LOW_CASES = _low_precision_cases()


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("name", sorted(LOW_CASES))
def test_low_precision_value_gradient_and_dtype(name: str, dtype: torch.dtype) -> None:
    inputs, kw = LOW_CASES[name]
    eps = torch.finfo(dtype).eps
    rounded = [_cast(_cast(v, dtype), F64) for v in inputs]
    kw_low, kw_64 = {k: _cast(v, dtype) for k, v in kw.items()}, {k: _cast(_cast(v, dtype), F64) for k, v in kw.items()}
    grad = (0,) if name == "soft_margin_loss" else (0, 1)
    value_tol = {"rtol": 2 * eps, "atol": 2 * eps} if dtype != F32 else TOL[F32]  # float32 computes in float32
    for reduction in REDUCTIONS:
        ours, truth_in = _leaves(inputs, grad, dtype), _leaves(rounded, grad, F64)
        out = _call(getattr(LF, name), *ours, reduction=reduction, **kw_low)
        truth = _call(getattr(TF, name), *truth_in, reduction=reduction, **kw_64)
        assert out.dtype == dtype
        try:
            ref_dtype = _call(getattr(TF, name), *[_cast(v, dtype) for v in inputs], reduction=reduction,
                              **kw_low).dtype
        except (NotImplementedError, RuntimeError):
            ref_dtype = dtype  # no float16/bfloat16 CPU kernel in torch (multi_margin, multilabel_margin)
        assert out.dtype == ref_dtype
        torch.testing.assert_close(out.double(), truth, **value_tol)
        for g, h in zip(_grads(out, _wrt(ours)), _grads(truth, _wrt(truth_in)), strict=True):
            scale = max(float(h.abs().max()), 1.0) if h.numel() else 1.0
            grad_tol = {"rtol": 4 * eps, "atol": 4 * eps * scale} if dtype != F32 else TOL[F32]
            torch.testing.assert_close(g.double(), h, **grad_tol)


@pytest.mark.parametrize("call", [
    (lambda f: f.mse_loss(randn((3,), 0).half(), randn((3,), 1).float())),
    (lambda f: f.l1_loss(randn((3,), 0).float(), randn((3,), 1))),
    (lambda f: f.poisson_nll_loss(randn((3,), 0).float(), rand((3,), 1))),
    (lambda f: f.margin_ranking_loss(randn((3,), 0).float(), randn((3,), 1).float(), signs((3,), 2))),
    (lambda f: f.triplet_margin_loss(randn((2, 3), 0).float(), randn((2, 3), 1).float(), randn((2, 3), 2))),
    (lambda f: f.binary_cross_entropy_with_logits(randn((3,), 0).float(), rand((3,), 1))),
    (lambda f: f.multilabel_soft_margin_loss(randn((2, 3), 0).float(), rand((2, 3), 1).round())),
    (lambda f: f.gaussian_nll_loss(randn((3,), 0).float(), randn((3,), 1).float(), rand((3,), 2, 0.5))),
    (lambda f: f.soft_margin_loss(randn((3,), 0).float(), torch.tensor([1, -1, 1]))),
], ids=["mse_f16_f32", "l1_f32_f64", "poisson_f32_f64", "ranking_target_f64", "triplet_mixed", "bce_logits_mixed",
        "mlsm_mixed", "gaussian_var_f64", "soft_margin_int_target"])
def test_mixed_dtype_promotion_matches_torch(call: Callable) -> None:
    same_as_torch(call, rtol=1e-6, atol=1e-7)


# ---- hypothesis over magnitudes from 1e-6 to 1e4
SCALES = st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e3, 1e4])


@HYPOTHESIS
@given(seed=st.integers(0, 10_000), scale=SCALES, n=st.integers(1, 3), c=st.integers(1, 4), k=st.integers(0, 2),
       smoothing=st.sampled_from([0.0, 0.3, 1.0]), weighted=st.booleans(), ignore=st.sampled_from([None, 0, -100]))
def test_hypothesis_cross_entropy_any_magnitude(seed: int, scale: float, n: int, c: int, k: int, smoothing: float,
                                                weighted: bool, ignore: int | None) -> None:
    shape = (n, c, *(2,) * k)
    kw: dict[str, object] = {"label_smoothing": smoothing}
    if weighted:
        kw["weight"] = rand((c,), seed + 2)
    x = randn(shape, seed, scale)
    probs = torch.softmax(randn(shape, seed + 1, scale), 1)
    compare("cross_entropy", [x, probs], grad=(0, 1), dtypes=(F64,), rtol=1e-9, atol=1e-10, **kw)
    if ignore is not None:
        kw["ignore_index"] = ignore
    compare("cross_entropy", [x, labels((n, *(2,) * k), c, seed + 3)], dtypes=(F64,), rtol=1e-9, atol=1e-10, **kw)


@HYPOTHESIS
@given(seed=st.integers(0, 10_000), scale=SCALES, shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       pos_weight=st.booleans(), weighted=st.booleans())
def test_hypothesis_logistic_losses_any_magnitude(seed: int, scale: float, shape: list[int], pos_weight: bool,
                                                  weighted: bool) -> None:
    x, y = randn(shape, seed, scale), rand(shape, seed + 1)
    kw: dict[str, object] = {}
    if pos_weight:
        kw["pos_weight"] = rand(shape[-1:], seed + 2, 0.0, 3.0)
    if weighted:
        kw["weight"] = rand(shape, seed + 3)
    tol = {"dtypes": (F64,), "rtol": 1e-9, "atol": 1e-10}
    compare("binary_cross_entropy_with_logits", [x, y], grad=(0, 1), **tol, **kw)
    compare("multilabel_soft_margin_loss", [x, y], grad=(0, 1), **tol)
    if scale <= 30:  # torch's soft_margin_loss overflows beyond |x| ~ 700 (see the test above)
        compare("soft_margin_loss", [x, torch.sign(y - 0.5)], **tol)
        compare("binary_cross_entropy", [torch.sigmoid(x / scale), y], grad=(0, 1), **tol)


@HYPOTHESIS
@given(seed=st.integers(0, 10_000), scale=SCALES, n=st.integers(1, 4), d=st.integers(1, 4),
       p=st.sampled_from([1.0, 1.5, 2.0, 3.0]), swap=st.booleans(), margin=st.sampled_from([-0.5, 0.0, 0.1, 1.0]),
       eps=st.sampled_from([0.0, 1e-6]))
def test_hypothesis_embedding_losses_any_magnitude(seed: int, scale: float, n: int, d: int, p: float, swap: bool,
                                                   margin: float, eps: float) -> None:
    a, b, c = (randn((n, d), seed + k, scale) for k in range(3))
    y = signs((n,), seed + 3)
    compare("cosine_embedding_loss", [a, b, y], grad=(0, 1), dtypes=(F64,), rtol=1e-7, atol=1e-9, margin=margin)
    compare("margin_ranking_loss", [a[:, 0], b[:, 0], y], grad=(0, 1), dtypes=(F64,), margin=margin * scale)
    compare("hinge_embedding_loss", [a, torch.sign(b)], dtypes=(F64,), margin=margin * scale)
    if margin > 0:
        compare("triplet_margin_loss", [a, b, c], grad=(0, 1, 2), dtypes=(F64,), rtol=1e-8, atol=1e-10,
                margin=margin * scale, p=p, swap=swap, eps=eps)


@HYPOTHESIS
@given(seed=st.integers(0, 10_000), scale=SCALES, shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       full=st.booleans(), beta=st.sampled_from([0.0, 1e-3, 1.0, 10.0]))
def test_hypothesis_regression_and_likelihoods_any_magnitude(seed: int, scale: float, shape: list[int], full: bool,
                                                             beta: float) -> None:
    x, t, v = randn(shape, seed, scale), randn(shape, seed + 1, scale), rand(shape, seed + 2, 0.0, scale)
    tol = {"dtypes": (F64,), "rtol": 1e-9, "atol": 1e-10}
    compare("gaussian_nll_loss", [x, t, v + 1e-3], grad=(0, 1, 2), full=full, **tol)
    compare("smooth_l1_loss", [x, t], grad=(0, 1), beta=beta * scale, **tol)
    if beta > 0:
        compare("huber_loss", [x, t], grad=(0, 1), delta=beta * scale, **tol)
    compare("kl_div", [x.clamp(max=600), t.clamp(max=600)], grad=(0, 1), reductions=KL_REDUCTIONS,
            log_target=True, **tol)
    compare("poisson_nll_loss", [x.clamp(max=600), 3 * v], full=full, **tol)
    compare("poisson_nll_loss", [v, 3 * v.flip(-1)], full=full, log_input=False, **tol)


# ---- where torch rejects an input, lossdsl raises a LossError
REJECTED = {
    "ce_target_shape": lambda f: f.cross_entropy(randn((4, 3, 2), 0), torch.zeros(4, dtype=torch.long)),
    "ce_batch_mismatch": lambda f: f.cross_entropy(randn((4, 3), 0), torch.zeros(5, dtype=torch.long)),
    "ce_multi_target": lambda f: f.cross_entropy(randn((4, 3), 0), torch.zeros(4, 1, dtype=torch.long)),
    "nll_weight_size": lambda f: f.nll_loss(randn((4, 3), 0), torch.zeros(4, dtype=torch.long), weight=rand((5,), 1)),
    "nll_float_target": lambda f: f.nll_loss(randn((4, 3), 0), torch.zeros(4, dtype=F64)),
    "ce_weight_2d": lambda f: f.cross_entropy(randn((4, 3), 0), torch.zeros(4, dtype=torch.long),
                                              weight=rand((1, 3), 1)),
    "mlm_3d": lambda f: f.multilabel_margin_loss(randn((2, 3, 4), 0), torch.zeros(2, 3, 4, dtype=torch.long)),
    "mlm_target_range": lambda f: f.multilabel_margin_loss(randn((4, 3), 0), torch.full((4, 3), 3)),
    "mm_target_2d": lambda f: f.multi_margin_loss(randn((4, 3), 0), torch.zeros(4, 1, dtype=torch.long)),
    "mm_3d": lambda f: f.multi_margin_loss(randn((2, 3, 4), 0), torch.zeros(2, 3, dtype=torch.long)),
    "mm_negative_target": lambda f: f.multi_margin_loss(randn((4, 3), 0), torch.full((4,), -1)),
    "mm_weight_size": lambda f: f.multi_margin_loss(randn((4, 3), 0), torch.zeros(4, dtype=torch.long),
                                                    weight=rand((4,), 1)),
    "mm_p3": lambda f: f.multi_margin_loss(randn((4, 3), 0), torch.zeros(4, dtype=torch.long), p=3),
    "ranking_no_broadcast": lambda f: f.margin_ranking_loss(randn((3,), 0), randn((4,), 1), signs((3,), 2)),
    "cosine_d_mismatch": lambda f: f.cosine_embedding_loss(randn((4, 3), 0), randn((4, 2), 1), signs((4,), 2)),
    "cosine_n_mismatch": lambda f: f.cosine_embedding_loss(randn((4, 3), 0), randn((4, 3), 1), signs((3,), 2)),
    "kl_no_broadcast": lambda f: f.kl_div(randn((4, 3), 0), rand((4, 2), 1), reduction="sum"),
    "l1_no_broadcast": lambda f: f.l1_loss(randn((4, 3), 0), randn((4, 2), 1)),
    "huber_no_broadcast": lambda f: f.huber_loss(randn((4, 3), 0), randn((4, 2), 1)),
    "hinge_no_broadcast": lambda f: f.hinge_embedding_loss(randn((4, 3), 0), signs((4, 2), 1)),
    "poisson_no_broadcast": lambda f: f.poisson_nll_loss(randn((4, 3), 0), rand((4, 2), 1)),
    "gaussian_var_shape": lambda f: f.gaussian_nll_loss(randn((3, 4), 0), randn((3, 4), 1), rand((4,), 2)),
    "gaussian_var_1x1": lambda f: f.gaussian_nll_loss(randn((3, 4), 0), randn((3, 4), 1), rand((1, 1), 2)),
    "mlsm_shape": lambda f: f.multilabel_soft_margin_loss(randn((4, 3), 0), rand((4, 2), 1)),
    "bce_shape": lambda f: f.binary_cross_entropy(rand((4, 3), 0), rand((4, 1), 1)),
    "bce_prob_range": lambda f: f.binary_cross_entropy(t64(1.5, 0.5), t64(0.5, 0.5)),
    "bce_target_range": lambda f: f.binary_cross_entropy(t64(0.5, 0.5), t64(-0.5, 0.5)),
    "bce_logits_shape": lambda f: f.binary_cross_entropy_with_logits(randn((4, 3), 0), rand((3,), 1)),
    "twd_margin_0": lambda f: f.triplet_margin_with_distance_loss(randn((2, 3), 0), randn((2, 3), 1),
                                                                  randn((2, 3), 2), margin=0.0),
    "twd_d_mismatch": lambda f: f.triplet_margin_with_distance_loss(randn((2, 3), 0), randn((2, 2), 1),
                                                                    randn((2, 3), 2)),
    "smooth_l1_beta_negative": lambda f: f.smooth_l1_loss(randn((3,), 0), randn((3,), 1), beta=-1.0),
    "smooth_l1_beta_nan": lambda f: f.smooth_l1_loss(randn((3,), 0), randn((3,), 1), beta=NAN),
    "huber_delta_nan": lambda f: f.huber_loss(randn((3,), 0), randn((3,), 1), delta=NAN),
    "ctc_blank_range": lambda f: f.ctc_loss(CTC_LOGITS.log_softmax(-1), CTC_TARGETS, [6, 6, 6], [3, 3, 3],
                                            blank=4),
    "ctc_negative_length": lambda f: f.ctc_loss(CTC_LOGITS.log_softmax(-1), CTC_TARGETS, [6, 6, 6], [3, 3, -1]),
    "ctc_length_count": lambda f: f.ctc_loss(CTC_LOGITS.log_softmax(-1), CTC_TARGETS, [6, 6], [3, 3, 3]),
    "ctc_input_length_too_long": lambda f: f.ctc_loss(CTC_LOGITS.log_softmax(-1), CTC_TARGETS, [7, 6, 6],
                                                      [3, 3, 3]),
    "ctc_4d": lambda f: f.ctc_loss(CTC_LOGITS[..., None], CTC_TARGETS, [6, 6, 6], [3, 3, 3]),
    "ctc_targets_too_short": lambda f: f.ctc_loss(CTC_LOGITS.log_softmax(-1), CTC_TARGETS[:, :1], [6, 6, 6],
                                                  [3, 3, 3]),
    "reduction_unknown": lambda f: f.mse_loss(randn((3,), 0), randn((3,), 1), reduction="avg"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_like_torch(case: str) -> None:
    torch_raises(REJECTED[case])
    raises_loss_error(REJECTED[case])


# =====================================================================================================
# Bugs: strict xfails, most harmful first. Each is a mismatch with torch that no document announces.
# =====================================================================================================
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_margin_loss_p_inf_is_the_max_norm(swap: bool) -> None:
    compare("triplet_margin_loss", [randn((4, 3), k) for k in range(3)], grad=(0, 1, 2), p=INF, swap=swap,
            dtypes=(F64,))


def test_pairwise_distance_p_inf() -> None:
    a, b = randn((4, 3), 0), randn((4, 3), 1)
    torch.testing.assert_close(LF.pairwise_distance(a, b, p=INF), torch.pairwise_distance(a, b, p=INF))


NAN_ANCHOR = t64(NAN, 0.5).reshape(1, 2)


@pytest.mark.parametrize("call", [
    lambda f: f.pairwise_distance(NAN_ANCHOR, torch.zeros(1, 2, dtype=F64)),
    lambda f: f.pairwise_distance(NAN_ANCHOR, torch.zeros(1, 2, dtype=F64), p=3.0),
    lambda f: f.triplet_margin_loss(NAN_ANCHOR, torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64)),
    lambda f: f.triplet_margin_loss(NAN_ANCHOR, torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64),
                                    swap=True, p=1.5),
    lambda f: f.triplet_margin_with_distance_loss(NAN_ANCHOR, torch.zeros(1, 2, dtype=F64),
                                                  torch.ones(1, 2, dtype=F64)),
], ids=["pairwise_p2", "pairwise_p3", "triplet", "triplet_swap_p1.5", "triplet_with_default_distance"])
def test_nan_embedding_is_not_hidden(call: Callable) -> None:
    """Found before c9af7f6: a NaN embedding gave distance 0 for p > 1 (the `sum > 0` guard of x^(1/p) is False
    for NaN and picked the 0 branch), so the triplet loss was a finite `margin`; fixed in c9af7f6."""
    assert torch.isnan(_call(call, TF)).all()
    assert torch.isnan(_call(call, LF)).all()


@pytest.mark.parametrize("name", ["pairwise_distance", "triplet_margin_loss", "triplet_margin_with_distance_loss"])
def test_pairwise_distance_takes_the_difference_before_adding_eps(name: str) -> None:
    a = randn((4, 3), 0, 10.0).float()
    near = [a.clone(), a + 1e-5]
    for b in near:
        if name == "pairwise_distance":
            torch.testing.assert_close(LF.pairwise_distance(a, b), torch.pairwise_distance(a, b), rtol=1e-4, atol=0)
        else:
            compare(name, [a, b, randn((4, 3), 1).float()], grad=(0, 1), dtypes=(F32,), rtol=1e-3, atol=1e-6,
                    margin=100.0)


def test_bce_nan_input_is_not_hidden() -> None:
    """Found before c9af7f6: a NaN probability gave a loss of 100 (the log's guard `input > 0` is False for NaN
    and picked the clamp value -100); fixed in c9af7f6. torch raises; NaN or a LossError are both acceptable."""
    x, y = t64(NAN, 0.5), t64(0.6, 0.5)
    torch_raises(lambda f: f.binary_cross_entropy(x, y))
    try:
        out = LF.binary_cross_entropy(x, y, reduction="none")
    except lossdsl.LossError:
        return
    assert torch.isnan(out[0])


BIG_WEIGHT = {
    "bce_weight": lambda f: f.binary_cross_entropy(rand((3, 5), 0, 0.1, 0.9), rand((3, 5), 1),
                                                   weight=rand((4, 3, 5), 2)),
    "bce_logits_weight": lambda f: f.binary_cross_entropy_with_logits(randn((3, 5), 0), rand((3, 5), 1),
                                                                      weight=rand((4, 3, 5), 2)),
    "bce_logits_pos_weight": lambda f: f.binary_cross_entropy_with_logits(randn((3, 5), 0), rand((3, 5), 1),
                                                                          pos_weight=rand((4, 3, 5), 2)),
    "soft_margin_small_input": lambda f: f.soft_margin_loss(randn((1, 4), 0), signs((3, 4), 1)),
}


@pytest.mark.parametrize("case", sorted(BIG_WEIGHT))
def test_weight_broadcasting_beyond_the_input_is_refused_as_by_torch(case: str) -> None:
    both_refuse(BIG_WEIGHT[case])


def _bce_clamped_grads(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dx and d/dy of mean(-(y max(log x, -100) + (1 - y) max(log(1 - x), -100))), by hand: a clamped log
    has a zero derivative."""
    lx, l1x = x.log(), torch.log1p(-x)
    dx = -y * torch.where(lx > -100, 1 / x, 0.0) + (1 - y) * torch.where(l1x > -100, 1 / (1 - x), 0.0)
    dy = -(lx.clamp(min=-100) - l1x.clamp(min=-100))
    return dx / x.numel(), dy / x.numel()


@pytest.mark.parametrize("x, y", [((1e-13, 1e-13, 1 - 1e-13), (1.0, 0.0, 0.0)), ((1e-50, 1e-300), (1.0, 0.0)),
                                  ((0.3, 0.999), (0.2, 1.0))], ids=["near_0_and_1", "below_exp_-100", "inside"])
def test_bce_gradient_is_the_derivative_of_the_clamped_loss(x: tuple, y: tuple) -> None:
    """Where x(1 - x) < 1e-12 torch's gradient is (x - y) / 1e-12 and its target gradient -logit(x) (docs/
    dropins.md); lossdsl's are the derivatives of the loss both return (x = 1e-13, y = 1: -1e13 / n, torch's
    -1e12 / n)."""
    xs, ys = t64(*x).requires_grad_(), t64(*y).requires_grad_()
    dx, dy = torch.autograd.grad(LF.binary_cross_entropy(xs, ys), (xs, ys))
    want_dx, want_dy = _bce_clamped_grads(xs.detach(), ys.detach())
    torch.testing.assert_close(dx, want_dx, rtol=1e-12, atol=0)
    torch.testing.assert_close(dy, want_dy, rtol=1e-12, atol=0)
    if x == (0.3, 0.999):  # inside [1e-12, 1 - 1e-12] torch agrees
        theirs = torch.autograd.grad(TF.binary_cross_entropy(xs, ys), (xs, ys))
        torch.testing.assert_close(dx, theirs[0]), torch.testing.assert_close(dy, theirs[1])


@pytest.mark.parametrize("name", ["smooth_l1_loss", "huber_loss"])
def test_smooth_l1_and_huber_gradient_at_infinite_error(name: str) -> None:
    compare(name, [t64(INF, -INF, 1.0), torch.zeros(3, dtype=F64)], grad=(0,), dtypes=(F64,),
            finite_grads_only=False)


@pytest.mark.parametrize("beta", [1e-40, 1e-46, 1e-300])
@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
def test_smooth_l1_tiny_beta_in_low_precision(beta: float, dtype: torch.dtype) -> None:
    x, y = t64(0.0, 1.0, 2.0).to(dtype), t64(0.0, 1.5, 1.0).to(dtype)
    grads = []
    for F in (TF, LF):
        leaf = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(F.smooth_l1_loss(leaf, y, beta=beta, reduction="sum"), leaf)[0])
    torch.testing.assert_close(grads[1], grads[0])


def test_ctc_blank_inside_a_target_is_refused() -> None:
    """torch documents it invalid but computes a number (6.56 here); lossdsl says where the blank is. A blank
    in the padding, past the target's length, is fine."""
    lp = randn((6, 1, 4), 0).log_softmax(-1)
    with pytest.raises(lossdsl.InputError, match="target 0 holds the blank \\(0\\) at position 1"):
        LF.ctc_loss(lp, torch.tensor([[1, 0, 2]]), [6], [3], reduction="none")
    padded = torch.tensor([[1, 2, 0]])
    torch.testing.assert_close(LF.ctc_loss(lp, padded, [6], [2], reduction="none"),
                               TF.ctc_loss(lp, padded, [6], [2], reduction="none"))


@pytest.mark.parametrize("name", ["triplet_margin_loss", "pairwise_distance"])
def test_p_zero_distance_counts_nonzero_differences(name: str) -> None:
    a, b, c = randn((4, 3), 0), randn((4, 3), 1), randn((4, 3), 2)
    args = (a, b, c) if name == "triplet_margin_loss" else (a, b)
    try:
        out = getattr(LF, name)(*args, p=0.0)
    except lossdsl.LossError:
        return
    torch.testing.assert_close(out, getattr(TF, name)(*args, p=0.0))


@pytest.mark.parametrize("call", [
    lambda f: f.hinge_embedding_loss(randn((3,), 0).float(), signs((3,), 1)),
    lambda f: f.soft_margin_loss(randn((3,), 0).float(), signs((3,), 1)),
    lambda f: f.cosine_embedding_loss(randn((2, 3), 0).float(), randn((2, 3), 1).float(), signs((2,), 2)),
], ids=["hinge_embedding", "soft_margin", "cosine_embedding"])
def test_result_dtype_is_the_inputs_not_a_wider_targets(call: Callable) -> None:
    same_as_torch(call, rtol=1e-6, atol=1e-6)


ACCEPTED = {
    "cosine_broadcast_input2": lambda f: f.cosine_embedding_loss(randn((4, 3), 0), randn((1, 3), 1), signs((4,), 2)),
    "triplet_3d": lambda f: f.triplet_margin_loss(randn((2, 4, 3), 0), randn((2, 4, 3), 1), randn((2, 4, 3), 2)),
    "triplet_distance_broadcast": lambda f: f.triplet_margin_with_distance_loss(randn((4, 3), 0), randn((1, 3), 1),
                                                                                randn((4, 3), 2)),
    "triplet_distance_keepdim": lambda f: f.triplet_margin_with_distance_loss(
        randn((4, 3), 0), randn((4, 3), 1), randn((4, 3), 2),
        distance_function=lambda a, b: torch.pairwise_distance(a, b, keepdim=True)),
    "pairwise_distance_broadcast": lambda f: f.pairwise_distance(randn((4, 3), 0), randn((3,), 1)),
    "mlsm_weight_per_sample": lambda f: f.multilabel_soft_margin_loss(randn((4, 3), 0), rand((4, 3), 1).round(),
                                                                      weight=rand((4, 1), 2)),
    "mlsm_weight_full": lambda f: f.multilabel_soft_margin_loss(randn((4, 3), 0), rand((4, 3), 1).round(),
                                                                weight=rand((4, 3), 2)),
    "ce_1d_input_target_1": lambda f: f.cross_entropy(randn((3,), 0), torch.tensor([1]), reduction="none"),
    "nll_1d_input_target_1": lambda f: f.nll_loss(randn((3,), 0), torch.tensor([1]), reduction="none"),
    "mm_1d_input_target_1": lambda f: f.multi_margin_loss(randn((3,), 0), torch.tensor([1]), reduction="none"),
    "mlm_0d": lambda f: f.multilabel_margin_loss(t64(0.5)[0], torch.tensor(0)),
}

# Options outside what torch documents, which torch computes anyway: lossdsl's constraints refuse them.
REFUSED_ON_PURPOSE = {
    "ce_negative_smoothing": lambda f: f.cross_entropy(randn((4, 3), 0), torch.tensor([0, 1, 2, 1]),
                                                       label_smoothing=-0.1),  # documented: in [0.0, 1.0]
    "poisson_negative_eps": lambda f: f.poisson_nll_loss(rand((3,), 0, 0.5, 1.0), rand((3,), 1), log_input=False,
                                                         eps=-1e-3),  # "avoids log(0)": log(x - 1e-3) may be NaN
    "gaussian_negative_eps": lambda f: f.gaussian_nll_loss(randn((3,), 0), randn((3,), 1), rand((3,), 2, 0.5),
                                                           eps=-1.0),  # a clamp of the variance below 0
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_computes_what_torch_computes(case: str) -> None:
    same_as_torch(ACCEPTED[case])


@pytest.mark.parametrize("case", sorted(REFUSED_ON_PURPOSE))
def test_refuses_options_outside_torchs_documented_range(case: str) -> None:
    _call(REFUSED_ON_PURPOSE[case], TF)  # torch computes a number
    with pytest.raises(lossdsl.ParameterError, match=r"eps|label_smoothing"):
        _call(REFUSED_ON_PURPOSE[case], LF)


UINT8_TARGETS = {
    "ce_uint8_target": lambda f: f.cross_entropy(randn((4, 3), 0), torch.tensor([0, 1, 2, 1], dtype=torch.uint8)),
    "nll_uint8_target": lambda f: f.nll_loss(randn((4, 3), 0), torch.tensor([0, 1, 2, 1], dtype=torch.uint8)),
}


@pytest.mark.parametrize("case", sorted(UINT8_TARGETS))
def test_uint8_class_targets_as_torch(case: str) -> None:
    """Fixed: uint8 class targets were a bare gather() RuntimeError; they are read as int64 now."""
    same_as_torch(UINT8_TARGETS[case])


# Inputs torch rejects that lossdsl reads as what they hold (a deliberate superset, docs/dropins.md): each
# equals torch's loss of the same values in the types torch takes.
LONG = torch.tensor([0, 1, 2, 1])
SUPERSET = {
    "ce_int32_target": (lambda f: f.cross_entropy(randn((4, 3), 0), LONG.int()),
                        lambda f: f.cross_entropy(randn((4, 3), 0), LONG)),
    "nll_int32_target": (lambda f: f.nll_loss(randn((4, 3), 0), LONG.int()),
                         lambda f: f.nll_loss(randn((4, 3), 0), LONG)),
    "mm_int32_target": (lambda f: f.multi_margin_loss(randn((4, 3), 0), LONG.int()),
                        lambda f: f.multi_margin_loss(randn((4, 3), 0), LONG)),
    "mlm_int32_target": (lambda f: f.multilabel_margin_loss(randn((2, 3), 0), torch.tensor([[0, -1, 1], [2, 1, -1]],
                                                                                             dtype=torch.int32)),
                         lambda f: f.multilabel_margin_loss(randn((2, 3), 0), torch.tensor([[0, -1, 1], [2, 1, -1]]))),
    "ce_weight_f32_input_f64": (lambda f: f.cross_entropy(randn((4, 3), 0), LONG, weight=rand((3,), 1).float()),
                                lambda f: f.cross_entropy(randn((4, 3), 0), LONG,
                                                          weight=rand((3,), 1).float().double())),
    "nll_weight_f64_input_f32": (lambda f: f.nll_loss(randn((4, 3), 0).float(), LONG, weight=rand((3,), 1)),
                                 lambda f: f.nll_loss(randn((4, 3), 0).float(), LONG, weight=rand((3,), 1).float())),
    "mm_weight_f64_input_f32": (lambda f: f.multi_margin_loss(randn((4, 3), 0).float(), LONG, weight=rand((3,), 1)),
                                lambda f: f.multi_margin_loss(randn((4, 3), 0).float(), LONG,
                                                              weight=rand((3,), 1).float())),
    "bce_target_f64_input_f32": (lambda f: f.binary_cross_entropy(rand((3,), 0, 0.1, 0.9).float(), rand((3,), 1)),
                                 lambda f: f.binary_cross_entropy(rand((3,), 0, 0.1, 0.9).float().double(),
                                                                  rand((3,), 1))),
    "mse_integer_inputs": (lambda f: f.mse_loss(torch.ones(2, 3, dtype=torch.long),
                                                torch.zeros(2, 3, dtype=torch.long)),
                           lambda f: f.mse_loss(torch.ones(2, 3), torch.zeros(2, 3))),
    "kl_integer_inputs": (lambda f: f.kl_div(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)),
                          lambda f: f.kl_div(torch.zeros(2, 3), torch.ones(2, 3))),
    "bce_logits_bool_target": (lambda f: f.binary_cross_entropy_with_logits(torch.zeros(2, 3),
                                                                            torch.ones(2, 3, dtype=torch.bool)),
                               lambda f: f.binary_cross_entropy_with_logits(torch.zeros(2, 3), torch.ones(2, 3))),
}


@pytest.mark.parametrize("case", sorted(SUPERSET))
def test_reads_what_torch_rejects_as_the_values_it_holds(case: str) -> None:
    ours, theirs = SUPERSET[case]
    torch_raises(ours)
    torch.testing.assert_close(_call(ours, LF), _call(theirs, TF), rtol=1e-6, atol=1e-7, check_dtype=False)


@pytest.mark.parametrize("margin", [0.0, -1.0])
def test_triplet_margin_must_be_positive_as_in_torch(margin: float) -> None:
    call = lambda f: f.triplet_margin_loss(randn((2, 3), 0), randn((2, 3), 1), randn((2, 3), 2), margin=margin)  # noqa: E731
    torch_raises(call)
    with pytest.raises(lossdsl.ParameterError, match="margin must be greater than 0"):
        _call(call, LF)


def test_nan_bce_target_and_empty_ctc_batch_give_nan() -> None:
    """torch raises for both; lossdsl propagates the NaN, and an empty batch's mean is 0/0 (its sum 0)."""
    assert torch.isnan(_call(lambda f: f.binary_cross_entropy(t64(0.5, 0.2), t64(NAN, 1.0)), LF))
    empty = (torch.zeros(4, 0, 3), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
             torch.zeros(0, dtype=torch.long))
    assert torch.isnan(LF.ctc_loss(*empty)) and float(LF.ctc_loss(*empty, reduction="sum")) == 0.0


RAW_ERRORS = {
    "triplet_d_mismatch": lambda f: f.triplet_margin_loss(randn((4, 3), 0), randn((4, 2), 1), randn((4, 3), 2)),
    "bce_weight_no_broadcast": lambda f: f.binary_cross_entropy(rand((4, 3), 0, 0.1, 0.9), rand((4, 3), 1),
                                                                weight=rand((2,), 2)),
    "bce_logits_weight_no_broadcast": lambda f: f.binary_cross_entropy_with_logits(randn((4, 3), 0), rand((4, 3), 1),
                                                                                   weight=rand((2,), 2)),
    "bce_logits_pos_weight_no_broadcast": lambda f: f.binary_cross_entropy_with_logits(randn((4, 3, 5), 0),
                                                                                       rand((4, 3, 5), 1),
                                                                                       pos_weight=rand((4,), 2)),
}


@pytest.mark.parametrize("case", sorted(RAW_ERRORS))
def test_bad_shapes_are_loss_errors_where_torch_rejects_them(case: str) -> None:
    both_refuse(RAW_ERRORS[case])


def test_uint8_class_targets_of_k_dim_inputs_are_read_as_indices() -> None:
    """torch refuses uint8 class targets; lossdsl reads them as the indices they hold (a deliberate superset)."""
    x, y = randn((2, 3, 2), 0), torch.tensor([[0, 2], [1, 1]], dtype=torch.uint8)
    torch_raises(lambda f: f.cross_entropy(x, y))
    torch.testing.assert_close(LF.cross_entropy(x, y), TF.cross_entropy(x, y.long()))


@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_margin_losses_propagate_a_nan_input(name: str) -> None:
    """torch's kernels skip a NaN term (`if (z > 0)` is false) and return a number (0.2333 here); lossdsl's
    max(0, z) is NaN, as every other loss is for a NaN input (docs/dropins.md)."""
    x = t64(NAN, 0.5, 0.2).reshape(1, 3)
    target = torch.tensor([1]) if name == "multi_margin_loss" else torch.tensor([[1, -1, 0]])
    assert torch.isfinite(getattr(TF, name)(x, target, reduction="none")).all()
    assert torch.isnan(getattr(LF, name)(x, target, reduction="none")).all()
