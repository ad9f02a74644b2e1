"""A high-precision evaluator of the IR itself, in mpmath: the reference the stability report measures against.

It shares nothing with the torch code path (no emitter, no generated source): it walks the SymPy expression
with mpmath numbers, binding indices to integers, so it is an independent reading of what the formula means.
`reference()` raises the working precision until two precisions agree, so even a naive formula that cancels
catastrophically (log(1 + exp(-1e4))) gets its true value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import mpmath
import numpy as np
import sympy as sp

from . import ir
from .scope import free_indices

mp = mpmath.mp


class UnsupportedError(Exception):
    """The loss uses something the reference evaluator does not model (fn inputs, grad, whole-tensor ...)."""


def re(x):
    """Real part: the evaluator also runs on complex numbers (complex-step derivatives), where every
    comparison, branch and |.| follows the real part so the imaginary part carries the exact derivative."""
    return x.real if isinstance(x, mpmath.mpc) else x


def _log(x):
    return mp.nan if re(x) < 0 else mp.log(x)


def _pow(b, e):
    if mp.isnan(e) and b != 1:  # IEEE: 1^nan = 1, and x^0 = 1 below; anything else to a nan power is nan
        return mp.nan
    if b == 0:
        return mp.mpf(1) if e == 0 else (mp.inf if re(e) < 0 else mp.mpf(0))
    if re(b) < 0 and mp.isfinite(e) and e != int(re(e)):
        return mp.nan
    if re(b) < 0 and mp.isinf(e):  # torch (C's pow): |b| > 1 to +inf is inf, |b| < 1 is 0, -1 is 1
        return mp.power(abs(b), e)
    return mp.power(b, e)


def _logcosh(x):
    """log(cosh(x)) as log1p(expm1-like cosh(x) - 1): cosh(x) - 1 = 2 sinh(x/2)^2 keeps x^2/2 below the
    working precision, where log(cosh(x)) is 0."""
    return mp.log1p(2 * mp.sinh(x / 2) ** 2)


def _erf(x):
    """mpmath's erf of a complex argument drops a tiny imaginary part (the complex step of the gradient
    check): erf(a + ih) = erf(a) + ih erf'(a) to first order, which is all the step reads."""
    if isinstance(x, mp.mpc) and abs(x.imag) < mp.mpf(10) ** (-mp.dps // 2) * (1 + abs(x.real)):
        return mp.erf(x.real) + 1j * x.imag * 2 / mp.sqrt(mp.pi) * mp.exp(-x.real**2)
    return mp.erf(x)


def _xlogy(x, y):
    return mp.mpf(0) if x == 0 and not mp.isnan(y) else x * _log(y)


def _sign(x):
    return mp.mpf((re(x) > 0) - (re(x) < 0))


FUNCS: dict[type, Callable] = {
    sp.exp: mp.exp, sp.log: _log, sp.Abs: lambda x: -x if re(x) < 0 else x, sp.sign: _sign, sp.sin: mp.sin,
    sp.cos: mp.cos, sp.tan: mp.tan, sp.tanh: mp.tanh, sp.cosh: mp.cosh, sp.sinh: mp.sinh, sp.acos: mp.acos,
    sp.asin: mp.asin, sp.atan: mp.atan, sp.erf: _erf,
    ir.sigmoid: lambda x: 1 / (1 + mp.exp(-x)),
    ir.logsigmoid: lambda x: -mp.log1p(mp.exp(-x)),
    ir.softplus: lambda x: mp.log1p(mp.exp(x)),
    ir.relu: lambda x: x if re(x) > 0 else mp.mpf(0),
    ir.log1p: lambda x: mp.nan if re(x) < -1 else mp.log1p(x),
    ir.expm1: mp.expm1,
    ir.logcosh: lambda x: _logcosh(x),
    sp.Heaviside: lambda x: mp.mpf(re(x) > 0),
}
COMPARE = {sp.Eq: lambda a, b: a == b, sp.Ne: lambda a, b: a != b, sp.Lt: lambda a, b: re(a) < re(b),
           sp.Le: lambda a, b: re(a) <= re(b), sp.Gt: lambda a, b: re(a) > re(b),
           sp.Ge: lambda a, b: re(a) >= re(b)}


class Evaluator:
    """Evaluates one loss element at given index values; `arrays` hold inputs and shaped parameters
    (object arrays of mpf, groups flattened to one axis), `scalars` undeclared-shape inputs and parameters."""

    def __init__(self, loss: ir.LossIR, arrays: dict[str, np.ndarray], scalars: dict[str, object],
                 sizes: dict[str, int]) -> None:
        self.loss, self.arrays, self.scalars, self.sizes = loss, arrays, scalars, sizes
        self.memo: dict = {}
        self.free: dict[sp.Basic, tuple] = {}

    def size(self, index: sp.Symbol) -> int:
        name = str(index)
        while True:
            canon = self.loss.axis_of.get(name, name)
            if canon in self.sizes:
                return self.sizes[canon]
            if "__" not in name:
                raise UnsupportedError(f"no size for index {index}")
            name = name.rsplit("__", 1)[0]

    def ev(self, e: sp.Basic, env: dict) -> object:
        if e not in self.free:
            self.free[e] = tuple(free_indices(e))
        key = (e, tuple(env.get(s) for s in self.free[e]))
        if key not in self.memo:
            self.memo[key] = self._ev(e, env)
        return self.memo[key]

    def _ev(self, e: sp.Basic, env: dict) -> object:
        if e is sp.true or e is sp.false:
            return bool(e)
        if e is sp.nan:
            return mp.nan
        if e.is_infinite:
            return mp.inf if e.is_extended_positive else mp.ninf
        if e.is_Number or e.is_NumberSymbol:
            return mp.mpf(sp.Float(e, mp.dps + 5)) if not e.is_Integer else mp.mpf(int(e))
        if ir.is_index(e):
            return env[e]
        if isinstance(e, sp.Symbol):
            if e.name not in self.scalars:
                raise UnsupportedError(f"no value for {e.name}")
            return self.scalars[e.name]
        if isinstance(e, sp.Indexed):
            slots = tuple(int(self.ev(s, env)) for s in e.indices)
            return self.arrays[e.base.name][slots]
        if isinstance(e, sp.Add):
            return mp.fsum(self.ev(a, env) for a in e.args)
        if isinstance(e, sp.Mul):
            return mp.fprod(self.ev(a, env) for a in e.args)
        if isinstance(e, sp.Pow):
            return _pow(self.ev(e.base, env), self.ev(e.exp, env))
        return self._node(e, env)

    def _node(self, e: sp.Basic, env: dict) -> object:
        if e.func in FUNCS:
            return FUNCS[e.func](self.ev(e.args[0], env))
        if isinstance(e, ir.xlogy):
            return _xlogy(self.ev(e.args[0], env), self.ev(e.args[1], env))
        if isinstance(e, (sp.Max, sp.Min)):
            vals = [self.ev(a, env) for a in e.args]
            pick = max if isinstance(e, sp.Max) else min
            return mp.nan if any(mp.isnan(v) for v in vals) else pick(vals, key=re)
        if isinstance(e, sp.Piecewise):
            return next(self.ev(p.expr, env) for p in e.args if self.ev(p.cond, env))
        if isinstance(e, sp.core.relational.Relational):
            return COMPARE[type(e)](self.ev(e.lhs, env), self.ev(e.rhs, env))
        if isinstance(e, sp.And):
            return all(self.ev(a, env) for a in e.args)
        if isinstance(e, sp.Or):
            return any(self.ev(a, env) for a in e.args)
        if isinstance(e, sp.Not):
            return not self.ev(e.args[0], env)
        if isinstance(e, ir._Reduction):
            return self.reduction(e, env)
        if isinstance(e, ir._Normaliser):
            return self.normaliser(e, env)
        if isinstance(e, ir.At):
            body, axes, values = e.args
            inner = dict(env)
            inner.update({a: int(self.ev(v, env)) for a, v in zip(axes, values, strict=True)})
            return self.ev(body, inner)
        if isinstance(e, ir.Size):
            return mp.mpf(self.size(e.args[0]))
        raise UnsupportedError(f"{type(e).__name__} is not modelled by the reference evaluator")

    def terms(self, body: sp.Basic, indices: Sequence[sp.Symbol], cond: sp.Basic, env: dict) -> list:
        out = []
        for point in itertools.product(*(range(self.size(i)) for i in indices)):
            inner = dict(env)
            inner.update(zip(indices, point, strict=True))
            if cond == sp.true or self.ev(cond, inner):
                out.append(self.ev(body, inner))
        return out

    def reduction(self, e: ir._Reduction, env: dict) -> object:
        vals = self.terms(e.body, e.indices, e.cond, env)
        op = e.op
        if op == "sum":
            return mp.fsum(vals)
        if op == "mean":
            return mp.fsum(vals) / len(vals) if vals else mp.nan
        if op == "prod":
            return mp.fprod(vals)
        if op in ("max", "min"):
            if any(mp.isnan(v) for v in vals):  # as torch.amax: Python's max() keeps a nan only if it is first
                return mp.nan
            return (max if op == "max" else min)(vals, key=re) if vals else (mp.ninf if op == "max" else mp.inf)
        if op == "norm":
            return mp.sqrt(mp.fsum(v * v for v in vals))
        return _logsumexp(vals)

    def normaliser(self, e: ir._Normaliser, env: dict) -> object:
        c = e.index
        vals = self.terms(e.body, [c], sp.true, env)
        mine = vals[env[c]]
        if e.op == "normalize":
            return mine / max(mp.sqrt(mp.fsum(v * v for v in vals)), mp.mpf("1e-12"), key=re)
        lse = _logsumexp(vals)
        return mine - lse if e.op == "log_softmax" else mp.exp(mine - lse)


def _logsumexp(vals: list) -> object:
    if not vals:
        return mp.ninf
    m = max(vals, key=re)
    if mp.isinf(m):
        return m
    return m + mp.log(mp.fsum(mp.exp(v - m) for v in vals))


def elements(ev: Evaluator, expr: sp.Expr, free: Sequence[str], broadcast: Sequence[str]) -> list:
    """Every element of the loss (reduction 'none', C order; undeclared-shape inputs broadcast first)."""
    idx = [ir.index_symbol(f) for f in free]
    shape = np.broadcast_shapes(*(ev.arrays[n].shape for n in broadcast)) if broadcast else ()
    out = []
    for cell in np.ndindex(*shape):
        for name in broadcast:
            ev.scalars[name] = np.broadcast_to(ev.arrays[name], shape)[cell]
        ev.memo.clear()
        for point in itertools.product(*(range(ev.size(i)) for i in idx)):
            out.append(ev.ev(expr, dict(zip(idx, point, strict=True))))
    return out


def agree(a: object, b: object, digits: int) -> bool:
    """Finite and equal to `digits` relative to the larger of the two, where both are at least 1e-300; two
    values below 1e-300 agree when they differ by less than 10^-digits * 1e-300 (no float64 sees more). A NaN or
    inf never agrees: it may be a cancellation more digits would resolve."""
    if not (mp.isfinite(a) and mp.isfinite(b)):
        return False
    return abs(a - b) <= mp.mpf(10) ** (-digits) * max(abs(a), abs(b), mp.mpf(10) ** (-300))


def converged(compute: Callable[[list[int] | None], list], oracle: list | None = None, digits: int = 20,
              start: int = 40, cap: int = 2560) -> tuple[list, list[bool]]:
    """compute(which) at rising precision until each value is settled; returns the values and which settled.
    `which` lists the positions still unsettled (None: all); compute returns the values at those positions.

    Without an oracle a value settles when two successive precisions agree to `digits`. Agreement alone can
    be fooled (log(1 + e^-200) is 0 at 40 and at 80 digits), so with an oracle (the same quantity by an
    independent, well-conditioned formula) a value settles only when it agrees with the oracle."""
    with mp.workdps(start // 2 if oracle is not None else start):
        now = compute(None)
    ok = [False] * len(now) if oracle is None else [agree(a, b, digits) for a, b in zip(now, oracle, strict=True)]
    dps = start if oracle is not None else start * 2
    while not all(ok) and dps <= cap:
        todo = [k for k, good in enumerate(ok) if not good]
        with mp.workdps(dps):
            fresh = compute(todo)
        for k, v in zip(todo, fresh, strict=True):
            ok[k] = agree(v, oracle[k] if oracle is not None else now[k], digits)
            now[k] = v
        dps *= 2
    return now, ok
