"""compiled mode's backward="in_forward": gradients written by the forward kernel, scaled in the backward.

References are torch's own losses and autograd through them (independent of lossdsl's gradient), float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import lossdsl
from lossdsl import grad_in_forward


def _inf(name: str, **params) -> torch.nn.Module:
    module = getattr(lossdsl.stdlib, name)(mode="compiled", backward="in_forward", **params)
    assert module.compile_options["backward"] == "in_forward"
    assert module.compile_options["recompute"] is None  # no backward graph, nothing to recompute or save
    return module


def _grads(out: torch.Tensor, *inputs: torch.Tensor, seed: float = 1.0) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, grad_outputs=torch.tensor(seed, dtype=out.dtype))


CASES = {
    "mse_loss": (lambda n: (torch.randn(n), torch.randn(n)), F.mse_loss),
    "log_cosh_loss": (lambda n: (torch.randn(n) * 4, torch.randn(n)),
                      lambda x, y: (x - y).cosh().log().mean()),
    "cross_entropy": (lambda n: (torch.randn(n // 8, 8), torch.randint(0, 8, (n // 8,))), F.cross_entropy),
    "binary_cross_entropy_with_logits": (lambda n: (torch.randn(n) * 3, torch.rand(n)),
                                         F.binary_cross_entropy_with_logits),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [1.0, -2.5])
def test_values_and_gradients_match_torch(name: str, seed: float) -> None:
    """seed 1 is loss.backward()'s grad_out, returned unscaled; any other is multiplied in."""
    make, reference = CASES[name]
    x, y = (t.double() if t.is_floating_point() else t for t in make(512))
    x.requires_grad_(True)
    module = _inf(name)
    out, ref = module(x, y), reference(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(_grads(out, x, seed=seed)[0], _grads(ref, x, seed=seed)[0])


@pytest.mark.slow
def test_both_inputs_and_a_changed_parameter() -> None:
    """Two inputs requiring grad (a soft-label teacher), and a specialised parameter changed in place: the
    forward that writes the gradients is regenerated with the new value."""
    module = _inf("huber_loss")
    x = torch.randn(300, dtype=torch.float64, requires_grad=True) * 3
    y = torch.randn(300, dtype=torch.float64, requires_grad=True)
    for delta in (1.0, 0.3):
        module.delta.fill_(delta)
        out, ref = module(x, y), F.huber_loss(x, y, delta=delta)
        torch.testing.assert_close(out, ref)
        for a, b in zip(_grads(out, x, y), _grads(ref, x, y), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_retained_graph_and_double_backward_recompute() -> None:
    """The first backward takes the gradient over; a second (retain_graph) recomputes it from the saved
    inputs instead of returning a tensor the first one handed out; create_graph runs the symbolic backward,
    which autograd can differentiate again."""
    module = _inf("log_cosh_loss")
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    y = torch.randn(200, dtype=torch.float64)
    expect = torch.tanh(x.detach() - y) / 200
    out = module(x, y)
    out.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, expect)
    out.backward()
    torch.testing.assert_close(x.grad, 2 * expect)
    g, = torch.autograd.grad(module(x, y), x, create_graph=True)
    torch.testing.assert_close(g, expect)
    hess_diag, = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(hess_diag, (1 - torch.tanh(x.detach() - y) ** 2) / 200)


@pytest.mark.slow
def test_constant_gradients_are_scaled_out_of_place() -> None:
    """mean(x + y): both gradients are 1/n, which Inductor returns expanded from one number; multiplying
    that in place raised (more than one element refers to one memory location)."""
    module = lossdsl.compile("mean(x + y)", mode="compiled", backward="in_forward", inputs=["x", "y"])
    x, y = (torch.randn(8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for seed in (1.0, 2.5, -1.0):
        for g in _grads(module(x, y), x, y, seed=seed):
            torch.testing.assert_close(g, torch.full((8,), seed / 8, dtype=torch.float64))


@pytest.mark.slow
def test_a_gradient_that_is_an_input_is_scaled_out_of_place() -> None:
    """sum(x * y): the gradient with respect to x is y itself, which an in-place multiply by grad_out changed."""
    module = lossdsl.compile("loss lin(x, y):\n    x * y\n", reduction="sum", mode="compiled", backward="in_forward")
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, dtype=torch.float64)
    kept = y.clone()
    g, = _grads(module(x, y), x, seed=2.5)
    torch.testing.assert_close(y, kept, rtol=0, atol=0)
    torch.testing.assert_close(g, 2.5 * kept)


@pytest.mark.slow
def test_no_gradient_is_computed_without_grad_mode() -> None:
    module = _inf("mse_loss")
    x, y = torch.randn(64, dtype=torch.float64, requires_grad=True), torch.randn(64, dtype=torch.float64)
    seen = []
    run = module._lossdsl_run
    module._lossdsl_run = lambda m, want, *a: seen.append(want) or run(m, want, *a)
    with torch.no_grad():
        torch.testing.assert_close(module(x, y), F.mse_loss(x, y))
    module(x.detach(), y)
    module(x, y)
    assert seen == [(), (), ("input",)]


@pytest.mark.slow
def test_range_checks_raise() -> None:
    module = _inf("nll_loss")
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_grads(module(x, torch.tensor([0, -100, 1, 2])), x)[0],
                               _grads(F.nll_loss(x, torch.tensor([0, -100, 1, 2])), x)[0])
    with pytest.raises(lossdsl.InputError, match="class index 3 outside"):
        module(x, torch.tensor([0, 3, 1, 2]))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_get_gradients_of_their_dtype(dtype: torch.dtype) -> None:
    module = _inf("binary_cross_entropy_with_logits")
    x = (torch.randn(256) * 4).to(dtype).requires_grad_(True)
    y = torch.rand(256).to(dtype)
    g, = _grads(module(x, y), x)
    ref, = _grads(F.binary_cross_entropy_with_logits(x.double(), y.double()), x)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), ref.double(), rtol=1e-2, atol=1e-5)


@pytest.mark.slow
def test_the_gradient_is_written_in_the_loss_loop() -> None:
    """One loop over the elements reads each input once for the loss and its gradient. Inductor's CPU
    scheduler fuses a pointwise node into a later reduction only; with its reorder_for_locality pass the
    gradient moved after the loss and MSE got a second loop reading both inputs again."""
    module = _inf("mse_loss")
    x, y = torch.randn(4096, requires_grad=True), torch.randn(4096)
    _, codes = run_and_get_code(lambda: module(x, y))
    kernel = next(c for c in codes if "cpp_fused" in c)
    assert kernel.count("for(") == 1, kernel


def test_non_scalar_output_falls_back_to_the_symbolic_backward() -> None:
    """Building is lazy, so this needs no compile."""
    module = lossdsl.stdlib.mse_loss(mode="compiled", backward="in_forward", reduction="none")
    assert module.compile_options["backward"] == "symbolic"
    assert module.compile_options["backward_reason"] == "in_forward needs a scalar output"
    assert module.compile_options["recompute"] == "masks"  # its symbolic backward has a graph to partition
    assert grad_in_forward.applies(lossdsl.stdlib.get("mse_loss").ir, "mean")
    assert not grad_in_forward.applies(lossdsl.stdlib.get("mse_loss").ir, "none")


@pytest.mark.slow
def test_reduction_set_to_none_after_building() -> None:
    """The per-row losses then have no scalar to seed the gradient with (cross_entropy raised from inside
    Dynamo before): fused mode's Function runs instead, and the gradient for a per-row grad_out is torch's."""
    module = _inf("cross_entropy")
    x = torch.randn(16, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (16,))
    torch.testing.assert_close(module(x, y), F.cross_entropy(x, y))
    module.reduction = "none"
    seed = torch.randn(16, dtype=torch.float64)
    out, ref = module(x, y), F.cross_entropy(x, y, reduction="none")
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, seed)[0], torch.autograd.grad(ref, x, seed)[0])
