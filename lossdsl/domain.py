"""Interval bounds of IR expressions, from input kinds and parameter constraints.

The rewrite rules' domain preconditions ask questions such as "is this base >= 0 and can it reach 0?" or
"is this denominator a non-negative sum that an empty mask makes 0?". Bounds count floating-point
saturation as reachable: sigmoid(x) reaches 0 and 1 and exp(x) reaches 0, because in float32 they do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import sympy as sp

from . import ir

INF = math.inf
FULL = (-INF, INF)
Interval = tuple[float, float]
KIND_BOUNDS: dict[str, Interval] = {"prob": (0.0, 1.0), "binary": (0.0, 1.0), "count": (0.0, INF),
                                    "index": (0.0, INF), "positive": (5e-324, INF), "sign": (-1.0, 1.0)}


def _mul(a: Interval, b: Interval) -> Interval:
    prods = [0.0 if (x == 0 or y == 0) else x * y for x in a for y in b]
    return min(prods), max(prods)


def _add(a: Interval, b: Interval) -> Interval:
    """-inf + inf is nan in floats; an endpoint that could be either is unbounded on its side."""
    lo, hi = a[0] + b[0], a[1] + b[1]
    return (-INF if math.isnan(lo) else lo), (INF if math.isnan(hi) else hi)


def _exp(v: float) -> float:
    """exp(v): 0 below -700 (saturation, reachable), inf only where float64 overflows (exp(709) is finite)."""
    if v < -700:
        return 0.0
    try:
        return math.exp(v)
    except OverflowError:
        return INF


def _expm1(v: float) -> float:
    """expm1(v), exact for tiny v (exp(v) - 1 rounds 1e-20 to 0 and loses its sign)."""
    if v < -700:
        return -1.0
    try:
        return math.expm1(v)
    except OverflowError:
        return INF


def _log1p(v: float) -> float:
    return -INF if v <= -1 else (INF if v == INF else math.log1p(v))


def _log(v: float) -> float:
    return -INF if v <= 0 else (INF if v == INF else math.log(v))


def _power(b: float, x: float) -> float:
    """b ** x for b >= 0, inf where it overflows (1 / 5e-324 for a `> 0` parameter in a denominator) or
    divides by zero (0 ** -1: the float value is inf)."""
    try:
        return b**x
    except (OverflowError, ZeroDivisionError):
        return INF


def _int_power(b: float, x: float) -> float:
    """b ** x for an integer x > 0 and any sign of b, saturating to +-inf past the float range (100 ** 200)."""
    try:
        return b**x
    except OverflowError:
        return -INF if b < 0 and x % 2 else INF


def _pow(base: Interval, e: sp.Basic, exponent: Interval) -> Interval:
    """base ** e; `exponent` bounds a symbolic e: a base in [0, 1] stays in [0, 1] only for e >= 0 (for
    1 / b^g, e = -g, it is [1, inf))."""
    lo, hi = base
    if not e.is_number:
        if lo >= 0 and hi <= 1 and exponent[0] >= 0:
            return 0.0, 1.0
        return (0.0, INF) if lo >= 0 else FULL
    x = float(e)
    if x.is_integer() and x > 0:
        ends = [_int_power(lo, x), _int_power(hi, x)]
        if x % 2 == 0 and lo <= 0 <= hi:
            return 0.0, max(ends)
        return min(ends), max(ends)
    if lo < 0:
        return FULL
    if x > 0:
        return _power(lo, x), _power(hi, x) if hi < INF else INF
    return (_power(hi, x) if hi < INF else 0.0, INF if lo == 0 else _power(lo, x))


def _sum_like(body: Interval) -> Interval:
    lo, hi = body
    return (0.0 if lo >= 0 else -INF, 0.0 if hi <= 0 else INF)


FUNCTIONS: dict[type, Callable[[Interval], Interval]] = {
    sp.exp: lambda b: (_exp(b[0]), _exp(b[1])),
    sp.log: lambda b: (_log(b[0]), _log(b[1])),
    ir.log1p: lambda b: (_log1p(b[0]), _log1p(b[1])),
    ir.expm1: lambda b: (_expm1(b[0]), _expm1(b[1])),
    ir.sigmoid: lambda b: (0.0, 1.0),
    ir.logsigmoid: lambda b: (-INF, 0.0),
    ir.softplus: lambda b: (0.0, INF),
    ir.logcosh: lambda b: (0.0, INF),
    ir.relu: lambda b: (max(b[0], 0.0), max(b[1], 0.0)),
    sp.Abs: lambda b: (0.0 if b[0] <= 0 <= b[1] else min(abs(b[0]), abs(b[1])), max(abs(b[0]), abs(b[1]))),
    sp.tanh: lambda b: (-1.0, 1.0), sp.erf: lambda b: (-1.0, 1.0), sp.sin: lambda b: (-1.0, 1.0),
    sp.cos: lambda b: (-1.0, 1.0), sp.cosh: lambda b: (1.0, INF), sp.sign: lambda b: (-1.0, 1.0),
}


class Bounds:
    """Bounds of sub-expressions of one loss (memoised)."""

    def __init__(self, loss: ir.LossIR) -> None:
        self.loss = loss
        self.memo: dict[sp.Basic, Interval] = {}

    def maybe_empty(self, e: ir._Reduction) -> Interval:
        """A conditional max/min/logsumexp (max_{k != n}) may range over nothing, one sample: its value is
        the identity then, -inf for max and logsumexp, +inf for min, and the bounds include it."""
        lo, hi = self(e.body)
        if isinstance(e, ir.Min_):
            return lo, INF
        return -INF, (hi if isinstance(e, ir.Max_) else INF)

    def __call__(self, e: sp.Basic) -> Interval:
        if e not in self.memo:
            self.memo[e] = self._bounds(e)
        return self.memo[e]

    def leaf(self, name: str) -> Interval:
        inp = self.loss.input(name)
        if inp is not None:
            return KIND_BOUNDS.get(inp.kind, FULL)
        p = self.loss.param(name)
        if p is None or p.constraint is None:
            return FULL
        op, b = p.constraint
        above = math.nextafter(b[0], INF)  # `> 0` keeps a denominator away from 0
        return {"in": (b[0], b[-1]), ">": (above, INF), ">=": (b[0], INF), "<": (-INF, b[0]),
                "<=": (-INF, b[0])}.get(op, FULL)

    def _bounds(self, e: sp.Basic) -> Interval:
        if e.is_number:
            v = complex(e)
            return (v.real, v.real) if v.imag == 0 else FULL
        if isinstance(e, sp.Indexed):
            return self.leaf(e.base.name)
        if isinstance(e, sp.Symbol):
            return (0.0, INF) if ir.is_index(e) else self.leaf(e.name)
        if isinstance(e, sp.Add):
            out = (0.0, 0.0)
            for a in e.args:
                out = _add(out, self(a))
            return out
        if isinstance(e, sp.Mul):
            out = (1.0, 1.0)
            for a in e.args:
                out = _mul(out, self(a))
            return out
        if isinstance(e, sp.Pow):
            return _pow(self(e.base), e.exp, self(e.exp))
        return self._node(e)

    def _node(self, e: sp.Basic) -> Interval:
        if e.func in FUNCTIONS:
            return FUNCTIONS[e.func](self(e.args[0]))
        if isinstance(e, (sp.Max, sp.Min)):
            parts = [self(a) for a in e.args]
            pick = max if isinstance(e, sp.Max) else min
            return pick(p[0] for p in parts), pick(p[1] for p in parts)
        if isinstance(e, sp.Piecewise):
            parts = [self(p.expr) for p in e.args]
            return min(p[0] for p in parts), max(p[1] for p in parts)
        if isinstance(e, (ir.Sum_, ir.Prod_)):
            return _sum_like(self(e.body)) if isinstance(e, ir.Sum_) else FULL
        if isinstance(e, (ir.Max_, ir.Min_, ir.LogSumExp_)) and e.cond != sp.true:
            return self.maybe_empty(e)
        if isinstance(e, (ir.Mean_, ir.Max_, ir.Min_, ir.At)):
            return self(e.args[0])
        if isinstance(e, ir.Norm_):
            return 0.0, INF
        if isinstance(e, ir.LogSumExp_):
            return self(e.body)[0], INF
        if isinstance(e, ir.Softmax):
            return 0.0, 1.0
        if isinstance(e, ir.LogSoftmax):
            return -INF, 0.0
        if isinstance(e, ir.Size):
            return 1.0, INF
        if isinstance(e, (sp.core.relational.Relational, sp.logic.boolalg.Boolean)):
            return 0.0, 1.0
        return FULL
