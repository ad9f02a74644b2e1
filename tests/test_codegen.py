"""The generated source: standalone (imports only torch), readable, and memory-frugal lowering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mpmath
import pytest
import torch
import torch.nn.functional as F

import lossdsl
from tests.conftest import AtenOps, TorchCalls
from tests.test_api import EXAMPLES, FOCAL

SIMILARITY = """
loss softmax_similarity(a[i, d], b[j, d]; tau = 0.1 > 0):
    s[i, j] = sum_d(a[i, d] * b[j, d]) / tau
    logsumexp_j(s[i, j]) - s[i, i]
"""


def run_clean(code: str, cwd: Path) -> str:
    """Run Python in a fresh interpreter that cannot import lossdsl (it is blocked on purpose)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    blocker = "import sys\nclass _Block:\n    def find_spec(self, name, *a):\n" \
              "        if name.split('.')[0] == 'lossdsl':\n            raise ImportError('lossdsl is blocked')\n" \
              "sys.meta_path.insert(0, _Block())\n"
    out = subprocess.run([sys.executable, "-c", blocker + code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_exported_source_reproduces_the_module_without_lossdsl(tmp_path: Path) -> None:
    losses = lossdsl.load(EXAMPLES + FOCAL)
    stdlib = ("sigmoid_focal_loss", "label_smoothing_cross_entropy", "dice_loss")  # _where, _along, branches
    losses.update({name: lossdsl.stdlib.get(name) for name in stdlib})
    kwargs = {"dice_loss": {"use_sigmoid": True}}
    for name in ("cross_entropy", "dice", "info_nce", "focal", *stdlib):
        (tmp_path / f"{name}.py").write_text(losses[name].to_source())
    inputs = {
        "sigmoid_focal_loss": (torch.randn(6, dtype=torch.float64) * 3, (torch.rand(6) > 0.5).double()),
        "label_smoothing_cross_entropy": (torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 1])),
        "dice_loss": (torch.randn(2, 3, 4, 4, dtype=torch.float64), (torch.rand(2, 3, 4, 4) > 0.5).double()),
        "cross_entropy": (torch.randn(4, 3, 2, dtype=torch.float64), torch.tensor([[0, 2], [1, -100], [2, 2], [0, 1]])),
        "dice": (torch.rand(2, 3, 4, 4, dtype=torch.float64), (torch.rand(2, 3, 4, 4) > 0.5).double()),
        "info_nce": (torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)),
        "focal": (torch.randn(6, dtype=torch.float64) * 3, (torch.rand(6) > 0.5).double()),
    }
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import importlib, json, torch
        inputs = torch.load("inputs.pt")
        out = {{}}
        for name, cls in {json.dumps({n: losses[n].class_name for n in inputs})}.items():
            module = getattr(importlib.import_module(name), cls)(**{kwargs!r}.get(name, {{}}))
            out[name] = module(*inputs[name]).item()
        print(json.dumps(out))
    """)
    got = json.loads(run_clean(script, tmp_path))
    for name, args in inputs.items():
        assert got[name] == losses[name].compile(**kwargs.get(name, {}))(*args).item()
    source = losses["focal"].to_source()
    imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert imports == ["import torch"]


def test_similarity_over_4096_pairs_costs_one_matrix_per_intermediate(tmp_path: Path) -> None:
    """d = 512: an [i, j, d] temporary would need 32 GiB; the matmul lowering needs a few 64 MiB matrices."""
    (tmp_path / "sim.py").write_text(lossdsl.parse(SIMILARITY).to_source())
    script = textwrap.dedent("""
        import json, torch
        from sim import SoftmaxSimilarity

        def peak_kib():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1])

        torch.manual_seed(0)
        a = torch.randn(4096, 512)
        b = torch.randn(4096, 512)
        loss = SoftmaxSimilarity()
        loss(a[:8], b[:8])  # warm up allocator and kernels on a tiny problem
        before = peak_kib()
        value = loss(a, b)
        after = peak_kib()
        ref = torch.nn.functional.cross_entropy(a @ b.T / 0.1, torch.arange(4096))
        print(json.dumps({"delta_mib": (after - before) / 1024, "value": value.item(), "ref": ref.item()}))
    """)
    result = json.loads(run_clean(script, tmp_path))
    matrix_mib = 4096 * 4096 * 4 / 2**20
    print(f"peak growth {result['delta_mib']:.0f} MiB = {result['delta_mib'] / matrix_mib:.2f} x one 4096x4096 matrix")
    # The stable form (lossdsl/stable.py log_ratio) computes about six [i, j] temporaries (dot products, their
    # difference to the positive over tau, the max-shifted copy, its exp, the masked exp, a bool mask), but
    # each is deleted after its last use, so about two are live at once. An [i, j, d] temporary would be 512.
    assert result["delta_mib"] < 3.5 * matrix_mib
    assert abs(result["value"] - result["ref"]) < 1e-3 * abs(result["ref"])


NAME_CLASHES = """
loss clash(self[n], torch[n], t1[n], N_n[n], _dt[n]; lambda = 0.5, class: int = 2, reduction = 3.0, eval = 1.5):
    lambda * (self - torch)^2 + class * t1 * N_n + reduction * _dt - eval
"""


def test_user_names_that_are_keywords_or_generated_names_work_and_keep_their_names_in_messages() -> None:
    """Python keywords (lambda, class), names the module itself uses (self, torch, reduction, t1, N_n, _dt)
    and nn.Module attributes (eval) are renamed in the code only: values, keywords and messages keep them."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(4, generator=gen, dtype=torch.float64) for _ in range(5)]
    module = lossdsl.compile(NAME_CLASHES, reduction="none", **{"lambda": 2.0, "class": 3})
    s, t, t1, nn_, dt = xs
    torch.testing.assert_close(module(*xs), 2.0 * (s - t) ** 2 + 3 * t1 * nn_ + 3.0 * dt - 1.5)
    fused = lossdsl.parse(NAME_CLASHES).compile(mode="fused", **{"lambda": 2.0})
    leaf = xs[0].clone().requires_grad_()
    fused(leaf, *xs[1:]).backward()
    torch.testing.assert_close(leaf.grad, 2 * 2.0 * (s - t) / 4)
    with pytest.raises(lossdsl.InputError, match="input 'torch' axis 0 \\(n\\) has size 3 but 'self' fixes it to 4"):
        module(xs[0], torch.rand(3, dtype=torch.float64), *xs[2:])
    with pytest.raises(lossdsl.UnknownNameError, match="did you mean 'lambda'"):
        lossdsl.compile(NAME_CLASHES, lambd=1.0)


@pytest.mark.parametrize("values, bad", [
    ([0.0, 1.0, 0.5], False), ([], False), ([float("nan"), 0.2], False),  # NaN: as plain comparisons say
    ([float("nan"), 1.5], True), ([0.2, 1.0000001], True), ([-1e-30, 0.5], True), ([float("inf")], True),
])
@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_probability_range_check(values: list[float], bad: bool, mode: str) -> None:
    """The generated one-pass check (_outside: aminmax, then the exact test only when it flags) against the
    rule it implements: a prob input with any value outside [0, 1] is refused, NaN is not judged. Compiled
    mode's deferred check: tests/test_compiled.py."""
    module = lossdsl.compile("loss l(p: prob):\n    p\n", reduction="sum", mode=mode)
    p = torch.tensor(values, dtype=torch.float64)
    if bad:
        with pytest.raises(lossdsl.InputError, match=r"'p' is a probability but has values outside \[0, 1\]"):
            module(p)
    else:
        module(p)


@pytest.mark.parametrize("target, message", [
    ([0, 2, 1], None), ([-100, 0, 2], None), ([], None),
    ([3, 0], "class index 3 outside"), ([-100, -1], "class index -1 outside"), ([0, -7], "class index -7")])
def test_class_index_range_check(target: list[int], message: str | None) -> None:
    """Indices in [0, c) pass the one-pass check; the ignore_index sentinel falls to the exact test, which
    lets it through and names the first bad index."""
    module = lossdsl.stdlib.nll_loss(reduction="sum")
    x = torch.randn(len(target), 3, dtype=torch.float64)
    y = torch.tensor(target, dtype=torch.long)
    if message is None:
        module(x, y)
    else:
        with pytest.raises(lossdsl.InputError, match=message):
            module(x, y)


def _focal_reference(x: torch.Tensor, y: torch.Tensor, alpha, gamma) -> torch.Tensor:
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    loss = ce * (1 - p_t) ** gamma
    if not isinstance(alpha, torch.Tensor) and alpha < 0:
        return loss.mean()
    return ((alpha * y + (1 - alpha) * (1 - y)) * loss).mean()


def test_scalar_parameters_are_python_numbers_in_exponents_and_conditions() -> None:
    """sigmoid focal's (1 - p_t)^gamma runs as pow(tensor, 2.0) and `alpha >= 0` selects without a where."""
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(64) > 0.5).double()
    module = lossdsl.stdlib.sigmoid_focal_loss()
    with TorchCalls() as seen:
        out = module(x, y)
    assert "where" not in seen.names
    pows = [args for n, args in seen.calls if n in ("pow", "__pow__")]
    assert pows and all(isinstance(a[1], float) and a[1] == 2.0 for a in pows)
    ref = _focal_reference(x, y, 0.25, 2.0)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])


def test_python_numbers_follow_their_buffers() -> None:
    """Changed in place, replaced, moved to another dtype, given per element or requiring grad: the value
    used is always the buffer's current one."""
    x = torch.randn(32, dtype=torch.float64)
    y = (torch.rand(32) > 0.5).double()
    module = lossdsl.stdlib.sigmoid_focal_loss()
    module(x, y)
    module.gamma.fill_(3.0)  # in place: the version counter moves
    torch.testing.assert_close(module(x, y), _focal_reference(x, y, 0.25, 3.0))
    module.gamma = torch.tensor(0.5, dtype=torch.float64)  # another tensor
    torch.testing.assert_close(module(x, y), _focal_reference(x, y, 0.25, 0.5))
    module.alpha = torch.tensor(-1.0, dtype=torch.float64)  # the condition flips: no weighting
    torch.testing.assert_close(module(x, y), _focal_reference(x, y, -1.0, 0.5))
    alpha = torch.linspace(0.1, 0.9, 32, dtype=torch.float64)  # per element: the tensor path
    module.alpha = alpha
    torch.testing.assert_close(module(x, y), _focal_reference(x, y, alpha, 0.5))
    module.alpha = torch.tensor(0.25, dtype=torch.float64)
    half = module.float()
    torch.testing.assert_close(half(x.float(), y.float()), _focal_reference(x, y, 0.25, 0.5).float())
    gamma = torch.tensor(2.0, requires_grad=True)  # a buffer swapped for a leaf: its gradient flows
    out = torch.func.functional_call(half, {"gamma": gamma}, (x.float(), y.float()))
    (g,) = torch.autograd.grad(out, gamma)
    g_ref = torch.autograd.grad(_focal_reference(x.float(), y.float(), 0.25, gamma), gamma)[0]
    torch.testing.assert_close(g, g_ref)


def test_fixed_parameters_are_converted_once_and_follow_their_buffers() -> None:
    """A float64 class weight read in float32 is cast on the first call, not on every call; changed in
    place, replaced, or swapped by functional_call, the value used is the buffer's current one."""
    x = torch.randn(16, 4)
    y = torch.randint(0, 4, (16,))
    module = lossdsl.stdlib.nll_loss(weight=torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64))

    def ref() -> torch.Tensor:
        return F.nll_loss(x, y, weight=module.weight.float())

    torch.testing.assert_close(module(x, y), ref())
    with TorchCalls() as seen:
        module(x, y)
    assert not [args for name, args in seen.calls if name == "to" and args[0] is module.weight]
    module.weight[2] = 5.0  # in place
    torch.testing.assert_close(module(x, y), ref())
    module.weight = torch.tensor([1.0, 0.0, 1.0, 3.0], dtype=torch.float64)  # replaced
    torch.testing.assert_close(module(x, y), ref())
    other = torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    out = torch.func.functional_call(module, {"weight": other}, (x, y))
    torch.testing.assert_close(out, F.nll_loss(x, y, weight=other.float()))
    torch.testing.assert_close(module(x, y), ref())
    leaf = other.clone().requires_grad_()  # a weight in the graph: converted per call, its gradient flows
    for _ in range(2):
        (g,) = torch.autograd.grad(torch.func.functional_call(module, {"weight": leaf}, (x, y)), leaf)
        w = leaf.float()[y]  # torch's nll_loss has no weight gradient: its formula, by hand
        (g_ref,) = torch.autograd.grad(-(w * x.gather(1, y[:, None]).squeeze(1)).sum() / w.sum(), leaf)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 1, 1), (5, 7, 3), (2, 5, 7, 1)])
@pytest.mark.parametrize("fn", [torch.log_softmax, torch.softmax, torch.logsumexp])
def test_along_matches_the_plain_call(shape: tuple, fn) -> None:
    """_along moves the axis last only when every axis after it has size 1; values and gradients are the
    plain call's, for positive and negative dims."""
    namespace: dict = {}
    exec(compile(lossdsl.codegen.PRELUDE, "<prelude>", "exec"), namespace)  # our own generated prelude
    along = namespace["_along"]
    for dim in (1, 1 - len(shape)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        got, want = along(fn, x, dim), fn(x, dim=dim)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
        w = torch.randn(want.shape, dtype=torch.float64)
        torch.testing.assert_close(torch.autograd.grad((got * w).sum(), x)[0],
                                   torch.autograd.grad((want * w).sum(), x)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 1), (4,)), ((), (2, 2)), ((5,), (5,), (1, 5)),
                                    ((3,), (4,))])
def test_broadcast_shapes_shortcut_agrees_with_torch(shapes: tuple) -> None:
    """_broadcast_shapes answers equal shapes itself and defers to torch otherwise, errors included."""
    namespace: dict = {}
    exec(compile(lossdsl.codegen.PRELUDE, "<prelude>", "exec"), namespace)  # our own generated prelude
    sizes = [torch.Size(s) for s in shapes]
    try:
        want = torch.broadcast_shapes(*sizes)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            namespace["_broadcast_shapes"](*sizes)
        return
    assert namespace["_broadcast_shapes"](*sizes) == want


def test_broadcasting_inputs_expand_the_output_as_before() -> None:
    """Inputs of undeclared shape broadcast; an output smaller than their common shape is expanded."""
    module = lossdsl.compile("loss a(x, y):\n    x^2", reduction="none")
    x, y = torch.randn(3, 1, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(module(x, y), (x**2).expand(3, 4))
    with pytest.raises(lossdsl.InputError, match="do not broadcast"):
        module(torch.randn(3), torch.randn(4))


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("ignored", [False, True])
def test_class_targets_gather_checked_or_clamped(validate: bool, ignored: bool) -> None:
    """A checked index in range gathers as it is; an ignore_index present, or no check at all, gathers through
    the clamped copy. Either way the values and gradients are torch's."""
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2, 1, 3, 2])
    if ignored:
        y[2] = -100
    module = lossdsl.stdlib.nll_loss(validate=validate)
    out, ref = module(x, y), F.nll_loss(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    with TorchCalls() as seen:
        module(x, y)
    assert ("clamp" in seen.names) == (ignored or not validate)


def test_log_cosh_runs_as_a_generated_autograd_function() -> None:
    """ir.logcosh prints as a generated autograd.Function: forward its stable form, backward grad * tanh(a).
    Autograd through the form's clamp, sinh, powers and log1p is gone from eager mode's backward; the
    values, gradients (to +-1e4) and second derivative are log cosh's, against independent formulas."""

    source = lossdsl.stdlib.get("log_cosh_loss").to_source()
    assert "class _LogCosh(torch.autograd.Function):" in source and "_LogCosh.apply(t1)" in source
    module = lossdsl.stdlib.get("log_cosh_loss").compile()
    x = torch.tensor([-1e4, -30.0, -1.0, -1e-4, 0.0, 1e-9, 0.99, 1.01, 89.0, 1e4], dtype=torch.float64,
                     requires_grad=True)
    y = torch.zeros_like(x)
    out = module(x, y)
    with AtenOps() as ops:
        (g,) = torch.autograd.grad(out, x, create_graph=True)
    names = [name for name, _ in ops.ops]
    assert names.count("tanh") == 1 and "where" not in names and len(names) <= 8  # autograd: 20+ ops
    n = x.numel()
    exact = [float(mpmath.log(mpmath.cosh(mpmath.mpf(v)))) for v in x.tolist()]
    torch.testing.assert_close(out, torch.tensor(exact, dtype=torch.float64).mean(), rtol=1e-15, atol=0)
    torch.testing.assert_close(g, torch.tanh(x.detach()) / n, rtol=1e-15, atol=0)
    (h,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(h, (1 - torch.tanh(x.detach()) ** 2) / n, rtol=1e-12, atol=1e-300)


def test_log_cosh_per_sample_gradients_through_torch_func() -> None:
    """vmap(grad(loss)) (per-sample gradients) worked on the plain ops and must work on the generated
    autograd.Function too (it needs generate_vmap_rule)."""
    module = lossdsl.stdlib.get("log_cosh_loss").compile()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    per_sample = torch.func.vmap(torch.func.grad(lambda a, b: module(a, b)))(x, y)
    torch.testing.assert_close(per_sample, torch.tanh(x - y) / 3, rtol=1e-14, atol=0)


def _prelude() -> dict:
    namespace: dict = {}
    exec(compile(lossdsl.codegen.PRELUDE, "<prelude>", "exec"), namespace)  # our own generated prelude
    return namespace


@pytest.mark.slow
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_prefix_all_and_scatter_sum_compiled_equal_their_eager_forms(dim: int) -> None:
    """Under torch.compile _prefix_all is a compare with the first 0's position and _scatter_sum a dense
    sum over the index's slots; both give cumprod's and scatter_add_'s values (random 0/1 masks with
    zeros anywhere, all-ones and all-zeros rows; indices repeated within a row)."""
    ns = _prelude()
    gen = torch.Generator().manual_seed(dim + 7)
    mask = (torch.rand(6, 5, 4, generator=gen) > 0.3).double()
    mask[0], mask[1] = 1.0, 0.0
    index = torch.randint(0, 3, (6, 5, 4), generator=gen)
    src = torch.randn(6, 5, 4, generator=gen, dtype=torch.float64)
    size = list(src.shape)
    size[dim] = 3

    def both(m, i, s):
        return ns["_prefix_all"](m, dim), ns["_scatter_sum"](tuple(size), dim, i, s)

    want = (torch.cumprod(mask, dim), torch.zeros(size, dtype=torch.float64).scatter_add_(dim, index, src))
    torch._dynamo.reset()
    got = torch.compile(both, fullgraph=True)(mask, index, src)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-14, atol=1e-14)
    assert torch.equal(both(mask, index, src)[0], want[0])  # eagerly: the library calls themselves


@pytest.mark.parametrize("mode", ["eager", "fused"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3)], ids=["rows", "k_dim"])
def test_batchmean_divides_by_the_leading_group_dimension(mode: str, shape: tuple) -> None:
    """cross_entropy's input[*n, c] leads with a group: batchmean divided its sum by 1, not by N."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, shape[:-1])
    out = lossdsl.stdlib.get("cross_entropy").compile(reduction="batchmean", mode=mode)(x, y)
    ref = torch.nn.functional.cross_entropy(x.movedim(-1, 1), y, reduction="sum") / shape[0]
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
