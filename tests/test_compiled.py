"""mode="compiled": same values and gradients as eager, compile time reported, state and class kept."""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl import compiled

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
