"""The stability report: which rewrite rules fired and where, and how many bits the compiled loss and its
gradient lose, naive versus rewritten, per dtype, on sampled and on extreme inputs.

Error is measured in bits: log2(1 + |computed - reference| / ulp(reference)) in the dtype computed in, where
the reference is the *naive* formula evaluated by `mpeval` in mpmath at a precision raised until it is
exact to 20 digits, at exactly the input values the module received. 0.6 bits is a correctly rounded result;
a NaN or inf where the reference is finite counts as inf and is reported as non-finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mpmath
import numpy as np
import sympy as sp
import torch

from . import ir, rewrite
from .codegen import class_name, generate, py_names
from .mpeval import Evaluator, UnsupportedError, converged, elements

mp = mpmath.mp
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}
FORMAT = {torch.float64: (52, -1022), torch.float32: (23, -126), torch.float16: (10, -14), torch.bfloat16: (7, -126)}
COMPUTED_IN = {torch.float16: torch.float32, torch.bfloat16: torch.float32}  # codegen's _compute_dtype
SCALES = {"sampled": 3.0, "extreme": 1e4}
SIZE = 2  # the size of every axis in the report's inputs (a *group: 2 too)


def ulp(ref: object, dtype: torch.dtype) -> object:
    """The spacing of `dtype` at |ref| (subnormal spacing below the normal range)."""
    mant, emin = FORMAT[dtype]
    e = emin if ref == 0 else max(int(mp.floor(mp.log(abs(ref), 2))), emin)
    return mp.ldexp(1, e - mant)


def rounds_to_inf(ref: object, dtype: torch.dtype) -> bool:
    """|ref| beyond the largest finite value of dtype (by half an ulp): inf is its correct rounding."""
    mant, _ = FORMAT[dtype]
    return abs(ref) >= mp.mpf(torch.finfo(dtype).max) * (1 + mp.ldexp(1, -mant - 1))


def bits(got: float, ref: object, dtype: torch.dtype) -> float:
    if mp.isfinite(ref) and rounds_to_inf(ref, dtype):
        return 0.0 if got == (math.inf if ref > 0 else -math.inf) else math.inf
    if mp.isnan(ref) or mp.isinf(ref):
        same = (math.isnan(got) and mp.isnan(ref)) or (not mp.isnan(ref) and got == ref)
        return 0.0 if same else math.inf
    if not math.isfinite(got):
        return math.inf
    with mp.workdps(30):
        return float(mp.log(1 + abs(mp.mpf(got) - ref) / ulp(ref, dtype), 2))


@dataclass
class Measure:
    """Bits lost over a set of values: mean over the finite ones, worst, and how many were NaN or inf."""

    mean: float
    worst: float
    nonfinite: int
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Measure:
        finite = [v for v in values if math.isfinite(v)]
        return cls(float(np.mean(finite)) if finite else math.nan, max(finite, default=math.nan),
                   len(values) - len(finite), len(values))

    def __str__(self) -> str:
        bad = f" {self.nonfinite}/{self.n} non-finite" if self.nonfinite else ""
        return f"{self.mean:5.1f} avg {self.worst:5.1f} max{bad}"


@dataclass
class Row:
    dtype: str
    inputs: str  # "sampled" or "extreme"
    version: str  # "naive" or "rewritten"
    value: Measure
    grad: Measure | None


@dataclass
class StabilityReport:
    """What `Loss.stability_report()` returns; str() is the readable table."""

    name: str
    fired: list[dict]
    rows: list[Row] = field(default_factory=list)
    skipped: str | None = None

    def row(self, dtype: str, inputs: str, version: str) -> Row | None:
        return next((r for r in self.rows if (r.dtype, r.inputs, r.version) == (dtype, inputs, version)), None)

    def __str__(self) -> str:
        lines = [f"loss {self.name}"]
        lines += [f"  rule {n['rule']:<22} in {n['where']}: {n['before'][:70]}" for n in self.fired] or [
            "  no rule fired"]
        if self.skipped:
            return "\n".join([*lines, f"  error not measured: {self.skipped}"])
        lines.append(f"  {'dtype':<9}{'inputs':<9}{'version':<10}{'value bits':<34}gradient bits")
        for r in self.rows:
            lines.append(f"  {r.dtype:<9}{r.inputs:<9}{r.version:<10}{r.value!s:<34}{r.grad or '-'!s}")
        return "\n".join(lines)


# ---- inputs
def _sizes(loss: ir.LossIR, size: int) -> dict[str, int]:
    """`size` for every axis, more where the formula reads a constant position (box coordinates b[n, 3])."""
    out = {loss.axis_of.get(a, a): (2 if a.startswith("*") else size) for a in loss.axis_of}
    for x in loss.expr.atoms(sp.Indexed):
        decl = loss.input(x.base.name) or loss.param(x.base.name)
        for axis, slot in zip(decl.axes or (), x.indices, strict=False):
            if slot.is_Integer:
                canon = loss.axis_of.get(axis, axis)
                out[canon] = max(out[canon], int(slot) + 1)
    return out


def _shape(loss: ir.LossIR, axes: tuple[str, ...] | None, sizes: dict[str, int], size: int) -> tuple[int, ...]:
    return tuple(sizes[loss.axis_of.get(a, a)] for a in axes) if axes is not None else (4 * size,)


def make_inputs(loss: ir.LossIR, scale: float, seed: int = 0, size: int = 3) -> tuple[dict, dict[str, int]]:
    """Inputs by kind: reals ~ N(0, scale), probabilities in [0, 1] with exact 0 and 1 among them, labels."""
    g = torch.Generator().manual_seed(seed)
    sizes = _sizes(loss, size)
    out: dict[str, torch.Tensor] = {}
    for i in loss.inputs:
        if i.kind == "fn":
            raise UnsupportedError("fn inputs")
        shape = _shape(loss, i.axes, sizes, size)
        out[i.name] = _draw(i, shape, scale, g, sizes, loss)
    return out, sizes


def _draw(i: ir.Input, shape: tuple[int, ...], scale: float, g: torch.Generator, sizes: dict, loss: ir.LossIR):
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if i.kind == "index":
        return torch.randint(0, sizes[loss.axis_of.get(i.kind_arg, i.kind_arg)], shape, generator=g)
    if i.kind in ("int", "count"):
        return torch.randint(0, 4, shape, generator=g)
    if i.kind == "binary":
        return (u < 0.5).double()
    if i.kind == "sign":
        return torch.where(u < 0.5, -1.0, 1.0).double()
    if i.kind == "prob":
        return u.masked_fill(u < 0.1, 0.0).masked_fill(u > 0.9, 1.0) if scale > SCALES["sampled"] else u
    if i.kind == "positive":
        return 0.05 + 3 * u
    if scale > SCALES["sampled"]:  # magnitudes from 1e-3 to `scale`, both signs
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        return sign * 10 ** (-3 + (math.log10(scale) + 3) * u)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


# ---- the two sides
def _module(loss_ir: ir.LossIR, params: dict) -> torch.nn.Module:
    from .api import _build_class

    py = py_names(loss_ir)
    return _build_class(generate(loss_ir), class_name(loss_ir.name))(**{py[k]: v for k, v in params.items()},
                                                                      reduction="none")


def _float_names(loss: ir.LossIR) -> list[str]:
    return [i.name for i in loss.inputs if not i.is_integral and i.kind not in ("binary", "sign")]


def computed(loss_ir: ir.LossIR, params: dict, inputs: dict, dtype: torch.dtype) -> tuple[list[float], dict]:
    """The module's elements (reduction none) and d(sum)/d(input) for the real-valued inputs, in float64."""
    xs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    for name in _float_names(loss_ir):
        xs[name] = xs[name].detach().requires_grad_(True)
    out = _module(loss_ir, params)(*xs.values())
    grads = {}
    wrt = [xs[n] for n in _float_names(loss_ir)]
    if wrt and out.requires_grad:
        got = torch.autograd.grad(out.sum(), wrt, allow_unused=True)
        grads = {n: (torch.zeros_like(xs[n]) if d is None else d).double().flatten().tolist()
                 for n, d in zip(_float_names(loss_ir), got, strict=True)}
    return out.detach().double().flatten().tolist(), grads


def _rounded_params(loss: ir.LossIR, params: dict, dtype: torch.dtype) -> dict[str, object]:
    """Parameters as the module sees them: its float64 buffers cast to the dtype it computes in."""
    out: dict[str, object] = {}
    cdt = COMPUTED_IN.get(dtype, dtype)
    for p in loss.params:
        v = params.get(p.name, p.default)
        if p.axes or isinstance(v, torch.Tensor):
            continue  # tensors: `_param_arrays`
        if p.type in ("int", "bool"):
            out[p.name] = mp.mpf(int(v))
        else:
            out[p.name] = mp.mpf(torch.tensor(float(v), dtype=cdt).double().item())
    return out


def reference(loss: ir.LossIR, params: dict, inputs: dict, dtype: torch.dtype, grad: bool,
              oracle: ir.LossIR | None = None) -> tuple[list, dict, int]:
    """The naive formula in mpmath at the inputs the module received (rounded to dtype), and d(sum)/d(input).

    With `oracle` (the rewritten formula) the precision rises until the naive value agrees with the oracle's
    to 20 digits; values that still disagree at 2560 digits (1 - sigmoid(3e4) needs 13000) are taken from
    the oracle and counted in the third result."""
    values = _values_fn(loss, params, inputs, dtype)
    other = _values_fn(oracle, params, inputs, dtype) if oracle is not None and oracle.expr != loss.expr else None
    ref, fallbacks = _settle(lambda which: _pick(values(), which), other and (lambda which: _pick(other(), which)))
    grads = {}
    for name in _float_names(loss) if grad else []:
        count = inputs[name].numel()
        grads[name], more = _settle(lambda which, n=name, c=count: _derivatives(values, n, c, which),
                                    other and (lambda which, n=name, c=count: _derivatives(other, n, c, which)))
        fallbacks += more
    return ref, grads, fallbacks


def _pick(values: list, which: list[int] | None) -> list:
    return values if which is None else [values[k] for k in which]


def _derivatives(values, name: str, count: int, which: list[int] | None) -> list:
    """d(sum of the loss)/d(input[k]) by the complex step: Im f(x + ih) / h has no cancellation, so each
    derivative is exact to the working precision however small it is next to the loss."""
    h = mp.mpf(10) ** (-mp.dps - 30)
    return [mp.fsum(values((name, k, mp.mpc(0, h)))).imag / h for k in (range(count) if which is None else which)]


def _settle(compute, oracle_compute) -> tuple[list, int]:
    if oracle_compute is None:
        return converged(compute)[0], 0
    oracle, _ = converged(oracle_compute)  # the rewritten formula, settled by itself (usually at 40 digits)
    got, ok = converged(compute, oracle)
    return [g if good else o for g, o, good in zip(got, oracle, ok, strict=True)], ok.count(False)


def _param_arrays(loss: ir.LossIR, params: dict, dtype: torch.dtype, sizes: dict) -> dict[str, np.ndarray]:
    """Shaped parameters (a per-class weight, a learnable vector) as the module sees them."""
    out = {}
    for p in loss.params:
        if not p.axes:
            continue
        shape = tuple(sizes[loss.axis_of.get(a, a)] for a in p.axes)
        v = torch.as_tensor(params.get(p.name, p.default), dtype=torch.float64)
        v = v.to(COMPUTED_IN.get(dtype, dtype)).double().expand(shape)
        out[p.name] = np.array([mp.mpf(x) for x in v.flatten().tolist()], dtype=object).reshape(shape)
    return out


def _values_fn(loss: ir.LossIR, params: dict, inputs: dict, dtype: torch.dtype):
    """values(delta) -> every loss element in mpmath, with input `delta = (name, k, h)` nudged by h."""
    sizes = {**_sizes(loss, SIZE), **_read_sizes(loss, inputs)}
    exact = {k: (v.to(dtype).double() if v.is_floating_point() else v) for k, v in inputs.items()}
    broadcast = [i.name for i in loss.inputs if i.axes is None]
    if broadcast and len(broadcast) != len(loss.inputs):
        raise UnsupportedError("inputs with and without declared axes together")

    def values(delta: tuple[str, int, object] | None = None) -> list:
        arrays = {}
        for i in loss.inputs:
            t = exact[i.name]
            a = np.array([mp.mpf(x) if t.is_floating_point() else int(x) for x in t.flatten().tolist()],
                         dtype=object)
            if delta is not None and delta[0] == i.name:
                a[delta[1]] += delta[2]
            arrays[i.name] = a.reshape(_flat_shape(loss, i, t))
        arrays.update(_param_arrays(loss, params, dtype, sizes))
        ev = Evaluator(loss, arrays, _rounded_params(loss, params, dtype), sizes)
        return elements(ev, loss.expr, loss.free, broadcast)

    return values


def _flat_shape(loss: ir.LossIR, i: ir.Input, t: torch.Tensor) -> tuple[int, ...]:
    """The shape the generated code works on: a `*group` is one flattened axis."""
    if i.axes is None:
        return tuple(t.shape)
    g = next((k for k, a in enumerate(i.axes) if a.startswith("*")), None)
    if g is None:
        return tuple(t.shape)
    end = t.dim() - (len(i.axes) - g - 1)
    return (*t.shape[:g], int(np.prod(t.shape[g:end])), *t.shape[end:])


def _read_sizes(loss: ir.LossIR, inputs: dict) -> dict[str, int]:
    out = {}
    for i in loss.inputs:
        if i.axes is not None and i.name in inputs:
            for a, n in zip(i.axes, _flat_shape(loss, i, inputs[i.name]), strict=True):
                out[loss.axis_of.get(a, a)] = n
    return out


# ---- measuring
def measure(loss_ir: ir.LossIR, naive_ir: ir.LossIR, params: dict, inputs: dict, dtypes: list[torch.dtype],
            grad: bool = True) -> dict[tuple[torch.dtype, str], tuple[Measure, Measure | None]]:
    """Bits lost by the naive and the rewritten module against one mpmath reference, per dtype. The inputs
    must be exact in every dtype (report() draws them in float16) so that one reference serves all."""
    ref, ref_grads, _ = reference(naive_ir, params, inputs, dtypes[0], grad, oracle=loss_ir)
    out = {}
    for dtype in dtypes:
        for version, lir in (("naive", naive_ir), ("rewritten", loss_ir)):
            vals, grads = computed(lir, params, inputs, dtype)
            value = Measure.of([bits(v, r, dtype) for v, r in zip(vals, ref, strict=True)])
            g = None
            if grad and ref_grads:
                g = Measure.of([bits(v, r, dtype) for n in ref_grads
                                for v, r in zip(grads.get(n, []), ref_grads[n], strict=True)])
            out[dtype, version] = (value, g)
    return out


def _exact_in(t: torch.Tensor, dtypes: list[torch.dtype]) -> torch.Tensor:
    """t rounded to the narrowest of dtypes, so that it is exact in all of them."""
    if not t.is_floating_point():
        return t
    for dt in sorted(dtypes, key=lambda d: torch.finfo(d).eps, reverse=True)[:1]:
        t = t.to(dt).double()
    return t


def report(loss, dtypes: tuple[str, ...] = ("float32", "float16"), grad: bool = True,
           **params) -> StabilityReport:
    """The stability report of a `Loss` (rules fired, bits lost naive vs rewritten per dtype and input set)."""
    loss_ir = loss.ir
    fired = [n for n in loss_ir.notes if n.get("pass") == rewrite.PASS_NAME and n.get("rule")]
    rep = StabilityReport(loss_ir.name, fired)
    try:
        naive = rewrite.naive(loss_ir)
        types = [DTYPES[d] for d in dtypes]
        for inputs_kind, scale in SCALES.items():
            inputs, _ = make_inputs(loss_ir, scale, size=SIZE)
            inputs = {k: _exact_in(v, types) for k, v in inputs.items()}
            for (dt, version), (value, g) in measure(loss_ir, naive, params, inputs, types, grad).items():
                rep.rows.append(Row(NAMES[dt], inputs_kind, version, value, g))
    except Exception as err:  # a report line, not a crash, for what the reference cannot model
        rep.skipped = f"{type(err).__name__}: {err}"[:160]
    return rep


def check_file(path: str | Path) -> str:
    """`lossdsl check FILE`: the stability report of every loss in a .loss file, as text."""
    from .api import load

    return "\n\n".join(str(report(loss)) for loss in load(Path(path)).values())
