"""lossdsl.inductor_call: in_forward's kernels called without Dynamo, keyed by what the trace read.

References are torch's own losses and autograd through them, or the eager module (float64). Each test that
changes what a trace read (a buffer's values, an int parameter, the reduction, a shape) checks the result
against the reference after the change: a stale entry would return the old graph's numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import inductor_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cases import CASES


def _nll(**params) -> torch.nn.Module:
    return lossdsl.stdlib.nll_loss(mode="compiled", backward="in_forward", **params)


def _inputs(n: int, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, c, dtype=torch.float64).log_softmax(1).requires_grad_(True)
    return x, torch.randint(0, c, (n,))


def _check(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **torch_params) -> None:
    out, ref = module(x, y), F.nll_loss(x, y, **torch_params)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])


@pytest.mark.slow
def test_calls_go_to_an_entry_and_match_torch() -> None:
    module = _nll()
    run = module._lossdsl_run
    assert isinstance(run, inductor_call.DirectRun)
    x, y = _inputs(32)
    for _ in range(2):
        _check(module, x, y)
    assert len(run.table) == 1 and not run.broken
    assert module.compile_log and module.compile_seconds > 0  # the trace and Inductor's compile, timed


@pytest.mark.slow
def test_a_weight_changed_in_place_is_read() -> None:
    """The buffers are graph inputs, not constants written into the kernel."""
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    module = _nll(weight=weight.clone())
    x, y = _inputs(32)
    _check(module, x, y, weight=weight)
    module.weight.mul_(torch.arange(1.0, 6.0, dtype=torch.float64))
    _check(module, x, y, weight=weight * torch.arange(1.0, 6.0, dtype=torch.float64))
    assert len(module._lossdsl_run.table) == 1


@pytest.mark.slow
def test_int_parameter_and_reduction_changes_make_new_entries() -> None:
    module = _nll()
    x, _ = _inputs(32)
    y = torch.tensor([0, 1, 2, 3, 4, 1, 1, 2] * 4)
    _check(module, x, y)
    module.ignore_index = 1
    _check(module, x, y, ignore_index=1)
    module.reduction = "sum"
    _check(module, x, y, ignore_index=1, reduction="sum")
    module.ignore_index = -100
    _check(module, x, y, reduction="sum")
    assert len(module._lossdsl_run.table) == 4  # one input shape, four keys


@pytest.mark.slow
def test_new_shapes_past_the_limit_go_to_torch_compile() -> None:
    """The shape of the batches and of the last one get entries, in training and in evaluation (no gradient
    wanted: another key, the same shapes); more shapes are dynamic shapes' business."""
    module = _nll()
    calls = []
    fallback = module._lossdsl_run.fallback
    module._lossdsl_run.fallback = lambda *a: calls.append(a[2].shape) or fallback(*a)
    for n in (32, 7, 32, 11, 13, 7):
        _check(module, *_inputs(n))
        with torch.no_grad():
            x, y = _inputs(n)
            torch.testing.assert_close(module(x, y), F.nll_loss(x, y))
    assert len(module._lossdsl_run.table) == 4
    assert calls == [torch.Size([11, 5])] * 2 + [torch.Size([13, 5])] * 2


@pytest.mark.slow
def test_changed_parameter_values_replace_the_entry() -> None:
    """gamma is written into the compiled forward (compiled.Specializer); each new value is a new loss, whose
    entry replaces the old one rather than filling the table and sending later calls to the fallback."""
    module = lossdsl.stdlib.sigmoid_focal_loss(mode="compiled", backward="in_forward")
    eager = lossdsl.stdlib.sigmoid_focal_loss()
    fell_back = []
    fallback = module._lossdsl_run.fallback
    module._lossdsl_run.fallback = lambda *a: fell_back.append(1) or fallback(*a)
    x = (torch.randn(64, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randint(0, 2, (64,)).double()
    for gamma in (2.0, 1.0, 3.0, 0.5):
        module.gamma.fill_(gamma)
        eager.gamma.fill_(gamma)
        out, ref = module(x, y), eager(x, y)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert len(module._lossdsl_run.table) == 1 and not fell_back


@pytest.mark.slow
def test_range_checks_raise_through_an_entry() -> None:
    module = _nll()
    x, y = _inputs(4)
    _check(module, x, y)
    with pytest.raises(lossdsl.InputError, match="class index 7 outside"):
        module(x, torch.tensor([0, 7, 1, 2]))
    assert len(module._lossdsl_run.table) == 1


class _Toy(torch.nn.Module):
    """What DirectRun reads of a fused module, around a function of our choosing."""

    _lossdsl_key, _lossdsl_learnable, _lossdsl_fixed = 0, (), ()
    reduction, validate = "mean", True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(2.0, dtype=torch.float64))


def _toy_run(fn) -> tuple[inductor_call.DirectRun, list]:
    fell_back: list = []

    def fallback(module, want, *inputs):
        fell_back.append(want)
        return fn(module, want, *inputs)

    return inductor_call.DirectRun(fn, fallback, {}), fell_back


def test_a_branch_on_a_value_fails_the_trace_and_falls_back() -> None:
    """On fake tensors a Python branch on data cannot be taken, so it is never written into a graph."""
    def fn(module, want, x):
        out = x.sum() * module.scale
        return (out if out > 0 else -out), ()

    run, fell_back = _toy_run(fn)
    module = _Toy()
    for sign in (1.0, -1.0):
        out, grads = run(module, (), torch.full((3,), sign, dtype=torch.float64))
        assert float(out) == 6.0 and grads == ()
    assert run.broken and not run.table and fell_back == [(), ()]


def test_a_tensor_read_from_outside_fails_the_trace() -> None:
    """A tensor neither an input nor a buffer would be frozen into the graph as a constant."""
    outside = torch.ones(3, dtype=torch.float64)

    def fn(module, want, x):
        return (x * outside).sum(), ()

    run, fell_back = _toy_run(fn)
    x = torch.ones(3, dtype=torch.float64)
    assert float(run(_Toy(), (), x)[0]) == 3.0
    outside.fill_(2.0)
    assert float(run(_Toy(), (), x)[0]) == 6.0
    assert run.broken and len(fell_back) == 2


@pytest.mark.slow
def test_flag_and_gradients_come_back_in_their_places() -> None:
    """(value, flag) and the gradients, from the compiled graph's flat outputs."""
    def fn(module, want, x):
        return ((x * module.scale).sum(), (x < 0).any()), (x * 0 + module.scale, 2 * x)

    run, fell_back = _toy_run(fn)
    module = _Toy()
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    (value, flag), (g0, g1) = run(module, (), x)
    assert float(value) == 4.0 and bool(flag)
    torch.testing.assert_close(g0, torch.full((3,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(g1, 2 * x)
    module.scale.fill_(3.0)
    (value, _), (g0, _) = run(module, (), x)
    assert float(value) == 6.0 and float(g0[0]) == 3.0
    assert len(run.table) == 1 and not fell_back


def test_learnables_and_non_tensors_take_the_fallback() -> None:
    def fn(module, want, x):
        return torch.as_tensor(x).sum(), ()

    run, fell_back = _toy_run(fn)
    module = _Toy()
    run(module, (), 1.5)
    module._lossdsl_learnable = ("w",)
    run(module, (), torch.ones(3))
    assert len(fell_back) == 2 and not run.table and not run.broken


@pytest.mark.slow
def test_autocast_changes_nothing() -> None:
    """The generated code turns autocast off, so a call under it computes in float32, as eager mode does."""
    module = lossdsl.stdlib.cross_entropy(mode="compiled", backward="in_forward")
    eager = lossdsl.stdlib.cross_entropy()
    x = (torch.randn(64, 9) * 3).requires_grad_(True)
    y = torch.randint(0, 9, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = module(x, y), eager(x, y)
        g, g_ref = torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)
    module(x, y)
    assert len(module._lossdsl_run.table) == 1  # autocast's state is no part of the key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cross_entropy", "sigmoid_focal_loss", "dice_loss", "info_nce",
                                  "multi_margin_loss"])
def test_stdlib_losses_through_entries_match_the_eager_module(name: str) -> None:
    case = CASES[name]
    inputs = case.make(512, torch.device("cpu"), torch.float64)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    module = getattr(lossdsl.stdlib, name)(mode="compiled", backward="in_forward", **case.params)
    eager = getattr(lossdsl.stdlib, name)(**case.params)
    out, ref = module(*inputs), eager(*inputs)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, diff), torch.autograd.grad(ref, diff), strict=True):
        torch.testing.assert_close(a, b)
    assert len(module._lossdsl_run.table) == 1


def test_an_inductor_failure_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def fn(module, want, x):
        return (x * module.scale).sum(), ()

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch._inductor, "compile", broken)
    run, fell_back = _toy_run(fn)
    with pytest.warns(RuntimeWarning, match="could not compile .RuntimeError: no compiler"):
        out, _ = run(_Toy(), (), torch.ones(3, dtype=torch.float64))
    assert float(out) == 6.0 and run.broken and len(fell_back) == 1
    run(_Toy(), (), torch.ones(3, dtype=torch.float64))
    assert len(fell_back) == 2  # not tried again
