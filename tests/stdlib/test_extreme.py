"""Every tensor stdlib loss on extreme inputs in every dtype: no NaN or inf in value or gradient.

The standard of issues 4 and 6: logits of +-1e4, probabilities of exactly 0 and 1 (the stability report's
"extreme" draw), and all-zero inputs (zero embeddings, empty masks, zero errors), in float64, float32,
float16 and bfloat16. A draw outside a loss's domain (a negative KL target) is NaN in float64 too; only
elements whose float64 result is finite and within the dtype's range must be finite (test_cuda.py's rule),
and in float64 the all-zero draw, which is inside every domain, must be finite everywhere.
"""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl import stability

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# CTC's loss is +inf, correctly, where no alignment of the drawn labels fits the drawn lengths; torch's
# zero_infinity=True is the setting under which it must be finite
OPTIONS = {"ctc_loss": {"zero_infinity": True}, "ctc_loss_mean": {"zero_infinity": True}}
NAMES = [n for n in lossdsl.stdlib.names() if all(i.kind != "fn" for i in lossdsl.stdlib.get(n).ir.inputs)]


def draw(name: str, case: str) -> tuple[list[torch.Tensor], dict[str, int]]:
    """The report's extreme draw, or every floating input set to 0 (integer labels kept)."""
    loss = lossdsl.stdlib.get(name)
    values, sizes = stability.make_inputs(loss.ir, stability.SCALES["extreme"], seed=3, size=4)
    args = [values[i.name] for i in loss.ir.inputs]
    if case == "zero":
        args = [torch.zeros_like(a) if a.is_floating_point() else a for a in args]
    return args, {a: n for a, n in sizes.items() if a not in loss.ir.sizes_from}


def run(name: str, args: list[torch.Tensor], sizes: dict[str, int], dtype: torch.dtype):
    """Elements (reduction none) and the gradient of their sum w.r.t. every floating input and parameter."""
    torch.manual_seed(0)
    options = OPTIONS.get(name, {})
    module = lossdsl.stdlib.get(name).compile(**sizes, **options, validate=False, reduction="none")
    xs = [a.to(dtype).requires_grad_(True) if a.is_floating_point() else a for a in args]
    out = module(*xs)
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    wrt += [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.float().sum(), wrt, allow_unused=True) if out.requires_grad else []
    return out.detach().double(), [g.double() if g is not None else torch.zeros(w.shape, dtype=torch.float64)
                                   for g, w in zip(grads, wrt, strict=False)]


def representable(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.isfinite(ref) & (ref.abs() < torch.finfo(dtype).max)


@pytest.mark.parametrize("case", ["extreme", "zero"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_give_finite_values_and_gradients(name: str, dtype: torch.dtype, case: str) -> None:
    args, sizes = draw(name, case)
    ref, ref_grads = run(name, args, sizes, torch.float64)
    if case == "zero":
        assert torch.isfinite(ref).all(), f"{name}: non-finite float64 value at all-zero inputs: {ref}"
    if torch.isfinite(ref).all():  # a finite loss has a finite gradient
        for k, r in enumerate(ref_grads):
            assert torch.isfinite(r).all(), f"{name}: non-finite float64 gradient {k} at {case} inputs: {r}"
    out, grads = run(name, args, sizes, dtype)
    assert torch.isfinite(out[representable(ref, dtype)]).all(), f"{name}: non-finite value {out}"
    for k, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert torch.isfinite(g[representable(r, dtype)]).all(), f"{name}: non-finite gradient {k}: {g}"


def _gradients(name: str, args: list[torch.Tensor], sizes: dict[str, int], mode: str) -> list[torch.Tensor]:
    module = lossdsl.stdlib.get(name).compile(**sizes, **OPTIONS.get(name, {}), validate=False, reduction="none",
                                              mode=mode)
    xs = [a.float().requires_grad_(True) if a.is_floating_point() else a for a in args]
    out = module(*xs)
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    if not out.requires_grad:  # piecewise constant (pairwise_distance_count's [d != 0]): zero gradients
        return [torch.zeros_like(w) for w in wrt]
    grads = torch.autograd.grad(out.sum(), wrt, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]


@pytest.mark.parametrize("case", ["extreme", "zero"])
@pytest.mark.parametrize("name", NAMES)
def test_fused_gradients_are_finite_where_autograds_are(name: str, case: str) -> None:
    """Fused mode's symbolic backward on the same draws (float32): finite wherever autograd mode's is, and
    equal there. It was not: x / |x| at identical contrastive and triplet embeddings was 0/0 (torch's norm
    has 0 there), and weighted_bce's backward added a full-size term in place into a 0-d one."""
    args, sizes = draw(name, case)
    eager, fused = _gradients(name, args, sizes, "eager"), _gradients(name, args, sizes, "fused")
    for k, (a, b) in enumerate(zip(eager, fused, strict=True)):
        finite = torch.isfinite(a)
        assert torch.isfinite(b[finite]).all(), f"{name}: fused gradient {k} not finite where eager's is: {b}"
        torch.testing.assert_close(b[finite & torch.isfinite(b)], a[finite & torch.isfinite(b)], rtol=1e-3,
                                   atol=1e-4)
