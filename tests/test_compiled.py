"""mode="compiled": same values and gradients as eager, compile time reported, state and class kept."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import mpmath
import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import compiled
from lossdsl.api import BACKWARDS
from tests.conftest import generated_globals

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cases import CASES  # the benchmarks' inputs
from measure import peak_bytes  # the benchmarks' allocator-event peak

FOCAL = """
loss focal(x: logits, y: prob; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0):
    p  = sigmoid(x)
    pt = where(y == 1, p, 1 - p)
    at = where(y == 1, alpha, 1 - alpha)
    return -at * (1 - pt)^gamma * log(pt)
"""


def test_unknown_mode_is_a_parameter_error() -> None:
    with pytest.raises(lossdsl.ParameterError, match="mode must be one of"):
        lossdsl.compile("(x - y)^2", mode="fast")


def test_signature_separates_shapes_and_dtypes() -> None:
    a, b = torch.zeros(2, 3), torch.zeros(3, 2)
    assert compiled.signature((a,), {}) == compiled.signature((torch.ones(2, 3),), {})
    assert compiled.signature((a,), {}) != compiled.signature((b,), {})
    assert compiled.signature((a,), {}) != compiled.signature((a.double(),), {})


def test_only_the_first_call_per_signature_is_timed() -> None:
    module = torch.nn.Module()
    module.compile_seconds, module.compile_log = 0.0, []
    calls = []
    run = compiled._timed(module, lambda x: calls.append(x) or x)
    x = torch.zeros(3)
    for _ in range(3):
        run(x)
    run(torch.zeros(4))
    assert len(calls) == 4
    assert [sig for sig, _ in module.compile_log] == [compiled.signature((x,), {}),
                                                      compiled.signature((torch.zeros(4),), {})]


def test_first_call_compiles_under_the_recompute_policy() -> None:
    """The joint graph is partitioned during the first call per signature: only that call runs under the
    policy's config patches."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    def state() -> tuple:
        post = inductor_config.joint_custom_post_pass
        return functorch_config.activation_memory_budget, type(post).__name__ if post else None

    default = state()
    for policy, expected in (("masks", (default[0], "RecomputeMasks")), ("all", (0.0, default[1])),
                             ("none", default)):
        module = torch.nn.Module()
        module.compile_seconds, module.compile_log = 0.0, []
        seen: list[tuple] = []
        run = compiled._timed(module, lambda x, seen=seen: seen.append(state()), policy)
        run(torch.zeros(3))
        run(torch.zeros(3))
        assert seen == [expected, default], policy


def test_unknown_recompute_policy_is_refused() -> None:
    loss = lossdsl.parse("(x - y)^2")
    with pytest.raises(ValueError, match="recompute must be one of"):
        compiled.build(loss, loss.compile(), recompute="some")


def test_recompute_masks_tags_bools_elementwise_integers_and_fills_only() -> None:
    """Masks, clamped indices and tensors made from no input (a zeros to scatter into: multilabel margin's
    forward kept one for its backward, 16 MB) are recomputed in the backward; floats and a sort's order
    are not."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils.checkpoint import CheckpointPolicy

    def huber_at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = x.gather(1, y.clamp(0, 3)).abs()
        rank = torch.argsort(e, dim=0)
        spread = torch.zeros(8, 4).scatter_add(1, y.clamp(0, 3), e)
        return (torch.where(e < 1, 0.5 * e * e, e - 0.5) * rank).sum() + spread.sum()

    gm = make_fx(huber_at)(torch.randn(8, 4), torch.randint(-1, 4, (8, 2)))
    compiled.RecomputeMasks()(gm.graph)
    tagged = {str(n.target) for n in gm.graph.nodes if n.meta.get("recompute") == CheckpointPolicy.MUST_RECOMPUTE}
    assert tagged == {"aten.clamp.default", "aten.lt.Scalar", "aten.zeros.default"}
    assert compiled.RecomputeMasks().uuid() == compiled.RecomputeMasks().uuid()


@pytest.mark.slow
def test_compiled_matches_eager_values_and_gradients() -> None:
    """One torch.compile (forward + backward): ~10-25 s on 2 cores with a cold Inductor cache."""
    eager = lossdsl.compile(FOCAL, gamma=1.5)
    fast = lossdsl.compile(FOCAL, gamma=1.5, mode="compiled")
    assert type(fast) is type(eager)
    assert fast.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(257, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(257) > 0.5).double()
    out, ref = fast(x, y), eager(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert fast.compile_seconds > 0 and len(fast.compile_log) == 1
    fast(x, y)
    assert len(fast.compile_log) == 1
    with pytest.raises(lossdsl.InputError, match="outside"):
        fast(x, y + 2)


@pytest.mark.slow
def test_compiled_range_checks_see_past_nan() -> None:
    """Compiled mode defers a prob check to the return (_check_range) and checks indices in the graph; both
    must refuse what eager refuses. An aminmax is NaN when any value is, so it once let [nan, 1.5] through."""
    prob = lossdsl.compile("loss l(p: prob):\n    p\n", reduction="sum", mode="compiled")
    nan, inf = float("nan"), float("inf")
    for values in ([nan, 1.5], [0.2, 1.0000001], [nan, -inf]):
        with pytest.raises(lossdsl.InputError, match="'p' is a probability but has values outside"):
            prob(torch.tensor(values, dtype=torch.float64))
    torch.testing.assert_close(prob(torch.tensor([0.0, 1.0], dtype=torch.float64)),
                               torch.tensor(1.0, dtype=torch.float64))
    assert prob(torch.tensor([nan, 0.2], dtype=torch.float64)).isnan()
    nll = lossdsl.stdlib.nll_loss(mode="compiled")
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(lossdsl.InputError, match="class index 3 outside"):
        nll(x, torch.tensor([0, 3, 1, 2]))
    torch.testing.assert_close(nll(x, torch.tensor([0, -100, 1, 2])),
                               F.nll_loss(x, torch.tensor([0, -100, 1, 2])))


@pytest.mark.slow
def test_compiled_cross_entropy_checks_its_indices_inside_the_loss_graph() -> None:
    """The class-index check is a flag raised at the return (_checked_index), not graphs of its own: one
    graph for the loss and its flags, one for the raise's branch. Three before ff4c1e6."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fast = lossdsl.stdlib.cross_entropy(mode="compiled")
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, -100, 4, 2, 1, 3])
    out, ref = fast(x, y), F.cross_entropy(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert counters["stats"]["unique_graphs"] <= 2
    for bad in (5, -7):
        with pytest.raises(lossdsl.InputError, match=f"class index {bad} outside"):
            fast(x, torch.tensor([0, -100, bad, 2, 1, 3]))


@pytest.mark.slow
def test_compiled_log_cosh_keeps_its_digits_on_cpu() -> None:
    """Through Inductor, end to end: compiled float32 log_cosh_loss at an error of 1e-4 was once off by 4e-4
    relative (eager: 5e-8), when its form's expm1 became exp(x) - 1 in Inductor's C++ backend
    (pytorch/pytorch#189803); the kernel form now has no expm1 (test_stable.py checks it eagerly). Checked
    against mpmath's log(cosh(e)) and float64 tanh(e)."""
    e = torch.tensor([1e-6, 1e-4, 3e-3, 0.05, 0.7, 1.3, 20.0, -1e-5, -0.2, -60.0])
    zeros = torch.zeros_like(e)
    fast = lossdsl.stdlib.log_cosh_loss(mode="compiled", reduction="none")
    x = e.clone().requires_grad_()
    out = fast(x, zeros)
    with mpmath.workdps(40):  # cosh(1e-6) = 1 + 5e-13 needs more than float64's digits
        want = torch.tensor([float(mpmath.log(mpmath.cosh(mpmath.mpf(float(v))))) for v in e], dtype=torch.float64)
    torch.testing.assert_close(out.double(), want, rtol=4e-7, atol=0)
    grad = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(grad.double(), torch.tanh(e.double()), rtol=4e-7, atol=0)


def test_expm1_helper_is_torchs_outside_compile_and_kahans_inside() -> None:
    """_Expm1 (what _expm1 traces as for a CPU) agrees with float64 expm1 within 2 ulp, at the edges too,
    and its gradient is exp(x)."""
    helpers = generated_globals(lossdsl.stdlib.log_cosh_loss())
    x = torch.cat([torch.logspace(-30, 2, 400), -torch.logspace(-30, 3, 400)])
    for dtype in (torch.float32, torch.float64):
        xs = x.to(dtype).requires_grad_()
        got = helpers["_Expm1"].apply(xs)
        want = torch.expm1(x.double())
        ok = torch.isfinite(want.to(dtype))
        assert ((got.double() - want).abs() <= 2 * torch.finfo(dtype).eps * want.abs())[ok].all()
        assert torch.equal(helpers["_expm1"](xs.detach()), torch.expm1(xs.detach()))
        torch.testing.assert_close(torch.autograd.grad(got.sum(), xs)[0], torch.exp(xs.detach()))
    edges = torch.tensor([0.0, float("inf"), -float("inf"), float("nan"), 88.0, -104.0])
    torch.testing.assert_close(helpers["_Expm1"].apply(edges), torch.expm1(edges), equal_nan=True)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_picked_gradient_is_gathers(dim: int) -> None:
    """_Picked (what _gather traces as) gives x.gather's gradient: a select over x's shape that equals the
    scatter_add, including an index that repeats a position across rows and a broadcast index."""
    picked = generated_globals(lossdsl.stdlib.multi_margin_loss())["_Picked"]
    gen = torch.Generator().manual_seed(dim + 5)
    x = torch.randn(4, 5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    shape = list(x.shape)
    shape[dim] = 1
    index = torch.randint(x.shape[dim], shape, generator=gen)
    seed = torch.randn(shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad((picked.apply(x, dim, index) * seed).sum(), x)[0]
    want = torch.autograd.grad((x.gather(dim, index) * seed).sum(), x)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(picked.apply(x, dim, index), x.gather(dim, index), rtol=0, atol=0)


@pytest.mark.parametrize("dims", [(0, 1), (1, 0), (0, 2), (1, 2)])
def test_diagonal_gradient_is_torchs(dims: tuple[int, int]) -> None:
    """_Diagonal (what _diagonal traces as) reads torch.diagonal's values, the diagonal last, and its
    select gives torch.diagonal's gradient, for every pair of axes of a rank-3 tensor."""
    diagonal = generated_globals(lossdsl.stdlib.info_nce())["_Diagonal"]
    d1, d2 = dims
    gen = torch.Generator().manual_seed(d1 * 3 + d2)
    shape = [3, 3, 3]
    shape[({0, 1, 2} - set(dims)).pop()] = 2  # the kept axis differs in size from the diagonal's
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    want = torch.diagonal(x, 0, d1, d2)
    got = diagonal.apply(x, d1, d2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    seed = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(torch.autograd.grad((got * seed).sum(), x)[0],
                               torch.autograd.grad((want * seed).sum(), x)[0], rtol=0, atol=0)


def test_a_repeated_index_reads_the_diagonal() -> None:
    """s[i, i] is `_diagonal`, not advanced indexing with an arange (whose compiled backward is a zero
    matrix and an index_put beside s's other gradient terms)."""
    source = lossdsl.stdlib.get("info_nce").to_source()
    assert "_diagonal(" in source and "torch.arange(N_i" not in source


@pytest.mark.slow
def test_compiled_info_nce_holds_two_similarity_matrices() -> None:
    """The diagonal's gradient fuses into the similarity matrix's: compiled info_nce's step holds the saved
    matrix and its gradient, where torch's cross_entropy over q k^T holds three (52.5 MB at 2048 rows)."""
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(512, 16, generator=gen, requires_grad=True) for _ in range(2))
    fast = lossdsl.stdlib.info_nce(mode="compiled", backward="autograd")
    eager = lossdsl.stdlib.info_nce()
    out, ref = fast(q, k), eager(q, k)
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad(out, (q, k)), torch.autograd.grad(ref, (q, k)), strict=True):
        torch.testing.assert_close(got, want)
    peak = peak_bytes(lambda: torch.autograd.grad(fast(q, k), (q, k)), torch.device("cpu"))
    matrix = 512 * 512 * 4
    assert 2 * matrix <= peak < 2 * matrix + 128 * 1024, (peak, matrix)  # allowance: rows and the gradients


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["in_forward", "symbolic"])
def test_compiling_a_diagonal_read_warns_nothing(backward: str) -> None:
    """Inductor's lowering of aten.diagonal warns (torch._prims_common.check is deprecated, torch 2.13):
    _diagonal never hands it one while compiling, also where s does not require grad (in_forward's forward
    runs without grad; so does the symbolic backward's graph)."""
    q, k = (torch.randn(16, 4, requires_grad=True) for _ in range(2))
    fast = lossdsl.stdlib.info_nce(mode="compiled", backward=backward)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.autograd.grad(fast(q, k), (q, k))
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, UserWarning))], \
        [str(w.message) for w in caught]


def test_a_lone_gather_keeps_the_scatter_and_a_shared_one_selects() -> None:
    """nll reads its input at the target only (a memset and a scatter are the cheapest gradient), while
    multi_margin's input[n, target[n]] has a dense gradient term to fuse its select with."""
    assert "input.gather(1, target_ix" in lossdsl.stdlib.get("nll_loss").to_source()
    source = lossdsl.stdlib.get("multi_margin_loss").to_source()
    assert "_gather(input, 1, target_ix" in source and "input.gather(" not in source


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multi_margin_loss", "cross_entropy"])
def test_compiled_gradient_of_a_gathered_input_is_one_buffer(name: str) -> None:
    """input[n, target[n]]'s gradient (zeros + scatter_add) and input's dense gradient were two full-size
    buffers and an add in the compiled backward; with _gather's select they are one kernel and one buffer,
    as torch's multi_margin_loss has (its cross_entropy has three)."""
    builtin = getattr(F, name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(512, 256, generator=gen, requires_grad=True)
    y = torch.randint(256, (512,), generator=gen)
    fast = getattr(lossdsl.stdlib, name)(mode="compiled")
    out, ref = fast(x, y), builtin(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    peak = peak_bytes(lambda: torch.autograd.grad(fast(x, y), x), torch.device("cpu"))
    one_buffer = x.numel() * x.element_size()
    assert peak <= one_buffer + 64 * 1024, (peak, one_buffer)  # allowance: per-row temporaries ([512] floats)


@pytest.mark.slow
def test_compiled_off_diagonal_mask_has_eager_gradients() -> None:
    """info_nce's [j != i] mask: eager sets a diagonal with diagonal_scatter, whose gradient Inductor gets
    wrong (pytorch/pytorch#183602: x.grad came out 12.44 -> 14.32 in |sum|); compiled mode selects instead."""
    loss = lossdsl.stdlib.get("info_nce")
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(16, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
    grads = []
    for mode in ("eager", "compiled"):
        leaves = [a.clone().requires_grad_() for a in args]
        out = loss.compile(mode=mode)(*leaves)
        grads.append((out.detach(), *torch.autograd.grad(out, leaves)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_specializer_writes_scalar_parameters_in_and_follows_their_buffers() -> None:
    """No torch.compile needed: the specialised forward is a plain generated forward."""
    loss = lossdsl.parse(FOCAL)
    module = loss.compile(gamma=2.0)
    spec = compiled.Specializer(loss, module)
    assert set(spec.names) == {"gamma"}  # alpha is a factor: it stays a buffer
    assert spec.refresh() and not spec.refresh()
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(64) > 0.5).double()
    for gamma in (2.0, 3.5):
        module.gamma.fill_(gamma)
        assert spec.refresh()  # any in-place write counts, even of the same value
        out, ref = module(x, y), loss.compile(gamma=gamma)(x, y)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    module.load_state_dict(loss.compile(gamma=1.0).state_dict())
    assert spec.refresh()
    torch.testing.assert_close(module(x, y), loss.compile(gamma=1.0)(x, y))


def test_specializer_leaves_shaped_and_learnable_parameters() -> None:
    loss = lossdsl.parse("loss w(x[n, c], t[n, c]; weight[c] = 1, s: learnable = 0, k = 2.0, a = 1.0, b = 0.5):\n"
                         "    weight[c] * (x - t)^k * exp(-s) * (a if b >= 0 else 1) / b")
    assert set(compiled.Specializer(loss, loss.compile()).names) == {"k", "b"}


@pytest.mark.slow
@pytest.mark.parametrize("backward", BACKWARDS)
def test_compiled_follows_a_changed_parameter(backward: str, cache_dir) -> None:
    """One torch.compile per value: ~20-40 s on 2 cores with a cold Inductor cache. The symbolic backward
    follows too: its forward and gradient are regenerated with the new value written in (fused.retarget).
    (An empty lossdsl cache: a choice stored by an earlier run would spare "auto" its other compiles.)"""
    fast = compiled.build(lossdsl.parse(FOCAL), lossdsl.compile(FOCAL), backward=backward)
    assert fast.compile_options["specialized"] == ["gamma"] and fast.compile_options["backward"] == backward
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(100) > 0.5).double()
    for gamma in (2.0, 0.5):
        fast.gamma.fill_(gamma)
        out, ref = fast(x, y), lossdsl.compile(FOCAL, gamma=gamma)(x, y)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert len(fast.compile_log) == (4 if backward == "auto" else 2)  # auto: three at 2.0, the one kept at 0.5


def test_a_loss_that_takes_a_gradient_runs_eagerly_in_compiled_mode() -> None:
    """WGAN-GP differentiates its critic inside the loss; torch.compile cannot differentiate that again, so
    compiled mode says so (a warning pointing at the caller, compile_options) and gives eager's numbers
    instead of raising on the first backward."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
                                 torch.nn.Linear(8, 1)).double()
    real = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    fake = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    u = torch.rand(5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="wgan_gp_d_loss takes a gradient inside") as caught:
        fast = lossdsl.stdlib.wgan_gp_d_loss(mode="compiled")
    assert caught[0].filename == __file__
    assert fast.inner.compile_options["compiled"] is False
    eager = lossdsl.stdlib.wgan_gp_d_loss()
    wrt = [fake, *critic.parameters()]
    out, ref = fast(critic, real, fake, u), eager(critic, real, fake, u)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, wrt), torch.autograd.grad(ref, wrt), strict=True):
        torch.testing.assert_close(a, b)


def _eager_aten_ops(fn) -> set[str]:
    """The aten ops the profiler sees run one by one: none of an op Inductor compiled into a kernel."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::")}


@pytest.mark.slow
def test_symbolic_backward_compiles_with_the_forward() -> None:
    """backward="symbolic": fused mode's generated gradient inside torch.compile. Before, Dynamo met the
    range check's data-dependent raise and the lru_cache'd SymPy build inside the autograd.Function and ran
    the whole Function eagerly (sigmoid, log, pow each run by aten)."""
    fast = lossdsl.compile(FOCAL, gamma=1.5, mode="compiled", backward="symbolic")
    eager = lossdsl.compile(FOCAL, gamma=1.5)
    assert fast.compile_options["backward"] == "symbolic" and fast.compile_options["specialized"] == ["gamma"]
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(300) > 0.5).double()
    out, ref = fast(x, y), eager(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    ops = _eager_aten_ops(lambda: torch.autograd.grad(fast(x, y), x))
    assert not ops & {"aten::sigmoid", "aten::log", "aten::pow", "aten::log1p", "aten::mul"}, ops
    with pytest.raises(lossdsl.InputError, match="'y' is a probability but has values outside"):
        fast(x, y + 2)


@pytest.mark.slow
def test_symbolic_backward_of_two_inputs_matches_torch() -> None:
    """binary_cross_entropy, both the probabilities and the targets requiring grad (a soft-label teacher)."""
    bce = compiled.build(lossdsl.stdlib.get("binary_cross_entropy"), lossdsl.stdlib.binary_cross_entropy(),
                         backward="symbolic")
    p = (torch.rand(200, dtype=torch.float64) * 0.98 + 0.01).requires_grad_(True)
    t = torch.rand(200, dtype=torch.float64, requires_grad=True)
    out, ref = bce(p, t), F.binary_cross_entropy(p, t)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, (p, t)), torch.autograd.grad(ref, (p, t)), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(lossdsl.InputError, match="'input' is a probability but has values outside"):
        bce(p.detach() + 1, t)


@pytest.mark.slow
def test_symbolic_backward_checks_indices() -> None:
    nll = compiled.build(lossdsl.stdlib.get("nll_loss"), lossdsl.stdlib.nll_loss(), backward="symbolic")
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, -100, 1, 2])
    torch.testing.assert_close(torch.autograd.grad(nll(x, y), x)[0],
                               torch.autograd.grad(F.nll_loss(x, y), x)[0])
    with pytest.raises(lossdsl.InputError, match="class index 3 outside"):
        nll(x, torch.tensor([0, 3, 1, 2]))


def test_prepare_backward_builds_the_gradient_the_call_needs() -> None:
    """No torch.compile needed: the table the traced backward reads, keyed by what requires grad."""
    from lossdsl import fused

    module = lossdsl.compile(FOCAL, mode="fused")
    x, y = torch.randn(5, requires_grad=True), torch.rand(5)
    fused.prepare_backward(module, (x, y), {})
    assert [key[1] for key in module._lossdsl_vjp] == [("x",)]
    fused.prepare_backward(module, (x, y.requires_grad_(True)), {})
    assert sorted(key[1] for key in module._lossdsl_vjp) == [("x",), ("x", "y")]
    with torch.no_grad():
        fused.prepare_backward(module, (x.detach(), y.detach()), {})
    assert len(module._lossdsl_vjp) == 2


def test_the_backward_is_prepared_once_per_call_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """_timed prepares the backward table on the first call per key, not on every call; a tensor that starts
    requiring grad, grad mode, a reduction changed after building and a changed int parameter are new keys,
    and the gradients stay right through each (against the eager module's)."""
    from lossdsl import fused

    prepared = []
    real = fused.prepare_backward
    monkeypatch.setattr(fused, "prepare_backward", lambda *a: prepared.append(1) or real(*a))
    text = "loss a(x, y; k: int = 1):\n    (x - y)^2 * k"
    module, eager = lossdsl.compile(text, mode="compiled", backward="symbolic"), lossdsl.compile(text)
    x, y = torch.randn(5, requires_grad=True), torch.randn(5)

    def check() -> None:
        leaves = [t for t in (x, y) if t.requires_grad]
        for got, want in zip(torch.autograd.grad(module(x, y), leaves), torch.autograd.grad(eager(x, y), leaves),
                             strict=True):
            torch.testing.assert_close(got, want)

    for _ in range(3):
        check()
    assert len(prepared) == 1
    y.requires_grad_(True)
    check()
    check()
    assert len(prepared) == 2
    with torch.no_grad():
        module(x, y)
    assert len(prepared) == 3
    module.reduction = eager.reduction = "sum"
    check()
    module.k = eager.k = 3
    check()
    check()
    assert len(prepared) == 5
    out = module(y=y, x=x)  # the same tensors by keyword: a key of its own (its values come in another order)
    assert len(prepared) == 6
    torch.testing.assert_close(torch.autograd.grad(out, (x, y)), torch.autograd.grad(eager(x, y), (x, y)))
    assert len(module.compile_log) == 1  # one signature: the later keys are not timed as compilations


def test_unknown_backward_is_refused() -> None:
    with pytest.raises(ValueError, match="backward must be one of 'autograd', 'symbolic'"):
        compiled.build(lossdsl.parse(FOCAL), lossdsl.compile(FOCAL), backward="numeric")
    with pytest.raises(lossdsl.ParameterError, match=r"got 'symbolc'.*did you mean 'symbolic'"):
        lossdsl.compile(FOCAL, mode="compiled", backward="symbolc")


@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_backward_is_compiled_modes_choice_only(mode: str) -> None:
    with pytest.raises(lossdsl.ParameterError, match=f"backward= applies to mode='compiled'; mode='{mode}'"):
        lossdsl.stdlib.focal_loss(mode=mode, backward="autograd")


@pytest.mark.parametrize("backward", [None, *BACKWARDS])
def test_backward_keyword_reaches_compiled_mode(backward: str | None) -> None:
    """Building is lazy (torch.compile runs on the first call), so this needs no compile."""
    fast = lossdsl.stdlib.focal_loss(mode="compiled", backward=backward)
    assert fast.compile_options["backward"] == (backward or "autograd")
    assert getattr(fast, "_lossdsl_flag_out", False) == (backward in ("symbolic", "in_forward"))  # fused class


def test_each_fused_class_has_its_own_forward_code() -> None:
    """torch.compile caches compiled frames per code object, recompile_limit (8) of them: fused classes
    sharing one forward code made the ninth loss compiled with backward="symbolic" in a process run eagerly."""
    a, b = lossdsl.stdlib.mse_loss(mode="fused"), lossdsl.stdlib.l1_loss(mode="fused")
    assert type(a).forward.__code__ is not type(b).forward.__code__
    x, y = torch.randn(4, requires_grad=True), torch.randn(4)
    torch.testing.assert_close(a(x, y), F.mse_loss(x, y))


@pytest.mark.slow
def test_compiled_symbolic_multilabel_margin_holds_the_gradient_and_the_target_mask() -> None:
    """torch's multilabel_margin_loss holds its gradient and a float is_target, 2 buffers of the input's
    size. The compiled symbolic step held 4.1: cumprod's input and output and scatter_add's int64 index in
    the forward, two reductions' outputs beside the gradient in the backward. With _prefix_all,
    _scatter_sum and merged sums it is one kernel each way, saving is_target: 2 buffers and a quarter
    (the first-0 position and the loss's per-row sums, [n] each), until the forward's einsum over (c, j)
    became one reduction (emit.batched_dot): Inductor had written its sum over j, an [n, c] buffer, first.
    Now 2 buffers, torch's own, and one [n] scrap."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4096, 8, generator=gen, requires_grad=True)
    listed = torch.rand(4096, 8, generator=gen).argsort(dim=1)
    target = torch.where(torch.arange(8) < torch.randint(1, 5, (4096, 1), generator=gen), listed, -1)
    fast = lossdsl.stdlib.multilabel_margin_loss(mode="compiled")  # symbolic: compiled.default_backward
    out, ref = fast(x, target), F.multilabel_margin_loss(x, target)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    peak = peak_bytes(lambda: torch.autograd.grad(fast(x, target), x), torch.device("cpu"))
    one_buffer = x.numel() * x.element_size()
    assert peak <= 2 * one_buffer + 16 * 1024, peak / one_buffer


def test_pairwise_reductions_default_to_the_symbolic_backward() -> None:
    """compiled.default_backward: a reduction whose body is wider than every input (a sum over pairs) gets
    the symbolic backward when none is asked for; one-binder sums of products (einsums, info_nce's
    similarity matrix) and everything else in the stdlib keep autograd's. Lazy building: no compile."""
    pairwise = lossdsl.stdlib.multilabel_margin_loss(mode="compiled")
    assert pairwise.compile_options["backward"] == "symbolic" and "backward_reason" in pairwise.compile_options
    asked = lossdsl.stdlib.multilabel_margin_loss(mode="compiled", backward="autograd")
    assert asked.compile_options["backward"] == "autograd" and "backward_reason" not in asked.compile_options
    ranking = lossdsl.compile("loss rank(s[i]):\n    mean_{i, j}(relu(1 - s[i] + s[j]))", mode="compiled")
    assert ranking.compile_options["backward"] == "symbolic"
    picked = [n for n in lossdsl.stdlib.names() if compiled.default_backward(lossdsl.stdlib.get(n).ir) == "symbolic"]
    assert picked == ["multilabel_margin_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multilabel_margin_loss", "info_nce", "multi_margin_loss",
                                  "cross_entropy_smoothed", "cross_entropy_probs"])
def test_batched_dots_compile_to_the_eager_values(name: str) -> None:
    """The stdlib losses whose forward or generated gradient has an einsum of nested operands (emit.batched_dot:
    einsum eagerly, product and sum while compiling): compiled with the symbolic backward, value and
    gradients equal eager mode's einsum in float64."""
    torch.manual_seed(0)
    inputs = CASES[name].make(512, torch.device("cpu"), torch.float64)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    eager = lossdsl.stdlib.get(name).compile(**CASES[name].params)
    fast = lossdsl.stdlib.get(name).compile(mode="compiled", backward="symbolic", **CASES[name].params)
    out, ref = fast(*inputs), eager(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(out, leaves), torch.autograd.grad(ref, leaves), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["autograd", "symbolic", "in_forward", "auto"])
def test_a_compiled_loss_inside_the_callers_torch_compile(backward: str) -> None:
    """A training step compiled whole traces the loss module: in_forward's Function (which branches on
    grad_out and calls kernels Dynamo cannot trace) gives way to fused mode's there. It raised an internal
    Dynamo error before."""
    import torch._dynamo

    torch._dynamo.reset()
    module = lossdsl.stdlib.nll_loss(mode="compiled", backward=backward)
    x = torch.randn(8, 5).log_softmax(1).requires_grad_(True)
    y = torch.randint(0, 5, (8,))

    @torch.compile
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return module(x * 1.0, y) * 2

    for _ in range(2):
        out = step(x, y)
        torch.testing.assert_close(out, 2 * F.nll_loss(x, y))
        torch.testing.assert_close(torch.autograd.grad(out, x)[0],
                                   torch.autograd.grad(2 * F.nll_loss(x, y), x)[0])
