"""lossdsl.functional against torch.nn.functional on property-tested inputs.

Every test draws shapes, ranks and options, runs torch's own function and the drop-in on the same tensors for
each reduction, and compares values and gradients (of a random weighting of the output): 1e-10 relative in
float64, float32 tolerance in float32. Inputs stay away from points where the loss has a kink or where torch
documents a clamp (log(0) in BCE), since there the two may pick different one-sided derivatives.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
import lossdsl.functional as LF

torch.set_num_threads(1)  # tiny tensors: OpenMP threads only contend on the shared CPUs (10 ms per op)
SETTINGS = settings(max_examples=20, deadline=None)
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}
REDUCTIONS = ("none", "mean", "sum")


def assert_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    torch.testing.assert_close(ours, ref, equal_nan=True, **TOL[dtype])


def compare(name: str, inputs: list, grad: tuple[int, ...] = (0,), reductions=REDUCTIONS, **kw) -> None:
    """Values and gradients of lossdsl.functional.<name> equal torch's, in float64 and float32."""
    assert getattr(LF, name).__module__ == "lossdsl.functional", f"{name} falls through to torch's own"
    for dtype in (torch.float64, torch.float32):
        for reduction in reductions:
            ours, theirs = _copies(inputs, grad, dtype), _copies(inputs, grad, dtype)
            kw_d = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                    for k, v in kw.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = getattr(TF, name)(*theirs, reduction=reduction, **kw_d)
                out = getattr(LF, name)(*ours, reduction=reduction, **kw_d)
            assert_close(out, ref, dtype)
            _compare_grads(out, ref, _leaves(ours), _leaves(theirs), dtype)


def _copies(inputs: list, grad: tuple[int, ...], dtype: torch.dtype) -> list:
    out = []
    for k, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().to(dtype).clone().requires_grad_(k in grad)
        out.append(t)
    return out


def _leaves(tensors: list) -> list[torch.Tensor]:
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]


def _compare_grads(out, ref, ours, theirs, dtype) -> None:
    if not ours or out.numel() == 0 or not bool(ref.isfinite().all()):
        return  # a 0/0 mean (zero total weight) or an impossible CTC alignment: torch's gradient is nan or 0
    weight = torch.linspace(0.5, 1.5, out.numel(), dtype=dtype).reshape(out.shape)
    g_ours = torch.autograd.grad((out * weight).sum(), ours, allow_unused=True)
    g_ref = torch.autograd.grad((ref * weight).sum(), theirs, allow_unused=True)
    for a, b, x in zip(g_ours, g_ref, ours, strict=True):
        assert_close(torch.zeros_like(x) if a is None else a, torch.zeros_like(x) if b is None else b, dtype)


# torch's multi_margin_loss and multilabel_margin_loss return uninitialised memory for an empty batch with
# reduction='mean' (seen: 6.9e-310), so their tests draw at least one sample; lossdsl returns nan there.


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed), dtype=torch.float64)


def rand(shape, seed: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen(seed), dtype=torch.float64)


def signs(shape, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen(seed)).double() * 2 - 1


def sparse_weight(shape, seed: int) -> torch.Tensor:
    """Weights with exact zeros among them."""
    return rand(shape, seed) * (rand(shape, seed + 1) > 0.3)


shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
nonempty = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 10_000)


TORCH_LOSSES = [
    "l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "cross_entropy", "nll_loss", "kl_div", "poisson_nll_loss", "gaussian_nll_loss", "soft_margin_loss",
    "multilabel_soft_margin_loss", "multilabel_margin_loss", "multi_margin_loss", "hinge_embedding_loss",
    "margin_ranking_loss", "cosine_embedding_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss",
    "ctc_loss",
]


def test_every_loss_is_a_drop_in():
    """lossdsl.functional falls back to torch for other names; every loss must be its own function."""
    assert set(TORCH_LOSSES) <= set(LF.__all__)
    for name in TORCH_LOSSES:
        assert getattr(LF, name).__module__ == "lossdsl.functional", name
        assert list(inspect.signature(getattr(LF, name)).parameters) == \
            list(inspect.signature(getattr(TF, name)).parameters), name


# ---- regression
@SETTINGS
@given(shape=shapes, seed=seeds, weighted=st.booleans(), name=st.sampled_from(["l1_loss", "mse_loss"]))
def test_l1_and_mse(shape, seed, weighted, name):
    kw = {"weight": sparse_weight(shape, seed + 2)} if weighted else {}
    compare(name, [randn(shape, seed), randn(shape, seed + 1)], grad=(0, 1), **kw)


@SETTINGS
@given(shape=shapes, seed=seeds, beta=st.sampled_from([0.0, 0.3, 1.0, 2.5]))
def test_smooth_l1(shape, seed, beta):
    compare("smooth_l1_loss", [randn(shape, seed), randn(shape, seed + 1)], grad=(0, 1), beta=beta)


@SETTINGS
@given(shape=shapes, seed=seeds, delta=st.sampled_from([0.3, 1.0, 2.5]), weighted=st.booleans())
def test_huber(shape, seed, delta, weighted):
    kw = {"weight": sparse_weight(shape, seed + 2)} if weighted else {}
    compare("huber_loss", [randn(shape, seed), randn(shape, seed + 1)], grad=(0, 1), delta=delta, **kw)


def test_mse_broadcasts_target_like_torch():
    compare("mse_loss", [randn((3, 4), 0), randn((4,), 1)], grad=(0, 1))


@SETTINGS
@given(shape=shapes, seed=seeds, log_input=st.booleans(), full=st.booleans(), eps=st.sampled_from([1e-8, 0.1]))
def test_poisson_nll(shape, seed, log_input, full, eps):
    x = randn(shape, seed) if log_input else rand(shape, seed, 0.05, 3.0)
    y = torch.poisson(rand(shape, seed + 1, 0.0, 4.0), generator=gen(seed))
    compare("poisson_nll_loss", [x, y], log_input=log_input, full=full, eps=eps)


@SETTINGS
@given(shape=nonempty, seed=seeds, var_shape=st.sampled_from(["same", "no_last", "last_one", "float"]),
       full=st.booleans())
def test_gaussian_nll(shape, seed, var_shape, full):
    var_dims = {"same": shape, "no_last": shape[:-1], "last_one": (*shape[:-1], 1), "float": None}[var_shape]
    var = 0.7 if var_dims is None else rand(var_dims, seed + 2, 0.05, 2.0)
    compare("gaussian_nll_loss", [randn(shape, seed), randn(shape, seed + 1), var], grad=(0, 1, 2), full=full)


# ---- binary
@SETTINGS
@given(shape=shapes, seed=seeds, weight=st.sampled_from([None, "full", "last"]))
def test_binary_cross_entropy(shape, seed, weight):
    target = torch.where(rand(shape, seed + 3) < 0.3, rand(shape, seed + 1).round(), rand(shape, seed + 1))
    kw = {} if weight is None else {"weight": sparse_weight(shape if weight == "full" else shape[-1:], seed + 2)}
    compare("binary_cross_entropy", [rand(shape, seed, 0.01, 0.99), target], grad=(0, 1), **kw)


@SETTINGS
@given(shape=nonempty, seed=seeds, weight=st.booleans(), pos_weight=st.booleans())
def test_binary_cross_entropy_with_logits(shape, seed, weight, pos_weight):
    kw = {}
    if weight:
        kw["weight"] = sparse_weight(shape, seed + 2)
    if pos_weight:
        kw["pos_weight"] = rand(shape[-1:], seed + 3, 0.0, 3.0)
    compare("binary_cross_entropy_with_logits", [3 * randn(shape, seed), rand(shape, seed + 1)], grad=(0, 1), **kw)


@SETTINGS
@given(shape=shapes, seed=seeds)
def test_soft_margin(shape, seed):
    compare("soft_margin_loss", [randn(shape, seed), signs(shape, seed + 1)])


# ---- classes
@st.composite
def class_problem(draw, probs: bool = False):
    """(input, target, options) for cross_entropy / nll_loss: batch or not, any trailing dims, ignore_index."""
    seed = draw(seeds)
    n, c = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    trailing = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    unbatched = draw(st.booleans()) and not trailing
    x_shape = (c,) if unbatched else (n, c, *trailing)
    y_shape = () if unbatched else (n, *trailing)
    opts = {}
    if draw(st.booleans()):
        opts["weight"] = sparse_weight((c,), seed + 2) if draw(st.booleans()) else rand((c,), seed + 2, 0.1, 2.0)
    if probs:
        return 2 * randn(x_shape, seed), torch.softmax(randn(x_shape, seed + 1), dim=0 if unbatched else 1), opts
    target = torch.randint(0, c, y_shape, generator=gen(seed + 1))
    ignore = draw(st.sampled_from([-100, 0, 1]))
    hit = draw(st.sampled_from(["none", "some", "all"]))
    if hit != "none":
        mask = rand(y_shape, seed + 4) < (0.5 if hit == "some" else 2.0)
        target = torch.where(mask, torch.full_like(target, ignore), target)
    opts["ignore_index"] = ignore
    return 2 * randn(x_shape, seed), target, opts


@SETTINGS
@given(problem=class_problem(), smoothing=st.sampled_from([0.0, 0.1, 0.6]))
def test_cross_entropy_class_indices(problem, smoothing):
    x, y, opts = problem
    compare("cross_entropy", [x, y], label_smoothing=smoothing, **opts)


@SETTINGS
@given(problem=class_problem(probs=True), smoothing=st.sampled_from([0.0, 0.2]))
def test_cross_entropy_probabilities(problem, smoothing):
    x, y, opts = problem
    compare("cross_entropy", [x, y], grad=(0, 1), label_smoothing=smoothing, **opts)


@SETTINGS
@given(problem=class_problem())
def test_nll_loss(problem):
    x, y, opts = problem
    compare("nll_loss", [x, y], **opts)


def test_cross_entropy_ignoring_every_sample_is_nan_with_zero_gradient():
    x = randn((3, 4), 0)
    compare("cross_entropy", [x, torch.full((3,), -100)], label_smoothing=0.2)
    x = x.requires_grad_()
    LF.cross_entropy(x, torch.full((3,), -100)).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@SETTINGS
@given(shape=shapes, seed=seeds, log_target=st.booleans())
def test_kl_div(shape, seed, log_target):
    p = rand(shape, seed + 1) * (rand(shape, seed + 2) > 0.2)
    target = torch.log(p + 1e-3) if log_target else p
    batchmean = ("batchmean",) if not shape or shape[0] else ()  # an empty batch: torch 0/0, lossdsl 0
    compare("kl_div", [torch.log_softmax(randn(shape, seed), -1) if shape else randn(shape, seed), target],
            grad=(0, 1) if log_target else (0,), reductions=(*REDUCTIONS, *batchmean), log_target=log_target)


@SETTINGS
@given(n=st.integers(0, 4), c=st.integers(1, 5), seed=seeds, unbatched=st.booleans(), weighted=st.booleans())
def test_multilabel_soft_margin(n, c, seed, unbatched, weighted):
    shape = (c,) if unbatched else (n, c)
    kw = {"weight": sparse_weight((c,), seed + 2)} if weighted else {}
    compare("multilabel_soft_margin_loss", [randn(shape, seed), rand(shape, seed + 1).round()], **kw)


@SETTINGS
@given(n=st.integers(1, 4), c=st.integers(1, 5), seed=seeds, unbatched=st.booleans())
def test_multilabel_margin(n, c, seed, unbatched):
    rows = []
    for k in range(1 if unbatched else n):
        g = gen(seed + k)
        labels = torch.randperm(c, generator=g)[: int(torch.randint(0, c + 1, (), generator=g))]
        junk = torch.randint(-1, c, (c,), generator=g)
        rows.append(torch.cat([labels, torch.tensor([-1]), junk])[:c])
    target = torch.stack(rows) if rows else torch.zeros(0, c, dtype=torch.long)
    x = randn((c,) if unbatched else (n, c), seed)
    compare("multilabel_margin_loss", [x, target[0] if unbatched else target])


@SETTINGS
@given(n=st.integers(1, 4), c=st.integers(1, 5), seed=seeds, unbatched=st.booleans(), p=st.sampled_from([1, 2]),
       margin=st.sampled_from([0.5, 1.0, 2.0]), weighted=st.booleans())
def test_multi_margin(n, c, seed, unbatched, p, margin, weighted):
    x = randn((c,) if unbatched else (n, c), seed)
    y = torch.randint(0, c, () if unbatched else (n,), generator=gen(seed + 1))
    kw = {"weight": sparse_weight((c,), seed + 2)} if weighted else {}
    compare("multi_margin_loss", [x, y], p=p, margin=margin, **kw)


# ---- embeddings and ranking
@SETTINGS
@given(shape=shapes, seed=seeds, margin=st.sampled_from([0.5, 1.0, 2.0]))
def test_hinge_embedding(shape, seed, margin):
    compare("hinge_embedding_loss", [randn(shape, seed), signs(shape, seed + 1)], margin=margin)


@SETTINGS
@given(n=st.integers(0, 5), seed=seeds, margin=st.sampled_from([0.0, 0.3]))
def test_margin_ranking(n, seed, margin):
    compare("margin_ranking_loss", [randn((n,), seed), randn((n,), seed + 1), signs((n,), seed + 2)],
            grad=(0, 1), margin=margin)


@SETTINGS
@given(n=st.integers(0, 4), d=st.integers(1, 4), seed=seeds, unbatched=st.booleans(),
       margin=st.sampled_from([-0.3, 0.0, 0.4]))
def test_cosine_embedding(n, d, seed, unbatched, margin):
    shape, t_shape = ((d,), ()) if unbatched else ((n, d), (n,))
    compare("cosine_embedding_loss", [randn(shape, seed), randn(shape, seed + 1), signs(t_shape, seed + 2)],
            grad=(0, 1), margin=margin)


@st.composite
def triplets(draw):
    seed, d = draw(seeds), draw(st.integers(1, 4))
    shape = (d,) if draw(st.booleans()) else (draw(st.integers(0, 4)), d)
    return [randn(shape, seed), randn(shape, seed + 1), randn(shape, seed + 2)]


@SETTINGS
@given(inputs=triplets(), p=st.sampled_from([1.0, 2.0, 3.0]), swap=st.booleans(),
       margin=st.sampled_from([0.5, 1.0]), eps=st.sampled_from([1e-6, 0.1]))
def test_triplet_margin(inputs, p, swap, margin, eps):
    compare("triplet_margin_loss", inputs, grad=(0, 1, 2), p=p, swap=swap, margin=margin, eps=eps)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - TF.cosine_similarity(a, b, dim=-1)


@SETTINGS
@given(inputs=triplets(), swap=st.booleans(), margin=st.sampled_from([0.5, 1.0]),
       distance=st.sampled_from([None, cosine_distance]))
def test_triplet_margin_with_distance(inputs, swap, margin, distance):
    compare("triplet_margin_with_distance_loss", inputs, grad=(0, 1, 2), swap=swap, margin=margin,
            distance_function=distance)


# ---- CTC: torch's gradient with respect to log_probs assumes they come from log_softmax (it adds
# exp(log_probs), which log_softmax's backward cancels), so gradients are compared with respect to logits.
@st.composite
def ctc_problem(draw):
    seed, frames = draw(seeds), draw(st.integers(1, 7))
    batch, classes = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    blank = draw(st.sampled_from([0, classes - 1]))
    target_lengths = torch.randint(0, 5, (batch,), generator=gen(seed))
    width = int(target_lengths.max())
    labels = torch.randint(0, classes - 1, (batch, width), generator=gen(seed + 1))
    targets = labels + (labels >= blank).long()  # every class but the blank
    input_lengths = torch.randint(0, frames + 1, (batch,), generator=gen(seed + 2))
    if draw(st.booleans()):
        targets = torch.cat([targets[k, : int(target_lengths[k])] for k in range(batch)])
    return 2 * randn((frames, batch, classes), seed + 3), targets, input_lengths, target_lengths, blank


@SETTINGS
@given(problem=ctc_problem(), zero_infinity=st.booleans())
def test_ctc_loss(problem, zero_infinity):
    logits, targets, input_lengths, target_lengths, blank = problem
    for dtype in (torch.float64, torch.float32):
        for reduction in REDUCTIONS:
            x, x_ref = logits.to(dtype).requires_grad_(), logits.to(dtype).requires_grad_()
            args = (targets, input_lengths, target_lengths)
            kw = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}
            out = LF.ctc_loss(torch.log_softmax(x, -1), *args, **kw)
            ref = TF.ctc_loss(torch.log_softmax(x_ref, -1), *args, **kw)
            assert_close(out, ref, dtype)
            _compare_grads(out, ref, [x], [x_ref], dtype)


def test_ctc_loss_unbatched_and_length_lists():
    logits, targets = randn((6, 4), 0), torch.tensor([1, 2, 2])
    for reduction in REDUCTIONS:
        out = LF.ctc_loss(torch.log_softmax(logits, -1), targets, [6], [3], reduction=reduction)
        ref = TF.ctc_loss(torch.log_softmax(logits, -1), targets, torch.tensor(6), torch.tensor(3),
                          reduction=reduction)
        assert_close(out, ref, torch.float64)


def test_ctc_lengths_are_validated():
    lp = torch.log_softmax(randn((4, 1, 3), 0), -1)
    with pytest.raises(lossdsl.InputError, match="at most 4"):
        LF.ctc_loss(lp, torch.tensor([[1]]), [5], [1])
    with pytest.raises(lossdsl.InputError, match="outside"):
        LF.ctc_loss(lp, torch.tensor([[3]]), [4], [1])


def test_ctc_long_sequences_stay_in_range():
    """200 frames: the per-frame rescaling keeps the recursion finite where plain probabilities underflow."""
    logits = randn((200, 2, 6), 0).requires_grad_()
    targets, lengths = torch.randint(1, 6, (2, 60), generator=gen(1)), torch.tensor([200, 150])
    out = LF.ctc_loss(torch.log_softmax(logits, -1), targets, lengths, torch.tensor([60, 45]), reduction="sum")
    ref = TF.ctc_loss(torch.log_softmax(logits, -1), targets, lengths, torch.tensor([60, 45]), reduction="sum")
    assert_close(out, ref, torch.float64)
    assert_close(*(torch.autograd.grad(v, logits)[0] for v in (out, ref)), torch.float64)


BUILTIN_LOSS = """
loss ctc_sum(lp[t, n, c]: logits, y[n, s]: int, il[n]: count, tl[n]: count):
    ctc_nll(lp, y, il, tl, 0)[n]
    reduce sum
"""


def test_a_loss_file_calls_the_builtin():
    module = lossdsl.compile(BUILTIN_LOSS)
    assert "from lossdsl.builtins import ctc_nll" in module.loss.to_source()
    lp = torch.log_softmax(randn((5, 2, 3), 0), -1)
    args = (torch.tensor([[1, 2], [2, 2]]), torch.tensor([5, 5]), torch.tensor([2, 2]))
    assert_close(module(lp, *args), TF.ctc_loss(lp, *args, reduction="sum"), torch.float64)


def test_a_builtin_checks_its_arity():
    with pytest.raises(lossdsl.KindError, match=r"ctc_nll\(\) takes 5 arguments"):
        lossdsl.compile(BUILTIN_LOSS.replace(", 0)[n]", ")[n]"))


# ---- validation: a LossError subclass, with a message naming the problem
@pytest.mark.parametrize("call", [
    lambda: LF.l1_loss(randn((2,), 0), randn((2,), 1), reduction="avg"),
    lambda: LF.cross_entropy(randn((2, 3), 0), torch.tensor([0, 1]), reduction="batchmean"),
    lambda: LF.kl_div(randn((2,), 0), randn((2,), 1), reduction="average"),
])
def test_unknown_reduction(call):
    with pytest.raises(lossdsl.ParameterError, match="not a valid value for reduction"):
        call()


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "multi_margin_loss"])
def test_class_out_of_range(name):
    with pytest.raises(lossdsl.InputError, match="class index 3 outside"):
        getattr(LF, name)(randn((2, 3), 0), torch.tensor([0, 3]))


def test_multilabel_margin_target_out_of_range():
    with pytest.raises(lossdsl.InputError, match="class index -2 outside"):
        LF.multilabel_margin_loss(randn((1, 3), 0), torch.tensor([[0, -2, 1]]))


def test_probabilities_outside_unit_interval():
    with pytest.raises(lossdsl.InputError, match=r"probability but has values outside \[0, 1\]"):
        LF.binary_cross_entropy(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: LF.cross_entropy(randn((2, 3), 0), torch.tensor([0, 1, 2])), r"size \(3,\) but .input. fixes it"),
    (lambda: LF.cross_entropy(randn((2, 3), 0), rand((2, 4), 1)), "probability targets must have"),
    (lambda: LF.binary_cross_entropy(rand((2, 3), 0), rand((3,), 1)), "different to the input size"),
    (lambda: LF.cross_entropy(randn((2, 3), 0), torch.tensor([0, 1]), weight=torch.ones(4)),
     "parameter 'weight' has shape"),
    (lambda: LF.margin_ranking_loss(randn((2,), 0), randn((2,), 1), randn((2, 1), 2)), "same dimension"),
    (lambda: LF.cosine_embedding_loss(randn((2, 3), 0), randn((2, 3), 1), randn((2, 1), 2)), "0D or 1D target"),
    (lambda: LF.triplet_margin_loss(randn((2, 3), 0), randn((3,), 1), randn((2, 3), 2)), "same number of dim"),
    (lambda: LF.gaussian_nll_loss(randn((2, 3), 0), randn((2, 3), 1), rand((3, 2), 2)), "var is of incorrect"),
    (lambda: LF.gaussian_nll_loss(randn((2,), 0), randn((2,), 1), -randn((2,), 2).abs()), "negative entr"),
    (lambda: LF.l1_loss(randn((2,), 0), randn((2,), 1), weight=torch.ones(3)), "same size"),
])
def test_bad_shapes(call, match):
    with pytest.raises(lossdsl.InputError, match=match):
        call()


@pytest.mark.parametrize(("call", "match"), [
    (lambda: LF.multi_margin_loss(randn((2, 3), 0), torch.tensor([0, 1]), p=3), "only p == 1 and p == 2"),
    (lambda: LF.smooth_l1_loss(randn((2,), 0), randn((2,), 1), beta=-1.0), "negative values for beta"),
    (lambda: LF.huber_loss(randn((2,), 0), randn((2,), 1), delta=0.0), "non-positive values for delta"),
    (lambda: LF.triplet_margin_with_distance_loss(randn((2,), 0), randn((2,), 1), randn((2,), 2), margin=0.0),
     "margin must be greater than 0"),
    (lambda: LF.cross_entropy(randn((2, 3), 0), torch.tensor([0, 1]), label_smoothing=1.5), "label_smoothing"),
])
def test_bad_options(call, match):
    with pytest.raises(lossdsl.ParameterError, match=match):
        call()


def test_legacy_size_average_and_reduce():
    x, y = randn((3, 2), 0), randn((3, 2), 1)
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = TF.mse_loss(x, y, size_average=size_average, reduce=reduce)
        assert_close(LF.mse_loss(x, y, size_average=size_average, reduce=reduce), ref, torch.float64)


def test_modules_with_scalar_options_are_reused():
    LF.huber_loss(randn((2,), 0), randn((2,), 1), delta=0.5)
    first = LF.module("huber_loss", "mean", delta=0.5)
    assert LF.module("huber_loss", "mean", delta=0.5) is first
    assert LF.module("huber_loss", "sum", delta=0.5) is not first


def test_ctc_loss_of_a_confident_wrong_model_is_finite_like_torch():
    """Log-probabilities of -1e3 on the targets underflow exp in any dtype; the recursion stays in log space.

    The reference is torch's CTC in float64 on the same values; in float32 log alpha is near -5e3, whose
    spacing (5e-4) bounds how well either implementation can place the gradient's softmax weights."""
    gen = torch.Generator().manual_seed(3)
    logits = 1e3 * torch.randn(8, 3, 6, generator=gen)
    targets = torch.tensor([[1, 2, 2], [3, 3, 1], [5, 4, 1]])
    lengths, target_lengths = torch.tensor([8, 7, 5]), torch.tensor([3, 3, 2])
    x_ref = logits.double().requires_grad_()
    ref = TF.ctc_loss(torch.log_softmax(x_ref, -1), targets, lengths, target_lengths, reduction="none")
    grad_ref = torch.autograd.grad(ref.sum(), x_ref)[0]
    assert torch.isfinite(ref).all() and ref.min() > 100
    for dtype, atol in ((torch.float64, 1e-9), (torch.float32, 4e-3)):
        x = logits.to(dtype).requires_grad_()
        out = LF.ctc_loss(torch.log_softmax(x, -1), targets, lengths, target_lengths, reduction="none")
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=atol)
        torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0].double(), grad_ref, rtol=0, atol=atol)
