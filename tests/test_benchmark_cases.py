"""benchmarks/cases*.py: every case's textbook version and built-in compute what the stdlib loss computes.

The benchmark prints ratios between these variants, which mean something only if they are the same loss:
this checks value and gradient in float64 at a small size, for every case, against the eager module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lossdsl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cases import CASES

SIZE = 1 << 12


def _grads(out: torch.Tensor, inputs: tuple) -> list[torch.Tensor | None]:
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    return list(torch.autograd.grad(out, leaves, allow_unused=True))


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_variants_agree_with_the_stdlib_loss(name: str) -> None:
    torch.manual_seed(0)
    case = CASES[name]
    inputs = case.make(SIZE, torch.device("cpu"), torch.float64)
    module = lossdsl.stdlib.get(name).compile(**case.params)
    expected = module(*inputs)
    assert expected.dim() == 0, "a case must give one number (the loss's default reduction)"
    want = _grads(expected, inputs)
    others = {"textbook": case.textbook} | ({"builtin": case.builtin} if case.builtin is not None else {})
    for label, fn in others.items():
        out = fn(*inputs, **case.params)
        torch.testing.assert_close(out, expected, rtol=1e-7, atol=1e-9, msg=lambda m, k=label: f"{k}: {m}")
        for a, b in zip(_grads(out, inputs), want, strict=True):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any()), label
                continue
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=lambda m, k=label: f"{k} gradient: {m}")
