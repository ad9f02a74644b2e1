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
