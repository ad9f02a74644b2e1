"""The stable forms the rewrite rules produce, in plain IR (so the emitter and gradient.py need nothing new),
except the log-cosh forms: the rule leaves the node ir.logcosh (derivative tanh), and the generated code
evaluates log_cosh_form (eager) or log_cosh_kernel_form and tanh_kernel_form (under torch.compile) inside
an autograd.Function (emit.NODES, codegen.node_class).

Each form is written for float32/float16 arithmetic: no intermediate overflows, no subtraction of nearly
equal quantities, and every branch a `where` does not take keeps a finite gradient (the double-where), except
in the log-cosh forms, which are never differentiated.
"""

from __future__ import annotations

import sympy as sp
from sympy.functions.elementary.piecewise import _canonical_coeff

from . import ir
from .scope import free_indices, rename

LOG_FLOOR = -100  # torch.nn.functional.binary_cross_entropy clamps its logs here
COSH_CLAMP = 20  # log_cosh_form: above it log(cosh(a)) - (|a| - log 2) = log1p(exp(-2|a|)) < 5e-18
KERNEL_SWITCH = sp.Rational(1, 2)  # the kernel forms' |a| below which sinh(|a| / 2) is a polynomial
HALF_ANGLE_TERMS = 7  # Taylor terms of sinh(h) and cosh(h): the 8th is below 2^-60 of the sum for h < 1/4


def softplus(z: sp.Expr) -> sp.Expr:
    """log(1 + exp(z)) exactly: torch's F.softplus returns z above 20 (1e-10 relative error in float64)."""
    return -ir.logsigmoid(-z)


def canonical(cond: sp.Basic) -> sp.Basic:
    return cond.replace(lambda x: x.is_Relational, _canonical_coeff)


def logsumexp(body: sp.Expr, indices: sp.Tuple, cond: sp.Basic, shift_cond: sp.Basic | None = None) -> sp.Expr:
    """max + log(sum exp(body - max)), spelled out rather than torch.logsumexp: autograd then weighs each
    term by exp(body - max) / sum (exact shift) instead of exp(body - lse), whose rounded lse costs
    |lse| * eps of relative accuracy in every gradient entry (20 ulp at lse = 35 in float32).

    The max is taken over `shift_cond` (default: cond), a superset of the summed terms whose extra members
    are no larger than the max of the rest (log_ratio's b - a = 0 at a's own position): with shift_cond
    true, no masked copy is needed for the max and no term can overflow."""
    cond = canonical(cond)  # SymPy canonicalises relations inside Piecewise conditions; match it, or the
    shift_cond = cond if shift_cond is None else canonical(shift_cond)  # memo (CSE) sees two sums
    m = ir.Max_(body, indices, shift_cond)
    if shift_cond == sp.true:
        total = ir.Sum_(sp.exp(body - m), indices, cond)
    else:
        total = ir.Sum_(sp.exp(sp.Piecewise((body - m, cond), (-sp.oo, True))), indices, sp.true)
    # the sum underflows to 0 when every summed term is far below the shift: -inf with a zero gradient
    return sp.Piecewise((m + sp.log(shifted(total, sp.Eq(total, 0), 1)), total > 0), (-sp.oo, True))


def logaddexp(u: sp.Expr, v: sp.Expr) -> sp.Expr:
    return sp.Max(u, v) + softplus(-sp.Abs(u - v))


def shifted(value: sp.Expr, bad: sp.Basic, by: sp.Expr) -> sp.Expr:
    """value + by where `bad` holds: the inner half of the double-where that keeps an unused branch's
    gradient finite (sqrt'(0) * 0 would be NaN). An addition, not a Piecewise, because SymPy folds
    `Piecewise(...)**e` into the branches and the guard would vanish."""
    return value + by * ir.iverson(bad)


def log_cosh_form(a: sp.Expr) -> sp.Expr:
    """What the emitter prints for ir.logcosh(a) in eager mode, where every op is a pass over memory and a
    `where` is among the dearest (torch 2.13 CPU, 4M float32: where 10 ms, sinh 5.7, log1p 4.7, arithmetic
    about 1): log1p(2 sinh(c / 2)^2) + (|a| - c) with c = min(|a|, COSH_CLAMP), nine ops and no where.
    2 sinh^2(c / 2) is cosh(c) - 1 without the cancellation that makes log(cosh(a)) lose every digit below
    |a| = 3e-4 in float32, and the clamp keeps sinh finite (the textbook overflows at |a| = 89). Above the
    clamp log(cosh(a)) = |a| - log 2 + log1p(exp(-2|a|)) is linear in |a| to within exp(-2 COSH_CLAMP),
    far below half an ulp of log(cosh(COSH_CLAMP)) in float64. Only evaluated, never differentiated (the
    node's backward is tanh), so the clamp's kink does not matter."""
    mag = sp.Abs(a)
    c = sp.Min(mag, COSH_CLAMP)
    tail = sp.Add(mag, -c, evaluate=False)  # 0 below the clamp: added last, |a| + tiny - |a| would round tiny away
    return sp.Add(ir.log1p(2 * sp.sinh(c / 2) ** 2), tail, evaluate=False)


def horner(q: sp.Expr, coefficients: list[sp.Rational]) -> sp.Expr:
    """c0 + q (c1 + q (c2 + ...)), nested as printed: one multiply-add per coefficient."""
    acc = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = sp.Add(c, sp.Mul(q, acc, evaluate=False), evaluate=False)
    return acc


def half_angle(a: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """sinh(|a| / 2) and cosh(|a| / 2) as polynomials (Taylor, 7 terms), accurate to 1 ulp of float64 for
    |a| < KERNEL_SWITCH; arithmetic only, which costs next to nothing inside one compiled kernel."""
    h = sp.Abs(a) / 2
    q = h ** 2
    odd = [sp.Rational(1, sp.factorial(2 * k + 1)) for k in range(HALF_ANGLE_TERMS)]
    even = [sp.Rational(1, sp.factorial(2 * k)) for k in range(HALF_ANGLE_TERMS)]
    return h * horner(q, odd), horner(q, even)


def log_cosh_kernel_form(a: sp.Expr) -> sp.Expr:
    """log(cosh(a)) for one compiled kernel (torch.compile), where arithmetic is free and each
    transcendental is not (Inductor CPU, 4M float32: exp 1 ms, log1p 3 ms, expm1 through _Expm1 6 ms): one
    exp and one log1p. Below |a| = 1/2 it is log1p(2 sinh(|a| / 2)^2) from half_angle (cosh(a) - 1 =
    2 sinh^2(a / 2), no cancellation), above |a| - log 2 + log1p(exp(-2|a|)), where |a| - log 2 cancels at most
    3 bits. Measured against mpmath over 7500 points in [1e-30, 32]: within 2.5 ulp in float64, 2.7 in float32.
    """
    mag = sp.Abs(a)
    near = mag < KERNEL_SWITCH
    sh, _ = half_angle(a)
    inner = sp.Piecewise((2 * sh ** 2, near), (sp.exp(-2 * mag), True))
    return ir.log1p(inner) + sp.Piecewise((0, near), (mag - sp.log(2), True))


def tanh_kernel_form(a: sp.Expr) -> sp.Expr:
    """tanh(a) for one compiled kernel (Inductor's own tanh costs 6 ms per 4M float32 on CPU, exp 1 ms):
    2 sinh(h) cosh(h) / (1 + 2 sinh(h)^2) with h = |a| / 2 from half_angle below |a| = 1/2, and
    (1 - u) / (1 + u) with u = exp(-2|a|) above (1 - u > 0.63: no cancellation); the sign of a restored.
    Within 2.1 ulp of mpmath in float64 and float32 (same points as log_cosh_kernel_form)."""
    mag = sp.Abs(a)
    sh, ch = half_angle(a)
    u = sp.exp(-2 * mag)
    magnitude = sp.Piecewise((2 * sh * ch / (1 + 2 * sh ** 2), mag < KERNEL_SWITCH), ((1 - u) / (1 + u), True))
    return sp.sign(a) * magnitude


def clamped_log(p: sp.Expr, complement: bool) -> sp.Expr:
    """max(log p, -100) (or of log1p(-p)) as torch's BCE computes it, with a finite gradient at p = 0 / 1."""
    ok = p < 1 if complement else p > 0
    inner = shifted(p, sp.Not(ok), -1 if complement else 1)
    value = ir.log1p(-inner) if complement else sp.log(inner)
    return sp.Piecewise((sp.Max(value, LOG_FLOOR), ok), (LOG_FLOOR, True))


def push_at(a: sp.Expr) -> sp.Expr:
    """At(k * body) -> k * At(body) for factors k free of the read axes, so that b - a can factor out the
    common 1/tau of s[i, j] - s[i, i] and subtract before rounding."""
    if not (isinstance(a, ir.At) and isinstance(a.args[0], sp.Mul)):
        return a
    body, axes, values = a.args
    keep = [f for f in body.args if not set(axes) & set(free_indices(f))]
    if not keep:
        return a
    return sp.Mul(*keep) * ir.At(sp.Mul(*(f for f in body.args if f not in keep)), axes, values)


def position(a: sp.Expr, b: sp.Expr, c: sp.Symbol) -> sp.Basic | None:
    """v such that b read at c = v is a (b's own c when a == b), else None."""
    if a == b:
        return c
    if isinstance(a, ir.At) and len(a.args[1]) == 1:
        body, (axis,), (value,) = a.args
        if rename(body, {axis: c}) == b:
            return value
    candidates = {s for s in a.atoms(sp.Symbol) if ir.is_index(s)} | set(a.atoms(sp.Indexed))
    for v in sorted(candidates, key=sp.default_sort_key):
        if v != c and c not in v.free_symbols and rename(b, {c: v}) == a:
            return v
    return None


def adds_axis(v: sp.Basic, total: sp.Basic) -> bool:
    """Whether the position v of a among the b's is indexed by an axis the sum is not (supcon's positive
    s[i, j] against logsumexp_k s[i, k]): shifting the b's by a would then build an [i, j, k] temporary,
    a rank more than the sum itself, so the rewrite keeps the cheaper a - logsumexp form instead."""
    return bool(set(free_indices(v)) - set(free_indices(total)))


def log_ratio(a: sp.Expr, total: ir.Sum_) -> sp.Expr | None:
    """log(exp(a) / sum_{c | cond} exp(b)) without overflow or cancellation.

    With v the position of a among the b's and L = logsumexp over the *other* terms of (b - a):
    the value is -softplus(L) where v is in the sum, else -L. Shifting by a (not by the max) is what keeps
    both the value and the autograd gradient accurate when a dominates (the loss is then ~exp(L)). Where that
    shift would add an axis (`adds_axis`) the result is a - logsumexp(b): overflow-free, accurate to ulp(lse)
    in absolute terms rather than relative to a vanishing loss."""
    if len(total.indices) != 1 or not isinstance(total.body, sp.exp):
        return None
    (c,), b = total.indices, total.body.args[0]
    if a == b:
        return ir.LogSoftmax(b, c) if total.cond == sp.true else None
    if c in free_indices(a):
        return None
    v = position(a, b, c)
    if v is not None and adds_axis(v, total):  # a - lse: O(n^2) where the shifted form costs O(n^3)
        return a - logsumexp(b, total.args[1], total.cond)
    diff = sp.factor_terms(b - push_at(a))
    if v is None:
        return -logsumexp(diff, total.args[1], total.cond)
    lse = logsumexp(diff, total.args[1], sp.And(total.cond, sp.Ne(c, v)), total.cond)
    member = total.cond.xreplace({c: v})
    return -softplus(lse) if member == sp.true else sp.Piecewise((-softplus(lse), member), (-lse, True))
