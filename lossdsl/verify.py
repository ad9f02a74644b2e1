"""`lossdsl.verify`: the symbolic gradient against autograd and central finite differences, in float64.

Three independent ways to the same number: the compiled symbolic gradient (`Loss.grad` → generated
source), autograd through the compiled module, and central differences of the module's value. Errors
are normwise (max |a - b| / max |b|) so that a gradient entry near zero does not dominate; symbolic vs
autograd must agree to `rtol` (rounding only), either vs finite differences to `fd_rtol` (truncation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import api
from .codegen import class_name
from .fused import differentiable
from .strategies import sample_inputs

FLOOR = {"autograd": 1e-6, "fd": 1e-6}  # below this gradient scale errors count as absolute (atol = rtol * floor)


@dataclass
class InputCheck:
    """Worst errors over the trials for one input (or learnable parameter)."""

    name: str
    abs_autograd: float = 0.0
    rel_autograd: float = 0.0
    abs_fd: float = 0.0
    rel_fd: float = 0.0
    via_autograd: bool = False
    passed: bool = True


@dataclass
class Report:
    loss: str
    checks: list[InputCheck] = field(default_factory=list)
    trials: int = 0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def __getitem__(self, name: str) -> InputCheck:
        return next(c for c in self.checks if c.name == name)

    def __str__(self) -> str:
        rows = [f"verify {self.loss}: {'PASS' if self.passed else 'FAIL'} ({self.trials} random draws, float64)",
                f"  {'input':<12} {'vs autograd abs':>16} {'rel':>10} {'vs finite diff abs':>19} {'rel':>10}"]
        for c in self.checks:
            note = "  (gradient through autograd)" if c.via_autograd else ""
            rows.append(f"  {c.name:<12} {c.abs_autograd:16.3e} {c.rel_autograd:10.3e} {c.abs_fd:19.3e} "
                        f"{c.rel_fd:10.3e}  {'ok' if c.passed else 'FAIL'}{note}")
        return "\n".join(rows)


def verify(loss: api.Loss | str, *, trials: int = 3, seed: int = 0, reduction: str | None = None,
           rtol: float = 1e-9, fd_rtol: float = 1e-5, fd_step: float = 1e-6, fd_points: int = 48,
           inputs: dict[str, torch.Tensor] | None = None, fns: dict | None = None, **params) -> Report:
    """Check the symbolic gradient of `loss` (a Loss or its text) on random inputs drawn by kind.

    `inputs` fixes the inputs (e.g. drawn by `lossdsl.strategies.inputs` in a hypothesis test); `fns`
    gives the callables of `fn` inputs (default: tanh); `params` are passed to compile.
    """
    loss = api.parse(loss, params=list(params)) if isinstance(loss, str) else loss
    gen = torch.Generator().manual_seed(seed)
    report = Report(loss.name, [InputCheck(n) for n in differentiable(loss.ir)])
    for _ in range(1 if inputs is not None else trials):
        drawn, sizes = sample_inputs(loss.ir, gen, params=params) if inputs is None else (inputs, {})
        keywords = {k: v for k, v in sizes.items() if k in loss.axis_keywords() and k not in params}
        module = loss.compile(reduction=reduction, **params, **keywords).double()
        args = [(fns or {}).get(i.name, torch.tanh) if i.kind == "fn" else drawn[i.name] for i in loss.inputs]
        _check(loss, module, args, report, reduction, rtol, fd_rtol, fd_step, fd_points, gen)
        report.trials += 1
    return report


def _tensors(loss: api.Loss, module: torch.nn.Module, args: list) -> dict[str, torch.Tensor]:
    """The differentiable tensors by name: float inputs, then learnable parameters (after a first call)."""
    with torch.no_grad():
        module(*args)  # materialises lazily shaped learnable parameters
    by_name = {i.name: a for i, a in zip(loss.inputs, args, strict=True)}
    by_name.update({p.name: getattr(module, p.name) for p in loss.parameters if p.type == "learnable"})
    return {n: by_name[n] for n in differentiable(loss.ir)}


def _check(loss, module, args, report, reduction, rtol, fd_rtol, step, points, gen) -> None:
    tensors = _tensors(loss, module, args)
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
    call = [leaves.get(i.name, a) for i, a in zip(loss.inputs, args, strict=True)]
    params = {n: leaves[n] for n in leaves if n not in {i.name for i in loss.inputs}}
    value = torch.func.functional_call(module, params, tuple(call)).sum()  # reduction="none": the sum
    auto = torch.autograd.grad(value, list(leaves.values()), allow_unused=True) if value.requires_grad else [
        None] * len(leaves)  # a loss that depends on none of them
    for (name, t), a in zip(tensors.items(), auto, strict=True):
        g = loss.grad(name, reduction=reduction)
        sym = _symbolic(g, module, args)
        a = torch.zeros_like(t) if a is None else a
        fd_idx, fd = _finite_differences(module, args, loss, name, t, step, points, gen)
        c = report[name]
        c.via_autograd = g.via_autograd
        _worst(c, "autograd", sym, a)
        _worst(c, "fd", sym.flatten()[fd_idx], fd)
        c.passed = c.rel_autograd <= rtol and c.rel_fd <= fd_rtol


def _symbolic(g, module: torch.nn.Module, args: list) -> torch.Tensor:
    cls = api._build_class(g.to_source(), class_name(f"{g.loss.name}_grad"))
    with torch.enable_grad():
        return cls.forward(module, *args).detach()


def _finite_differences(module, args, loss, name, t, step, points, gen):
    """Central differences of the module's value at up to `points` random elements of `t`."""
    flat = t.detach().flatten()
    idx = torch.randperm(flat.numel(), generator=gen)[:points]
    out = torch.empty(len(idx), dtype=torch.float64)
    names = [i.name for i in loss.inputs]
    for k, j in enumerate(idx.tolist()):
        vals = []
        for sign in (1, -1):
            bumped = flat.clone()
            bumped[j] += sign * step
            bumped = bumped.reshape(t.shape)
            with torch.no_grad():
                if name in names:
                    call = [bumped if n == name else a for n, a in zip(names, args, strict=True)]
                    vals.append(float(module(*call).sum()))
                else:
                    vals.append(float(torch.func.functional_call(module, {name: bumped}, tuple(args)).sum()))
        out[k] = (vals[0] - vals[1]) / (2 * step)
    return idx, out


def _worst(c: InputCheck, what: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    """Normwise errors; the scale has a floor (finite differences carry ~1e-10 absolute noise)."""
    err = float((got - ref).abs().max()) if got.numel() else 0.0
    scale = max(float(ref.abs().max()), float(got.abs().max())) if ref.numel() else 0.0
    rel = err / max(scale, FLOOR[what])
    if what == "autograd":
        c.abs_autograd, c.rel_autograd = max(c.abs_autograd, err), max(c.rel_autograd, rel)
    else:
        c.abs_fd, c.rel_fd = max(c.abs_fd, err), max(c.rel_fd, rel)
