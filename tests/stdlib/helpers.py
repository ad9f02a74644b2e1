"""Helpers for the stdlib tests: compare a compiled loss with a plain-torch reference (value and gradient,
float64) and check finiteness on extreme inputs in low precision."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

LOW = [torch.float32, torch.float16, torch.bfloat16]
low_precision = pytest.mark.parametrize("dtype", LOW, ids=["f32", "f16", "bf16"])


def leaves(inputs: Sequence, dtype: torch.dtype | None = None) -> list:
    """Fresh leaf copies: floating tensors (cast to dtype) require grad; the rest pass through."""
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            out.append(x.detach().to(dtype or x.dtype).clone().requires_grad_(True))
        else:
            out.append(x)
    return out


def _floats(xs: Sequence) -> list[torch.Tensor]:
    return [x for x in xs if isinstance(x, torch.Tensor) and x.is_floating_point()]


def check(module: Callable, ref: Callable, *inputs, rtol: float = 1e-9, atol: float = 1e-11) -> torch.Tensor:
    """The module and the reference agree in value and in gradient w.r.t. every floating input (float64)."""
    mine, theirs = leaves(inputs), leaves(inputs)
    out, expected = module(*mine), ref(*theirs)
    torch.testing.assert_close(out, expected.to(out.dtype), rtol=rtol, atol=atol)
    weights = torch.randn_like(out)  # a random cotangent also checks reduction="none" outputs
    g1 = torch.autograd.grad((out * weights).sum(), _floats(mine), allow_unused=True)
    g2 = torch.autograd.grad((expected * weights).sum(), _floats(theirs), allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    return out


def assert_finite(module: Callable, *inputs, dtype: torch.dtype) -> torch.Tensor:
    """Value and gradients (inputs and learnable parameters) are finite with the inputs cast to dtype."""
    xs = leaves(inputs, dtype)
    out = module(*xs)
    assert torch.isfinite(out).all(), f"non-finite value {out}"
    params = module.parameters() if isinstance(module, torch.nn.Module) else []
    wrt = _floats(xs) + [p for p in params if p.requires_grad]
    for g in torch.autograd.grad(out.float().sum(), wrt, allow_unused=True):
        assert g is None or torch.isfinite(g).all(), f"non-finite gradient {g}"
    return out
