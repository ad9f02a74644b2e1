"""`lossdsl.verify`: the symbolic gradient against autograd and central finite differences, in float64.

Three independent ways to the same number: the compiled symbolic gradient (`Loss.grad` → generated
source), autograd through the compiled module, and central differences of the module's value. Errors
are normwise (max |a - b| / max |b|) so that a gradient entry near zero does not dominate; symbolic vs
autograd must agree to `rtol` (rounding only), either vs finite differences to `fd_rtol` (truncation).

Inputs are drawn by kind (`lossdsl.strategies`), then fitted to what the loss can take, since a check on
values a loss refuses or flattens checks nothing: an `fn` input is the stand-in `lossdsl bench` uses
(`quickbench.stand_in`: the pairwise distance when called with two tensors, else tanh); an input the loss
reads only through a clamp from below at a non-negative bound (`max(var, eps)`, eps >= 0: a variance, a
scale) is drawn from the `positive` domain, because below the bound the loss is flat and, near 0, so large
that finite differences of the summed loss drown in its rounding; and the arguments of a builtin that must
agree with one another are drawn to agree (`FITS`: CTC's lengths count frames and labels that exist, and
every target fits its frames).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp
import torch

from . import api, ir
from .codegen import class_name
from .domain import Bounds
from .errors import ParameterError
from .fused import differentiable
from .quickbench import stand_in
from .strategies import sample, sample_inputs

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
    error: str | None = None  # the symbolic gradient could not be built or run: a failure, reported


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
            if c.error:
                rows.append(f"  {c.name:<12} {'not measured':>16}  FAIL  symbolic gradient failed: {c.error[:160]}")
                continue
            rows.append(f"  {c.name:<12} {c.abs_autograd:16.3e} {c.rel_autograd:10.3e} {c.abs_fd:19.3e} "
                        f"{c.rel_fd:10.3e}  {'ok' if c.passed else 'FAIL'}{note}")
        return "\n".join(rows)


def verify(loss: api.Loss | str, *, trials: int = 3, seed: int = 0, reduction: str | None = None,
           rtol: float = 1e-9, fd_rtol: float = 1e-5, fd_step: float = 1e-6, fd_points: int = 48,
           inputs: dict[str, torch.Tensor] | None = None, fns: dict | None = None, **params) -> Report:
    """Check the symbolic gradient of `loss` (a Loss or its text) on random inputs drawn by kind.

    `inputs` fixes the inputs (e.g. drawn by `lossdsl.strategies.inputs` in a hypothesis test), else `trials`
    (at least 1) random draws are fitted to the loss (see the module's docstring); `fns` gives the callables
    of `fn` inputs (default: `quickbench.stand_in`'s); `params` are passed to compile.
    """
    if inputs is None:
        check_trials(trials)
    loss = api.parse(loss, params=list(params)) if isinstance(loss, str) else loss
    gen = torch.Generator().manual_seed(seed)
    report = Report(loss.name, [InputCheck(n) for n in differentiable(loss.ir)])
    fns = fns or {}
    for _ in range(1 if inputs is not None else trials):
        drawn, sizes = draw(loss, gen, params) if inputs is None else (inputs, {})
        keywords = {k: v for k, v in sizes.items() if k in loss.axis_keywords() and k not in params}
        module = loss.compile(reduction=reduction, **params, **keywords).double()
        args = [(fns[i.name] if i.name in fns else stand_in(loss, i.name)) if i.kind == "fn" else drawn[i.name]
                for i in loss.inputs]
        _check(loss, module, args, report, reduction, rtol, fd_rtol, fd_step, fd_points, gen)
        report.trials += 1
    return report


def check_trials(trials: object) -> None:
    """No draw checks nothing, and a report of none would still read PASS."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ParameterError(f"trials must be a whole number of at least 1 (no draw checks nothing), got {trials!r}")


# ---- drawing inputs the loss can take
def draw(loss: api.Loss, gen: torch.Generator, params: dict) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Inputs by kind (strategies.sample_inputs), fitted to the loss: clamped inputs positive, builtins' own
    agreements kept (the module's docstring says why)."""
    calls = [(c, FITS[str(c.args[0])]) for c in loss.ir.expr.atoms(ir.FnCall) if str(c.args[0]) in FITS]
    sizes: dict[str, int] = {}
    for call, fit in calls:
        fit.sizes(loss.ir, call.args[1], sizes)
    drawn, sizes = sample_inputs(loss.ir, gen, sizes=sizes, params=params)
    for name in clamped_below(loss.ir):
        drawn[name] = sample("positive", tuple(drawn[name].shape), gen)
    for call, fit in calls:
        fit.draw(loss.ir, call.args[1], drawn, params, gen)
    return drawn, sizes


def clamped_below(loss: ir.LossIR) -> list[str]:
    """Real inputs the loss reads only as an argument of max(x, b...) with every other argument >= 0 (its
    bounds from kinds and constraints, lossdsl.domain): all values under the bound are the bound, so the
    loss's own domain is the positive reals."""
    bounds, out = Bounds(loss), []
    for i in loss.inputs:
        if i.kind not in ("real", "logits"):  # the kinds whose domain reaches below 0
            continue
        clamps = [m for m in loss.expr.atoms(sp.Max) if any(ir.is_tensor(a, i.name) for a in m.args)
                  and all(bounds(a)[0] >= 0 for a in m.args if not ir.is_tensor(a, i.name))]
        if clamps and not ir.reads(loss.expr.xreplace({m: sp.Dummy() for m in clamps}), i.name):
            out.append(i.name)
    return out



@dataclass(frozen=True)
class Fit:
    """How verify draws the arguments of a builtin that must agree with one another: `sizes` presets axis
    sizes before the inputs are drawn, `draw` redraws inputs after; both get the call's argument tuple."""

    sizes: Callable[[ir.LossIR, tuple, dict], None]
    draw: Callable[[ir.LossIR, tuple, dict, dict, torch.Generator], None]


def _ctc_sizes(loss: ir.LossIR, args: tuple, sizes: dict) -> None:
    """Frames enough for the longest target: 2 S + 1 with S at most 4, strategies' default axis size."""
    frames = args[0].indices[0] if isinstance(args[0], sp.Indexed) else None
    if frames is not None:
        sizes[loss.axis_of.get(str(frames), str(frames))] = 2 * 4 + 1


def _ctc_draw(loss: ir.LossIR, args: tuple, drawn: dict, params: dict, gen: torch.Generator) -> None:
    """Targets are labels other than the blank; target_lengths <= S and (T - 1) / 2, input_lengths from
    2 target_lengths (room for a blank between repeats) to T: every sample has an alignment, a finite loss."""
    names = [a.base.name if isinstance(a, sp.Indexed) else None for a in args[:4]]
    if None in names or any(n not in drawn for n in names):
        return
    lp, targets, il, tl = names
    frames, classes = drawn[lp].shape[0], drawn[lp].shape[2]
    blank = _int_value(loss, args[4], params)
    if classes < 2 or not 0 <= blank < classes or drawn[targets].dim() != 2:
        return
    label = torch.randint(0, classes - 1, drawn[targets].shape, generator=gen)
    drawn[targets] = label + (label >= blank).long()
    most = min(drawn[targets].shape[1], (frames - 1) // 2)
    drawn[tl] = torch.randint(0, most + 1, drawn[tl].shape, generator=gen)
    low = (2 * drawn[tl]).clamp(min=1)
    drawn[il] = low + (torch.rand(drawn[il].shape, generator=gen, dtype=torch.float64)
                       * (frames - low + 1)).long().clamp(max=frames - low)


def _int_value(loss: ir.LossIR, e: sp.Basic, params: dict) -> int:
    """An int argument of a builtin: a literal, or a parameter's value (given, else its default)."""
    if e.is_number:
        return int(e)
    p = loss.param(str(e))
    return int(params.get(str(e), p.default if p is not None and p.default is not None else 0))


FITS: dict[str, Fit] = {"ctc_nll": Fit(_ctc_sizes, _ctc_draw)}


# ---- the three gradients
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
        c = report[name]
        try:
            g = loss.grad(name, reduction=reduction)
            c.via_autograd = g.via_autograd
            sym = _symbolic(g, module, args)
        except Exception as err:  # a bug in lossdsl's gradient: the check's finding, not a crash of the check
            c.error, c.passed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", False
            continue
        a = torch.zeros_like(t) if a is None else a
        fd_idx, fd = _finite_differences(module, args, loss, name, t, step, points, gen)
        _worst(c, "autograd", sym, a)
        _worst(c, "fd", sym.flatten()[fd_idx], fd)
        c.passed = c.passed and c.rel_autograd <= rtol and c.rel_fd <= fd_rtol


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
