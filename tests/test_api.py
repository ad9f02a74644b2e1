"""Every LANGUAGE.md example against an independent float64 reference, forward and gradient."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from tests.conftest import LANGUAGE_MD, assert_close, grads

D = torch.float64

FOCAL = """
# Sigmoid focal loss on logits (Lin et al., 2017)
loss focal(x: logits, y: binary; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0):
    p  = sigmoid(x)
    pt = where(y == 1, p, 1 - p)
    at = where(y == 1, alpha, 1 - alpha)
    return -at * (1 - pt)^gamma * log(pt)
"""

EXAMPLES = """
loss cross_entropy(x[n, c, *d]: logits, y[n, *d]: index(c);
                   weight[c] = 1, ignore_index: int = -100, label_smoothing = 0 in [0, 1]):
    lp = log_softmax_c(x)
    keep = [y != ignore_index]
    nll = -weight[y] * lp[n, y, *d]
    smooth = -sum_c(weight[c] * lp[n, c, *d]) / C      # C: the size of axis c
    keep * ((1 - label_smoothing) * nll + label_smoothing * smooth)
    reduce mean weighted by keep * weight[y]

loss dice(p[n, c, *s]: prob, g[n, c, *s]: binary; eps = 1e-5 > 0):
    1 - (2*sum_{*s}(p*g) + eps) / (sum_{*s}(p^2) + sum_{*s}(g^2) + eps)

loss info_nce(q[i, d], k[j, d]; tau = 0.07 > 0):     # the positive of q[i] is k[i]
    s[i, j] = sum_d(normalize_d(q)[i, d] * normalize_d(k)[j, d]) / tau
    -s[i, i] + logsumexp_j(s[i, j])

loss huber(x, y; delta = 1.0 > 0):
    e = |x - y|
    0.5*e^2 if e <= delta else delta*(e - 0.5*delta)

loss center(f[n, d], y[n]: index(k); c[k, d]: learnable = 0):
    0.5 * sum_d((f[n, d] - c[y, d])^2)

loss uncertainty_weighting(l[t]; s[t]: learnable = 0):   # Kendall et al. 2018
    sum_t(exp(-s[t]) * l[t] + s[t])
"""

LOSSES = lossdsl.load(EXAMPLES)


def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=D) * scale).requires_grad_()


def test_one_line_focal_matches_formula() -> None:
    focal = lossdsl.compile("-alpha*(1-p)^gamma*log(p)", alpha=0.25, gamma=2.0)
    p = torch.rand(7, 3, dtype=D).clamp(0.01, 0.99).requires_grad_()
    ref = (-0.25 * (1 - p) ** 2 * torch.log(p)).mean()
    out = focal(p)
    assert_close(out, ref)
    assert_close(grads(out, p)[0], grads(ref, p)[0])
    assert isinstance(focal, torch.nn.Module)


def test_one_line_inputs_order_and_reductions() -> None:
    f = lossdsl.compile("(y - x)^2 * w", w=2.0, inputs=["x", "y"], reduction="none")
    x, y = torch.randn(4, dtype=D), torch.randn(4, dtype=D)
    assert_close(f(x, y), (y - x) ** 2 * 2)
    g = lossdsl.compile("(y - x)^2 * w", w=2.0, reduction="sum")
    assert_close(g(y, x), ((y - x) ** 2 * 2).sum())  # default order: first appearance (y, then x)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.9, 0.0), (0.5, 3.5)])
def test_focal_file_matches_reference(alpha: float, gamma: float) -> None:
    focal = lossdsl.compile(FOCAL, alpha=alpha, gamma=gamma)
    x, y = leaf(5, 3, scale=3), (torch.rand(5, 3) > 0.5).to(D)
    p = torch.sigmoid(x)
    pt = torch.where(y == 1, p, 1 - p)
    at = torch.where(y == 1, torch.tensor(alpha, dtype=D), torch.tensor(1 - alpha, dtype=D))
    ref = (-at * (1 - pt) ** gamma * torch.log(pt)).mean()
    out = focal(x, y)
    assert_close(out, ref)
    assert_close(grads(out, x)[0], grads(ref, x)[0])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 5), spatial=st.sampled_from([(), (3,), (2, 1, 3)]),
       smoothing=st.sampled_from([0.0, 0.1, 0.7]), ignore=st.booleans(), weighted=st.booleans())
def test_cross_entropy_matches_torch(n: int, c: int, spatial: tuple, smoothing: float, ignore: bool,
                                     weighted: bool) -> None:
    x = leaf(n, c, *spatial, scale=2)
    y = torch.randint(0, c, (n, *spatial))
    if ignore:
        y.view(-1)[0] = -100
    w = torch.rand(c, dtype=D) + 0.1 if weighted else None
    params = {"label_smoothing": smoothing} | ({"weight": w} if weighted else {})
    for reduction in ("mean", "sum", "none"):
        ce = LOSSES["cross_entropy"].compile(reduction=reduction, **params)
        ref = F.cross_entropy(x, y, weight=w, label_smoothing=smoothing, reduction=reduction)
        out = ce(x, y)
        assert out.shape == ref.shape
        assert_close(out, ref)
        assert_close(grads(out, x)[0], grads(ref, x)[0])


@pytest.mark.parametrize("spatial", [(), (5,), (2, 3, 2)])
def test_dice_over_groups_of_rank_0_1_3(spatial: tuple) -> None:
    p = torch.rand(2, 3, *spatial, dtype=D).requires_grad_()
    g = (torch.rand(2, 3, *spatial) > 0.5).to(D)
    dims = tuple(range(2, 2 + len(spatial)))
    inter = (p * g).sum(dims) if dims else p * g
    den = ((p * p).sum(dims) + (g * g).sum(dims)) if dims else p * p + g * g
    ref = 1 - (2 * inter + 1e-5) / (den + 1e-5)
    dice = LOSSES["dice"].compile(reduction="none")
    out = dice(p, g)
    assert out.shape == (2, 3)
    assert_close(out, ref)
    assert_close(grads(out, p)[0], grads(ref, p)[0])


def test_info_nce_is_cross_entropy_over_cosine_similarities() -> None:
    q, k = leaf(6, 5), leaf(6, 5)
    s = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
    ref = F.cross_entropy(s, torch.arange(6))
    out = LOSSES["info_nce"].compile(tau=0.2)(q, k)
    assert_close(out, ref)
    for a, b in zip(grads(out, q, k), grads(ref, q, k), strict=True):
        assert_close(a, b)


def test_info_nce_never_builds_the_pairwise_by_feature_tensor() -> None:
    src = LOSSES["info_nce"].to_source()
    assert re.search(r"torch\.einsum\('(jd,id|id,jd)->ij'", src)
    assert not re.search(r"\[:, None, :\]|\[None, :, :\]", src)


@settings(max_examples=15, deadline=None)
@given(shape_x=st.sampled_from([(4,), (2, 3), (3, 1), ()]), shape_y=st.sampled_from([(4,), (1,), ()]),
       delta=st.floats(0.1, 3.0))
def test_huber_broadcasts_like_torch(shape_x: tuple, shape_y: tuple, delta: float) -> None:
    try:
        torch.broadcast_shapes(shape_x, shape_y)
    except RuntimeError:
        with pytest.raises(lossdsl.InputError, match="do not broadcast"):
            LOSSES["huber"].compile()(torch.zeros(shape_x), torch.zeros(shape_y))
        return
    x, y = leaf(*shape_x, scale=2), torch.randn(shape_y, dtype=D)
    out = LOSSES["huber"].compile(delta=delta, reduction="none")(x, y)
    ref = F.huber_loss(*torch.broadcast_tensors(x, y), delta=delta, reduction="none")
    assert_close(out, ref)
    assert_close(grads(out, x)[0], grads(ref, x)[0])


def test_center_loss_learns_centres_sized_by_keyword() -> None:
    f, y = leaf(5, 3), torch.tensor([0, 3, 1, 3, 2])
    center = LOSSES["center"].compile(k=4)
    out = center(f, y)
    assert isinstance(center.c, torch.nn.Parameter) and center.c.shape == (4, 3)
    with torch.no_grad():
        center.c.copy_(torch.randn(4, 3))
    out = center(f, y)
    c = center.c.detach().to(D).requires_grad_()
    ref = (0.5 * ((f - c[y]) ** 2).sum(1)).mean()
    assert_close(out, ref, rtol=1e-6)
    (gc,) = torch.autograd.grad(out, center.c)
    assert_close(gc, grads(ref, c)[0], rtol=1e-6, atol=1e-7)


def test_uncertainty_weighting_parameters_train() -> None:
    loss = LOSSES["uncertainty_weighting"].compile(t=3)
    assert [n for n, _ in loss.named_parameters()] == ["s"]
    with torch.no_grad():
        loss.s.copy_(torch.tensor([0.5, -1.0, 2.0]))
    tasks = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    s = loss.s.detach().to(D)
    assert_close(loss(tasks), (torch.exp(-s) * tasks + s).sum(), rtol=1e-6)


def test_learnable_parameter_materialises_lazily() -> None:
    loss = LOSSES["uncertainty_weighting"].compile()
    assert isinstance(loss.s, torch.nn.parameter.UninitializedParameter)
    loss(torch.ones(4))
    assert loss.s.shape == (4,) and torch.all(loss.s == 0)


def test_bare_pairwise_intermediate_inside_a_reduction_reads_its_own_axes() -> None:
    """`sum_{c, j}(h)` with h[n, c, j] declared: the bare h is h[n, c, j] with the reduction's c and j
    (the reduction renames its j; the bare name used to keep the declared one and fail to lower)."""
    text = """loss pairs(x[n, c]):
    h[n, c, j] = relu(1 - x[n, c] + x[n, j]) * [c != j]
    sum_{c, j}(h)"""
    x = torch.randn(6, 5, dtype=torch.float64)
    bracketed = text.replace("sum_{c, j}(h)", "sum_{c, j}(h[n, c, j])")
    expected = (torch.relu(1 - x[:, :, None] + x[:, None, :]) * (1 - torch.eye(5))).sum(dim=(1, 2))
    for source in (text, bracketed):
        assert_close(lossdsl.compile(source, reduction="none")(x), expected)


def test_parse_exposes_inputs_parameters_expression_and_latex() -> None:
    loss = lossdsl.parse(FOCAL)
    assert [i.name for i in loss.inputs] == ["x", "y"]
    assert [(p.name, p.default) for p in loss.parameters] == [("alpha", 0.25), ("gamma", 2.0)]
    assert "sigmoid" in str(loss.expr)
    assert r"\log" in loss.latex() and "sigmoid" in loss.latex()


def test_compile_returns_the_last_loss_and_load_gives_all() -> None:
    assert set(LOSSES) == {"cross_entropy", "dice", "info_nce", "huber", "center", "uncertainty_weighting"}
    module = lossdsl.compile(EXAMPLES)
    assert module.loss.name == "uncertainty_weighting"


def test_load_reads_a_path(tmp_path) -> None:
    path = tmp_path / "mine.loss"
    path.write_text(FOCAL)
    assert list(lossdsl.load(path)) == ["focal"]
    assert list(lossdsl.load(str(path))) == ["focal"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_output_dtype_follows_inputs(dtype: torch.dtype) -> None:
    x = torch.randn(4, 3).to(dtype)
    y = torch.randint(0, 3, (4,))
    assert LOSSES["cross_entropy"].compile()(x, y).dtype == dtype
    assert lossdsl.compile(FOCAL)(x, (x > 0).to(dtype)).dtype == dtype


def test_parameters_are_buffers_and_move_with_the_module() -> None:
    ce = LOSSES["cross_entropy"].compile(weight=torch.tensor([1.0, 2.0, 3.0]))
    assert {n for n, _ in ce.named_buffers()} == {"weight", "label_smoothing"}
    assert ce.ignore_index == -100
    assert list(ce.parameters()) == []


@pytest.mark.skipif(not LANGUAGE_MD.exists(), reason="shared/LANGUAGE.md is not beside this checkout")
def test_every_code_block_of_language_md_compiles() -> None:
    blocks = re.findall(r"```(\w*)\n(.*?)```", LANGUAGE_MD.read_text(encoding="utf-8"), re.S)
    loss_blocks = [b for lang, b in blocks if "loss " in b and lang != "python"]
    assert len(loss_blocks) >= 2
    for block in loss_blocks:
        for name, loss in lossdsl.load(block).items():
            assert loss.to_source(), name
    assert EXAMPLES.strip() in LANGUAGE_MD.read_text(encoding="utf-8").replace("\n\n\n", "\n\n")


# ---- found by the API/CLI review
import copy  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402

import lossdsl.functional as LF  # noqa: E402
import lossdsl.nn as lnn  # noqa: E402

NAN = float("nan")


@pytest.mark.parametrize("mode", ["eager", "fused"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_review_gradients_reach_broadcast_inputs(mode: str, reduction: str) -> None:
    """y[3] broadcast against x[4, 3], both requiring grad, any grad_out: y's gradient is summed back to [3]."""
    module = lossdsl.compile("0.5*(x - y)^2 * w", w=2.0, mode=mode, reduction=reduction)
    x, y = leaf(4, 3), leaf(3)
    ref = (x - y) ** 2
    ref = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    out = module(x, y)
    assert_close(out, ref)
    go = torch.randn(out.shape, dtype=D)
    for a, b in zip(torch.autograd.grad(out, (x, y), go), torch.autograd.grad(ref, (x, y), go), strict=True):
        assert a.shape == b.shape
        assert_close(a, b)


@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_review_loaded_and_in_place_changed_parameters_reach_the_next_call(mode: str) -> None:
    """Values cached per buffer version (_host, _param) must follow load_state_dict and in-place changes."""
    p = torch.rand(6, dtype=D) * 0.9 + 0.05

    def ref(gamma: float, alpha: float) -> torch.Tensor:
        return (-alpha * (1 - p) ** gamma * torch.log(p)).mean()

    text = "loss f(p: prob; gamma = 2.0 >= 0, alpha = 0.25):\n    -alpha*(1-p)^gamma*log(p)"
    module = lossdsl.compile(text, mode=mode)
    assert_close(module(p), ref(2.0, 0.25))
    module.load_state_dict(lossdsl.compile(text, gamma=0.5, alpha=0.75).state_dict())
    assert_close(module(p), ref(0.5, 0.75))
    with torch.no_grad():
        module.gamma.fill_(1.0)
    assert_close(module(p), ref(1.0, 0.75))


def test_review_fused_double_backward_matches_torch() -> None:
    """A Hessian-vector product through fused mode's symbolic backward (create_graph=True)."""
    x, y = leaf(4, 3), torch.tensor([0, 1, 2, 1])
    v = torch.randn(4, 3, dtype=D)
    fused = LOSSES["cross_entropy"].compile(mode="fused", label_smoothing=0.1)
    hvps = []
    for fn in (fused, lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1)):
        (g,) = torch.autograd.grad(fn(x, y), x, create_graph=True)
        hvps.append(torch.autograd.grad((g * v).sum(), x)[0])
    assert_close(hvps[0], hvps[1])


def test_review_lazy_learnable_parameter_trains_with_an_optimizer_built_before_the_first_call() -> None:
    """uncertainty_weighting without t=: the optimizer holds the UninitializedParameter, which the first call
    materialises in place. d/ds sum_t(exp(-s) l + s) at s = 0 is 1 - l, so one SGD step gives s = 0.1 (l - 1)."""
    module = LOSSES["uncertainty_weighting"].compile()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    tasks = torch.tensor([1.0, 2.0, 3.0])
    opt.zero_grad()
    module(tasks).backward()
    opt.step()
    torch.testing.assert_close(module.s.detach(), 0.1 * (tasks - 1))


def test_review_deepcopy_and_pickle_keep_trained_values() -> None:
    module = LOSSES["uncertainty_weighting"].compile(t=3)
    with torch.no_grad():
        module.s.copy_(torch.tensor([0.5, -1.0, 2.0]))
    tasks = torch.tensor([1.0, 2.0, 3.0])
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        torch.testing.assert_close(copied(tasks), module(tasks))
        assert copied.s is not module.s and isinstance(copied.s, torch.nn.Parameter)


def test_review_inputs_by_keyword_as_lists_and_python_numbers() -> None:
    module = lossdsl.compile("(x - y)^2", reduction="none")
    x, y = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, -1.0, 4.0])
    expected = (x - y) ** 2
    torch.testing.assert_close(module(y=y, x=x), expected)
    torch.testing.assert_close(module(x.tolist(), y.tolist()), expected)
    torch.testing.assert_close(module(x, 1.0), (x - 1) ** 2)


def test_review_noncontiguous_expanded_and_mixed_dtype_inputs() -> None:
    ce = LOSSES["cross_entropy"].compile()
    x, y = torch.randn(3, 4, dtype=D).t().requires_grad_(), torch.tensor([1, 0, 2, 2])
    assert not x.is_contiguous()
    assert_close(ce(x, y), F.cross_entropy(x, y))
    assert_close(grads(ce(x, y), x)[0], grads(F.cross_entropy(x, y), x)[0])
    row = torch.randn(1, 3, dtype=D)
    assert_close(ce(row.expand(4, 3), y.clamp(max=2)), F.cross_entropy(row.expand(4, 3), y.clamp(max=2)))
    mse = lossdsl.compile("(x - y)^2")
    a, b = torch.randn(5), torch.randn(5, dtype=D)
    out = mse(a, b)
    assert out.dtype == D  # promoted like torch's (a - b)
    assert_close(out, ((a.to(D) - b) ** 2).mean())


def test_review_fused_shape_errors_name_the_input_and_the_axis() -> None:
    ce = LOSSES["cross_entropy"].compile(mode="fused")
    with pytest.raises(lossdsl.InputError, match=r"input 'y' axis 0 \(n\) has size 3 but 'x' fixes it to 4"):
        ce(leaf(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(lossdsl.InputError, match="input 'y' holds class index 5 outside"):
        ce(leaf(4, 3), torch.tensor([0, 1, 2, 5]))


def test_review_nn_dropin_state_dict_is_torch_compatible() -> None:
    w, w2 = torch.rand(5) + 0.1, torch.rand(5) + 0.1
    ours = lnn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    ours.load_state_dict(torch.nn.CrossEntropyLoss(weight=w2).state_dict())
    x, y = torch.randn(6, 5, dtype=D), torch.randint(0, 5, (6,))
    ours.double()
    assert ours.weight.dtype == D
    assert_close(ours(x, y), F.cross_entropy(x, y, weight=w2.to(D), label_smoothing=0.1))


def test_review_gradient_text_matches_the_readme() -> None:
    loss = lossdsl.parse("loss bce(x[n]: logits, y[n]: binary):\n    -(y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x)))")
    assert str(loss.grad("x")) == "d bce/d x[n] = (sigmoid(x[n]) - y[n])/N"
    assert str(loss.grad("x", reduction="sum")) == "d bce/d x[n] = sigmoid(x[n]) - y[n]"


def test_review_triplet_margin_loss_keeps_nan_like_torch() -> None:
    a, pos, neg = torch.tensor([[NAN, 0.0], [1.0, 2.0]]), torch.zeros(2, 2), torch.ones(2, 2)
    assert torch.isnan(F.pairwise_distance(a, pos)[0]) and torch.isnan(F.triplet_margin_loss(a, pos, neg))
    assert torch.isnan(LF.pairwise_distance(a, pos)[0])
    assert torch.isnan(LF.triplet_margin_loss(a, pos, neg))


def test_review_nan_probability_is_not_a_finite_loss() -> None:
    p, y = torch.tensor([NAN, 0.5]), torch.tensor([1.0, 0.0])
    with pytest.raises(RuntimeError):
        F.binary_cross_entropy(p, y)
    for call in (lambda: LF.binary_cross_entropy(p, y), lambda: lossdsl.compile("loss l(p: prob):\n    -log(p)")(p)):
        try:
            out = call()
        except lossdsl.InputError:
            continue
        assert torch.isnan(out)


def test_review_half_module_keeps_its_parameter_values() -> None:
    x = torch.zeros(4, dtype=torch.float16)
    module = lossdsl.compile("loss l(x; eps = 1e-8):\n    -log(x + eps)")
    before = module(x)
    assert torch.isfinite(before)
    assert module.half()(x) == before
    empty = torch.zeros(1, 1, 4, dtype=torch.float16)
    assert torch.isfinite(lossdsl.stdlib.dice_loss(eps=1e-8).half()(empty, empty))


def test_review_pickled_module_loads_in_a_fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    module = lossdsl.compile(FOCAL, gamma=1.5)
    blob = pickle.dumps(module)
    monkeypatch.delitem(sys.modules, type(module).__module__)  # what a fresh process that imported lossdsl lacks
    x, y = torch.randn(5, dtype=D), (torch.rand(5) > 0.5).to(D)
    assert_close(pickle.loads(blob)(x, y), module(x, y))


def test_review_fused_module_pickles(tmp_path) -> None:
    """In this process (the class is found again) and in a fresh one (it is built from the pickled IR), with
    the symbolic backward's gradient."""
    import subprocess

    module = LOSSES["cross_entropy"].compile(mode="fused", label_smoothing=0.1)
    x, y = leaf(4, 3), torch.tensor([0, 1, 2, 1])
    loaded = pickle.loads(pickle.dumps(module))
    assert type(loaded).__name__.endswith("Fused")
    assert_close(loaded(x, y), module(x, y))
    assert_close(grads(loaded(x, y), x)[0], grads(module(x, y), x)[0])
    saved, grad = tmp_path / "m.pt", tmp_path / "g.pt"
    code = (f"import torch; d = torch.load(r'{saved}', weights_only=False); x = d['x'].requires_grad_(); "
            "out = d['module'](x, d['y']); out.backward(); print(type(d['module']).__name__, repr(out.item())); "
            f"torch.save(x.grad, r'{grad}')")
    torch.save({"module": module, "x": x.detach(), "y": y}, saved)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    name, value = run.stdout.split()
    assert name.endswith("Fused") and float(value) == module(x, y).item()
    assert_close(torch.load(grad), grads(module(x, y), x)[0])


def test_review_lazy_learnable_parameter_loads_a_checkpoint() -> None:
    trained = LOSSES["uncertainty_weighting"].compile(t=3)
    with torch.no_grad():
        trained.s.copy_(torch.tensor([0.5, -1.0, 2.0]))
    fresh = LOSSES["uncertainty_weighting"].compile()
    fresh.load_state_dict(trained.state_dict())
    tasks = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(fresh(tasks), trained(tasks))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.bool])
def test_review_index_input_of_a_small_integer_dtype(dtype: torch.dtype) -> None:
    x, y = torch.randn(3, 2, dtype=D), torch.tensor([0, 1, 1])
    ce = LOSSES["cross_entropy"].compile()
    try:
        out = ce(x, y.to(dtype))
    except lossdsl.InputError as err:
        assert "'y'" in str(err)
        return
    assert_close(out, ce(x, y))


def test_review_functional_cross_entropy_takes_uint8_targets_like_torch() -> None:
    x, y = torch.randn(4, 3, dtype=D), torch.tensor([0, 2, 1, 2], dtype=torch.uint8)
    assert_close(LF.cross_entropy(x, y), F.cross_entropy(x, y))


def test_review_gradient_penalty_loss_evaluates_under_no_grad() -> None:
    critic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    real, fake, u = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D), torch.rand(5, dtype=D)
    gp = lossdsl.stdlib.wgan_gp_d_loss()
    expected = gp(critic, real, fake, u).detach()
    with torch.no_grad():
        assert_close(gp(critic, real, fake, u), expected)


def test_gradient_penalty_restores_grad_mode_when_the_critic_raises() -> None:
    def critic(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("critic failed")

    real, fake, u = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D), torch.rand(5, dtype=D)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="critic failed"):
            lossdsl.stdlib.wgan_gp_d_loss()(critic, real, fake, u)
        assert not torch.is_grad_enabled()


def test_review_stdlib_ctc_loss_checks_its_lengths() -> None:
    lp, targets = torch.randn(5, 2, 4, dtype=D).log_softmax(2), torch.randint(1, 4, (2, 3))
    ctc = lossdsl.stdlib.ctc_loss()
    with pytest.raises(lossdsl.InputError, match="input_lengths"):
        ctc(lp, targets, torch.tensor([6, 5]), torch.tensor([3, 3]))
    with pytest.raises(lossdsl.InputError, match="target_lengths"):
        ctc(lp, targets, torch.tensor([5, 5]), torch.tensor([4, 3]))


@pytest.mark.parametrize("name", ["triplet_margin_with_distance_loss", "ctc_loss", "wgan_gp_d_loss"])
def test_review_verify_runs_on_stdlib_losses(name: str) -> None:
    assert lossdsl.verify(lossdsl.stdlib.get(name), trials=1).passed


def test_review_verify_passes_gaussian_nll_loss() -> None:
    assert lossdsl.verify(lossdsl.stdlib.get("gaussian_nll_loss"), trials=1).passed


def test_review_grad_rejects_an_unknown_reduction() -> None:
    with pytest.raises(lossdsl.ParameterError, match="reduction"):
        lossdsl.parse(FOCAL).grad("x", reduction="avg")


def test_review_fused_module_reports_a_wrong_number_of_inputs() -> None:
    module, x = lossdsl.compile("(x - y)^2", mode="fused"), torch.randn(3)
    with pytest.raises(TypeError):
        module(x)
    with pytest.raises(TypeError):
        module(x, x, x)


def test_review_nn_dropins_take_their_inputs_by_keyword_like_torch() -> None:
    x, y = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    assert_close(lnn.MSELoss()(input=x, target=y), torch.nn.MSELoss()(input=x, target=y))


@pytest.mark.parametrize("name", ["training", "loss"])
def test_review_parameter_names_the_module_uses_itself(name: str) -> None:
    module = lossdsl.compile(f"loss l(x; {name} = 2):\n    x * {name}", reduction="sum")
    assert_close(module(torch.ones(3, dtype=D)), torch.tensor(6.0, dtype=D))


def test_review_formula_keyword_typo_suggests_the_name() -> None:
    with pytest.raises(lossdsl.UnknownNameError, match="did you mean 'gamma'"):
        lossdsl.compile("-alpha*(1-p)^gamma*log(p)", alpha=0.25, gama=2.0)


@pytest.mark.parametrize("size", [-3, 2.5])
def test_review_bad_axis_size_keyword_is_a_parameter_error(size) -> None:
    with pytest.raises(lossdsl.ParameterError, match="'t'"):
        LOSSES["uncertainty_weighting"].compile(t=size)


def test_review_numpy_scalar_parameters_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    x, y = leaf(5, 3), torch.randint(0, 3, (5,))
    ce = LOSSES["cross_entropy"].compile(ignore_index=np.int64(1), label_smoothing=np.float32(0.25))
    assert_close(ce(x, y), F.cross_entropy(x, y, ignore_index=1, label_smoothing=0.25))


def test_review_formula_tensor_parameter_shape_error_names_it() -> None:
    module = lossdsl.compile("w*(x - y)^2", w=torch.ones(3))
    with pytest.raises(lossdsl.InputError, match="'w'"):
        module(torch.ones(2, 4), torch.zeros(2, 4))


def test_review_unknown_name_never_suggests_itself() -> None:
    try:
        lossdsl.compile("(abs - y)^2")
    except lossdsl.LossError as err:
        assert "did you mean 'abs'" not in str(err)


def test_review_fused_mode_differentiates_a_parameter_tensor_like_eager() -> None:
    text = "loss l(x[n, c]; w[c] = 1):\n    w*x^2"
    x = torch.randn(2, 3, dtype=D)
    expected = (x**2).sum(0) / 6  # d/dw_c of mean_{n, c}(w_c x_nc^2)
    for mode in ("eager", "fused"):
        w = torch.tensor([1.0, 2.0, 3.0], dtype=D, requires_grad=True)
        lossdsl.compile(text, w=w, mode=mode)(x.clone().requires_grad_()).backward()
        assert w.grad is not None, mode
        assert_close(w.grad, expected)
