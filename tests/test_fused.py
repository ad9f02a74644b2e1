"""mode="fused": same gradients as autograd mode, fewer saved tensors, torch.compile and autocast."""

from __future__ import annotations

import pytest
import torch

import lossdsl
import lossdsl.stdlib
from lossdsl import fused
from lossdsl.fused import build_fused
from tests.conftest import AtenOps

CE = "loss ce(x[n, c]: logits, y[n]: index(c)):\n    -log_softmax_c(x)[n, y]"
CASES = {
    "ce": (CE, {}),
    "dice": ("""loss dice(p[n, c, *s]: prob, g[n, c, *s]: binary; eps = 1e-5 > 0):
    1 - (2*sum_{*s}(p*g) + eps) / (sum_{*s}(p^2) + sum_{*s}(g^2) + eps)""", {}),
    "focal": ("""loss focal(x: logits, y: binary; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0):
    p  = sigmoid(x)
    pt = where(y == 1, p, 1 - p)
    at = where(y == 1, alpha, 1 - alpha)
    return -at * (1 - pt)^gamma * log(pt)""", {}),
    "info_nce": ("""loss info_nce(q[i, d], k[j, d]; tau = 0.07 > 0):
    s[i, j] = sum_d(normalize_d(q)[i, d] * normalize_d(k)[j, d]) / tau
    -s[i, i] + logsumexp_j(s[i, j])""", {}),
    "center": ("""loss center(f[n, d], y[n]: index(k); c[k, d]: learnable = 0):
    0.5 * sum_d((f[n, d] - c[y, d])^2)""", {"k": 3}),
    "weighted_ce": ("""loss wce(x[n, c]: logits, y[n]: index(c); weight[c] = 1, ignore_index: int = -100):
    keep = [y != ignore_index]
    -keep * weight[y] * log_softmax_c(x)[n, y]
    reduce mean weighted by keep * weight[y]""", {"weight": torch.tensor([0.2, 1.0, 3.0])}),
    "broadcast_mse": ("(x - y)^2", {}),
}
SHAPES = {"x": (6, 3), "y": (6,), "p": (2, 3, 2, 2), "g": (2, 3, 2, 2), "q": (4, 5), "k": (4, 5), "f": (6, 5)}


def make_inputs(loss: lossdsl.Loss, dtype=torch.float64, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in loss.inputs:
        shape = SHAPES[i.name] if i.axes is not None or i.name not in ("x", "y") else (6, 3)
        if i.kind == "index":
            t = torch.randint(0, 3, shape, generator=gen)
            t[0] = -100 if loss.ir.sentinels else t[0]
        elif i.kind in ("binary",):
            t = (torch.rand(shape, generator=gen) > 0.5).to(dtype)
        elif i.kind == "prob":
            t = 0.05 + 0.9 * torch.rand(shape, generator=gen, dtype=dtype)
        else:
            t = torch.randn(shape, generator=gen, dtype=dtype)
        out.append(t)
    return out


def gradients(module: torch.nn.Module, args: list[torch.Tensor]) -> list[torch.Tensor]:
    leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    out = module(*leaves)
    out.backward(torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape))
    grads = [a.grad for a in leaves if a.requires_grad] + [p.grad for p in module.parameters()]
    return [g if g is None else g.detach().clone() for g in grads]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_gradients_equal_autograd(case, reduction):
    text, params = CASES[case]
    eager = lossdsl.compile(text, reduction=reduction, **params).double()
    fused = lossdsl.compile(text, reduction=reduction, mode="fused", **params).double()
    assert type(fused).__name__.endswith("Fused")
    args = make_inputs(eager.loss)
    torch.testing.assert_close(fused(*args), eager(*args), rtol=1e-12, atol=1e-12)
    for a, b in zip(gradients(fused, args), gradients(eager, args), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fused_keeps_the_module_state_and_trains_learnable_parameters():
    text, params = CASES["center"]
    eager = lossdsl.compile(text, **params)
    fused = build_fused(lossdsl.parse(text), **params)
    x = torch.randn(6, 5)
    y = torch.randint(0, 3, (6,))
    eager(x, y), fused(x, y)  # size the lazily shaped centres
    assert fused.state_dict().keys() == eager.state_dict().keys()
    opt = torch.optim.SGD(fused.parameters(), lr=0.5)
    before = fused(x, y).item()
    for _ in range(5):
        opt.zero_grad()
        fused(x, y).backward()
        opt.step()
    assert fused(x, y).item() < before


def _saved_bytes(module: torch.nn.Module, args: list[torch.Tensor]) -> int:
    total = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        total.append(t.numel() * t.element_size())
        return t

    leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*leaves).backward()
    return sum(total)


@pytest.mark.parametrize("case", ["ce", "focal", "dice"])
def test_fused_saves_only_the_inputs(case):
    text, params = CASES[case]
    eager = lossdsl.compile(text, **params)
    fused = lossdsl.compile(text, mode="fused", **params)
    args = make_inputs(eager.loss, torch.float32)
    inputs = sum(a.numel() * a.element_size() for a in args)
    assert _saved_bytes(fused, args) == inputs
    assert _saved_bytes(eager, args) > inputs


def test_fused_under_torch_compile():
    fused = lossdsl.compile(CE, mode="fused")
    eager = lossdsl.compile(CE)
    args = make_inputs(eager.loss, torch.float32)
    compiled = torch.compile(fused, backend="aot_eager")
    for a, b in zip(gradients(compiled, args), gradients(eager, args), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_under_autocast():
    text, params = CASES["dice"]
    fused = lossdsl.compile(text, mode="fused", **params)
    eager = lossdsl.compile(text, **params)
    args = make_inputs(eager.loss, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gradients(fused, args)
        want = gradients(eager, args)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32  # gradients come back in the inputs' dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)


def test_losses_without_a_symbolic_gradient_stay_in_autograd_mode():
    module = lossdsl.compile("loss g(x, d: fn):\n    softplus(-d(x))", mode="fused")
    assert not type(module).__name__.endswith("Fused")
    x = torch.randn(4, 3, requires_grad=True)
    module(x, torch.nn.Linear(3, 1)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---- what the backward allocates and runs (seen at the aten level, inside einsum too)
def _backward_ops(module: torch.nn.Module, args: list[torch.Tensor]) -> AtenOps:
    leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    out = module(*leaves)
    out.backward()  # once untraced: the backward class is generated on first use
    leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    out = module(*leaves)
    with AtenOps() as ops:
        out.backward()
    return ops


@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "supcon_loss", "clip_loss"])
def test_pairwise_backward_builds_no_three_axis_temporary(name):
    """n = 48 rows, d = 256: an [i, j, d] temporary (the info_nce blow-up: 4 GB at 4M elements) has 590k
    elements; the inputs and the [i, j] similarities 12k and 2.3k."""
    loss = lossdsl.stdlib.get(name)
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(48, 256, generator=gen) if i.axes and len(i.axes) == 2 else
            torch.randint(0, 4, (48,), generator=gen) for i in loss.inputs]
    ops = _backward_ops(loss.compile(mode="fused"), args)
    assert ops.largest <= 48 * 256


def test_info_nce_backward_computes_the_similarities_once_per_use():
    """Forward s = nq nk^T and one product per gradient: 3 matrix products with outputs of [i, j] or [i, d]
    (row-wise dot products are bmm too, but of 32 elements). The diagonal s[i, i] is a row-wise dot product,
    not a second [i, j] product (emit.at: a sum read on its diagonal, not yet computed).
    Once 46 einsums recomputed s (each scatter's fresh index names hid it from the emitter's memo). And no
    tie mask [s[i, j] == max_j s[i, j]]: the max shift of the logsumexp is frozen (it cancels)."""
    loss = lossdsl.stdlib.get("info_nce")
    args = [torch.randn(32, 16), torch.randn(32, 16)]
    ops = _backward_ops(loss.compile(mode="fused"), args)
    assert sum(op in ("bmm", "mm") and numel >= 32 * 16 for op, numel in ops.ops) <= 3
    assert not [op for op, numel in ops.ops if op == "eq" and numel >= 32 * 32]


def test_info_nce_with_tied_similarities_matches_autograd():
    """Duplicate keys tie in the max shift of the logsumexp; the shift is frozen in the gradient (it cancels),
    autograd mode splits the tie through amax: the same gradient either way."""
    text = CASES["info_nce"][0]
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(3, 5, generator=gen, dtype=torch.float64).repeat(2, 1)  # rows 0-2 == rows 3-5
    args = [torch.randn(6, 5, generator=gen, dtype=torch.float64), k]
    eager, fused = lossdsl.compile(text).double(), lossdsl.compile(text, mode="fused").double()
    for a, b in zip(gradients(fused, args), gradients(eager, args), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("flags", [{}, {"use_sigmoid": True}, {"use_softmax": True}])
def test_bool_parameters_prune_the_dead_branch_of_the_backward(flags):
    loss = lossdsl.stdlib.get("jaccard_loss")
    gen = torch.Generator().manual_seed(0)
    args = [torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64),
            (torch.rand(2, 3, 4, 4, generator=gen) > 0.5).double()]
    eager, fused = loss.compile(**flags).double(), loss.compile(mode="fused", **flags).double()
    for a, b in zip(gradients(fused, args), gradients(eager, args), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    ops = {op for op, _ in _backward_ops(fused, args).ops}
    assert ("_softmax" in ops) == bool(flags.get("use_softmax"))
    assert ("sigmoid" in ops) == bool(flags.get("use_sigmoid"))


@pytest.mark.parametrize("cond", ["b", "b == 1", "b != 0", "not b == 0"])
@pytest.mark.parametrize("value", [False, True])
def test_a_bool_parameter_compared_with_a_number_takes_the_same_branch_as_eager(cond: str, value: bool) -> None:
    """The backward fixes bool parameters to the module's values; inside a comparison that is the number 0
    or 1, not SymPy's false/true (Eq(true, 1) is false in SymPy), else fused took the other branch."""
    src = f"loss a(x; b: bool = false):\n    where({cond}, x^2, 3*x)"
    x = torch.linspace(-2, 2, 5, dtype=torch.float64, requires_grad=True)
    expected = 2 * x.detach() if value else torch.full_like(x, 3.0)
    eager, fused_ = lossdsl.compile(src, b=value, reduction="sum"), lossdsl.compile(src, mode="fused", b=value,
                                                                                     reduction="sum")
    torch.testing.assert_close(torch.autograd.grad(eager(x), x)[0], expected)
    torch.testing.assert_close(torch.autograd.grad(fused_(x), x)[0], expected)


@pytest.mark.parametrize("name", ["info_nce", "nt_xent"])
def test_fused_gradient_at_zero_vectors_equals_eager(name):
    """normalize of an all-zero row divides by 1 in the forward; the symbolic backward must do the same
    (it divided by the bare norm: 0/0, -inf in float32)."""
    loss = lossdsl.stdlib.get(name)
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(4, 8, generator=gen, dtype=torch.float64) for _ in loss.ir.inputs]
    args[0][1] = 0.0
    args[-1][2] = 0.0
    grads = []
    for mode in ("eager", "fused"):
        leaves = [a.clone().requires_grad_(k < 2) for k, a in enumerate(args)]
        loss.compile(mode=mode)(*leaves).backward()
        grads.append([leaf.grad for leaf in leaves[:2]])
    for g_eager, g_fused in zip(*grads, strict=True):
        assert torch.isfinite(g_fused).all()
        torch.testing.assert_close(g_fused, g_eager, rtol=1e-9, atol=1e-12)


CLASS_LOSSES = {  # stdlib losses that read x[n, y[n]]: (their parameters, axis sizes)
    "nll_loss": ({"weight": torch.tensor([0.5, 1.0, 2.0, 1.5])}, {}),
    "cross_entropy": ({"weight": torch.tensor([0.5, 1.0, 2.0, 1.5])}, {}),
    "cross_entropy_smoothed": ({"label_smoothing": 0.1}, {}),
    "focal_loss": ({}, {}),
    "label_smoothing_cross_entropy": ({}, {}),
    "poly1_cross_entropy": ({}, {}),
    "multi_margin_loss": ({}, {}),
    "center_loss": ({"centers": torch.randn(4, 3, generator=torch.Generator().manual_seed(1))}, {"k": 4}),
    "distillation_loss": ({}, {}),
    "faster_rcnn_loss": ({}, {}),
}
SIZES = {"n": 5, "c": 4, "d": 3, "k": 4, "*n": (2, 3), "*d": (2,)}


def _class_inputs(loss: lossdsl.Loss, ignored: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in loss.inputs:
        shape = [s for a in i.axes for s in ((SIZES[a],) if isinstance(SIZES[a], int) else SIZES[a])]
        if i.kind == "index":
            size = 4  # every index input here indexes an axis of size 4 (c or k)
            t = torch.randint(0, size, shape, generator=gen)
            if ignored and "ignore_index" in [p.name for p in loss.ir.params]:
                t.view(-1)[1] = -100
            out.append(t)
        else:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float64))
    return out


@pytest.mark.parametrize("name", sorted(CLASS_LOSSES))
def test_fused_class_losses_scatter_the_same_gradients_as_autograd(name):
    """The backward of a gathered read x[n, y[n]] is a scatter (emit.try_scatter / try_scatter_add /
    try_pick): the same numbers as autograd mode, with and without ignored targets (the gathering copy of
    the targets is then a clamped one, else the targets themselves)."""
    params, _ = CLASS_LOSSES[name]
    loss = lossdsl.stdlib.get(name)
    for reduction, ignored in (("mean", False), ("mean", True), ("none", True)):
        args = _class_inputs(loss, ignored)
        eager = loss.compile(reduction=reduction, **params).double()
        fused = loss.compile(reduction=reduction, mode="fused", **params).double()
        for a, b in zip(gradients(fused, args), gradients(eager, args), strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "most"), [("nll_loss", 2), ("cross_entropy", 3)])
def test_class_backward_writes_no_dense_one_hot(name, most):
    """[n, c] = 64 x 1000 work in the backward: nll's gradient is zeros + one scatter (it was an arange
    compare, a cast and two multiplies: 4 dense ops, and 9 ms at 4096 x 1024 where the built-in takes 0.8),
    cross entropy's is softmax * scale + a scatter_add of the target column (8 dense ops before)."""
    loss = lossdsl.stdlib.get(name)
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(64, 1000, generator=gen), torch.randint(0, 1000, (64,), generator=gen)]
    ops = _backward_ops(loss.compile(mode="fused"), args)
    views = ("view", "_unsafe_view", "reshape", "detach", "expand", "unsqueeze", "permute")
    dense = [op for op, numel in ops.ops if numel >= 64 * 1000 and op not in views]
    assert len(dense) <= most, dense
    assert not {"eq", "arange", "sum"} & set(dense)


def test_backward_accumulates_full_size_terms_in_place() -> None:
    """Tversky's gradient is a sum of three [n, c, s] terms: accumulated into the first one (add_, sub_), so
    the backward holds one full-size sum, not a chain of fresh ones (peak at 4M elements: 84 -> 50 MB)."""
    loss = lossdsl.stdlib.get("tversky_loss")
    gen = torch.Generator().manual_seed(0)
    p, g = torch.rand(2, 3, 16, 16, generator=gen), (torch.rand(2, 3, 16, 16, generator=gen) > 0.5).float()
    ops = [op for op, numel in _backward_ops(loss.compile(mode="fused"), [p, g]).ops if numel == p.numel()]
    assert {"add_", "sub_"} <= set(ops) and not {"add", "sub"} & set(ops), ops
    eager = loss.compile()
    for a, b in zip(gradients(loss.compile(mode="fused").double(), [p.double(), g.double()]),
                    gradients(eager.double(), [p.double(), g.double()]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fused_backward_reads_exponent_parameters_as_numbers() -> None:
    """d/dx of (1 - p_t)^gamma holds (1 - p_t)^(gamma - 1): with gamma read as a Python number the backward's
    pows are pow(Tensor, Scalar) (pow(x, 0-dim tensor) is a generic pow); a changed gamma is followed."""

    class Overloads(torch.utils._python_dispatch.TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    module = lossdsl.stdlib.sigmoid_focal_loss(mode="fused").double()
    eager = lossdsl.stdlib.sigmoid_focal_loss().double()
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(64, generator=gen, dtype=torch.float64), (torch.rand(64, generator=gen) > 0.5).double()]
    for gamma in (2.0, 0.5):
        module.gamma.fill_(gamma)
        eager.gamma.fill_(gamma)
        x = args[0].clone().requires_grad_()
        out = module(x, args[1])
        with Overloads() as ops:
            out.backward()
        pows = [op for op in ops.seen if op.startswith("aten.pow")]
        assert pows and all(op == "aten.pow.Tensor_Scalar" for op in pows), pows
        torch.testing.assert_close(gradients(module, args)[0], gradients(eager, args)[0], rtol=1e-9, atol=1e-12)


def test_log_cosh_backward_is_one_tanh_and_exact_at_extremes():
    """The symbolic gradient of log-cosh is tanh(x - y) / N: the backward runs one tanh and no where (the
    stable forward's branches are not differentiated), and is +-1/N at errors of +-1e4 in every float dtype."""
    module = lossdsl.stdlib.get("log_cosh_loss").compile(mode="fused")
    x = torch.tensor([-1e4, -3.0, -1e-6, 0.0, 2e-7, 0.5, 40.0, 1e4], dtype=torch.float64)
    y = torch.zeros_like(x)
    ops = _backward_ops(module, [x, y])  # clones: x itself stays a constant
    names = [name for name, _ in ops.ops]
    assert names.count("tanh") == 1 and "where" not in names
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype).clone().requires_grad_()
        module(xd, y.to(dtype)).backward()
        expected = torch.tanh(x.to(dtype).double()) / x.numel()  # of the rounded inputs
        assert xd.grad.dtype == dtype and torch.isfinite(xd.grad).all()
        half = dtype.itemsize == 2  # whose subnormals end at 6e-8: tanh(2e-7) / 8 rounds to 0 there
        torch.testing.assert_close(xd.grad.double(), expected, rtol=1e-2 if half else 1e-6,
                                   atol=6e-8 if half else 1e-12)


@pytest.mark.parametrize("name", ["multilabel_margin_loss", "dice_loss", "tversky_loss", "jaccard_loss",
                                  "combo_loss", "log_cosh_loss"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_kernel_form_backward_equals_the_eager_form(name, reduction):
    """Compiled mode's backward merges sums over one binder (gradient.merge_sums) and spells tanh by its
    arithmetic form (stable.with_kernel_functions); run eagerly in float64, it returns the eager form's
    gradients. These are the stdlib losses it changes."""
    from lossdsl.fused import _backward_class, _wanted
    from lossdsl.strategies import sample_inputs

    loss = lossdsl.stdlib.get(name)
    drawn, _ = sample_inputs(loss.ir, torch.Generator().manual_seed(4), sizes={}, params={})
    module = loss.compile(mode="fused", reduction=reduction).double()
    args = [drawn[i.name].requires_grad_(drawn[i.name].is_floating_point()) for i in loss.inputs]
    want = _wanted(module, args)
    with torch.no_grad():
        out = module(*args)
    seed = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).reshape(out.shape)
    kernel, eager = (_backward_class(module, want, kernel=k) for k in (53, None))
    assert kernel.__lossdsl_source__ != eager.__lossdsl_source__
    for a, b in zip(kernel.forward(module, *args, grad_out=seed), eager.forward(module, *args, grad_out=seed),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_kernel_backward_of_log_cosh_is_sized_for_float32():
    """The float32 kernel backward (24 bits: shorter polynomials than float64's) is tanh within 2 ulp, from
    0 through both sides of the 1/2 switch to saturation, and prints no torch.tanh (Inductor's costs
    three times the form on CPU)."""
    from lossdsl.fused import _backward_class

    module = lossdsl.stdlib.get("log_cosh_loss").compile(mode="fused", reduction="sum")
    e = torch.cat([torch.logspace(-20, 1.3, 2000), -torch.linspace(0.3, 0.7, 801)])
    single, double = (_backward_class(module, ("x",), kernel=k) for k in (24, 53))
    assert "torch.tanh" not in single.__lossdsl_source__
    assert single.__lossdsl_source__.count(" + ") < double.__lossdsl_source__.count(" + ")
    grad, = single.forward(module, e, torch.zeros_like(e), grad_out=torch.tensor(1.0))
    want = torch.tanh(e.double())
    assert ((grad.double() - want).abs() <= 2 * torch.finfo(torch.float32).eps * want.abs()).all()


@pytest.mark.slow
def test_compiled_backward_of_a_float64_parameter_uses_the_prepared_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_backward keys the table by the inputs' dtype, as the generated forward computes in; the traced
    backward looked it up by the inputs' and learnable parameters' (a float64 log_var next to float32 task
    losses missed, and built its class behind a graph break). Gradients: exp(-s) and 1 - exp(-s) l by hand."""
    built = []
    real = fused._built_backward
    monkeypatch.setattr(fused, "_built_backward", lambda key: built.append(key) or real(key))
    module = lossdsl.stdlib.uncertainty_weighting(t=3, mode="compiled", backward="symbolic")
    module.log_var.data = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    losses = torch.tensor([0.25, 1.5, 3.0], requires_grad=True)
    module(losses).backward()
    s = module.log_var.detach()
    torch.testing.assert_close(losses.grad, torch.exp(-s).float())
    torch.testing.assert_close(module.log_var.grad, 1 - torch.exp(-s) * losses.detach().double())
    assert not built
