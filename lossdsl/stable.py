"""The stable forms the rewrite rules produce, in plain IR (so the emitter and gradient.py need nothing new),
except the log-cosh forms: the rule leaves the node ir.logcosh (derivative tanh), and the generated code
evaluates log_cosh_form (eager) or log_cosh_kernel_form and tanh_kernel_form (under torch.compile) inside
an autograd.Function (emit.NODES, codegen.node_class); compiled mode's symbolic backward also spells its
tanh by tanh_kernel_form (with_kernel_functions).

Each form is written for float32/float16 arithmetic: no intermediate overflows, no subtraction of nearly
equal quantities, and every branch a `where` does not take keeps a finite gradient (the double-where), except
in the log-cosh and tanh kernel forms, which are never differentiated (a compiled backward is not
differentiated again: AOTAutograd has no double backward), so their unused branches may overflow.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.functions.elementary.piecewise import _canonical_coeff

from . import ir
from .scope import free_indices, rename

LOG_FLOOR = -100  # torch.nn.functional.binary_cross_entropy clamps its logs here
COSH_CLAMP = 20  # log_cosh_form: above it log(cosh(a)) - (|a| - log 2) = log1p(exp(-2|a|)) < 5e-18
LOG_COSH_SWITCH = sp.Rational(3, 4)  # log_cosh_kernel_form: above it |a| - log 2 > 0 (no cancellation)
TANH_SWITCH = sp.Rational(1, 2)  # tanh_kernel_form: above it 1 - exp(-2|a|) > 0.63 (no cancellation)


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


def series(q: sp.Expr, coefficient: Callable[[int], sp.Rational], q_max: sp.Rational, bits: int) -> sp.Expr:
    """sum_k coefficient(k) q^k as a Horner polynomial, cut where the first omitted term, at q = q_max, is
    below 2^-(bits + 3) of the constant one (all terms positive): an eighth of an ulp of truncation. The
    count follows the dtype because each term is a multiply and an add, and on a CPU core those are what a
    compiled log-cosh kernel spends its time on (Inductor, 4M float32: 0.1-0.15 ms per term)."""
    terms, bound = [], coefficient(0) * sp.Rational(1, 2 ** (bits + 3))
    while not terms or coefficient(len(terms)) * q_max ** len(terms) >= bound:
        terms.append(coefficient(len(terms)))
    return horner(q, terms)


def cosh_minus_one(q: sp.Expr, q_max: sp.Rational, bits: int) -> sp.Expr:
    """cosh(a) - 1 from q = a^2 (Taylor): no cancellation, arithmetic only."""
    return q * series(q, lambda k: sp.Rational(1, sp.factorial(2 * k + 2)), q_max, bits)


def log1p_small(z: sp.Expr, z_max: sp.Rational, bits: int) -> sp.Expr:
    """log(1 + z) for 0 <= z <= z_max < 1 as 2 atanh(s) = 2 s (1 + s^2 / 3 + s^4 / 5 + ...), s = z / (2 + z):
    a division and a short polynomial (s^2 <= 0.017 here) where Inductor's vectorised log1p costs as much as
    eight multiply-adds."""
    s = z / (2 + z)
    s_max = z_max / (2 + z_max)
    # both unevaluated: SymPy would square z's branches (a second exp) and spread s into the product (a
    # second division by 2 + z)
    square = sp.Pow(s, 2, evaluate=False)
    return sp.Mul(2, s, series(square, lambda k: sp.Rational(1, 2 * k + 1), s_max ** 2, bits), evaluate=False)


def far_exp(mag: sp.Expr) -> sp.Expr:
    """exp(-2 min(|a|, COSH_CLAMP)): past the clamp, exp(-2|a|) is below half an ulp of what it is added to
    in float64, and unclamped it and its square in log1p_small become subnormal in float32 (|a| of 21-26 and
    44-51), which this CPU computes with microcode: compiled log_cosh_loss, 4M float32, 8.2 ms for errors of
    N(0, 2), 11.5 ms for errors in [21, 26] and 18.6 ms in [44, 51] before the clamp."""
    return sp.exp(-2 * sp.Min(mag, COSH_CLAMP))


def log_cosh_kernel_form(a: sp.Expr, bits: int) -> sp.Expr:
    """log(cosh(a)) for one compiled kernel (torch.compile), where each transcendental and each multiply-add
    counts (Inductor CPU, 4M float32: exp ~1 ms, log1p ~3 ms, a multiply-add ~0.12 ms): one exp, one
    division and two short polynomials sized for the dtype's `bits`. It is log1p(z) by log1p_small, with
    z = cosh(a) - 1 from its Taylor series below |a| = 3/4, and |a| - log 2 + log1p(exp(-2|a|)) above, where
    |a| - log 2 > 0 so nothing cancels. 4M float32, forward alone: 4.1-4.6 ms, where one log1p and 7-term
    half-angle polynomials took 8-9."""
    mag = sp.Abs(a)
    near = mag < LOG_COSH_SWITCH
    z_max = sp.Rational(max(sp.cosh(LOG_COSH_SWITCH) - 1, sp.exp(-2 * LOG_COSH_SWITCH)).evalf(30))
    z = sp.Piecewise((cosh_minus_one(a ** 2, LOG_COSH_SWITCH ** 2, bits), near), (far_exp(mag), True))
    return log1p_small(z, z_max, bits) + sp.Piecewise((0, near), (mag - sp.log(2), True))


def tanh_kernel_form(a: sp.Expr, bits: int) -> sp.Expr:
    """tanh(a) for one compiled kernel (Inductor's own tanh costs 6 ms per 4M float32 on CPU, exp 1 ms):
    sinh(a) / cosh(a) from their Taylor series below |a| = 1/2, (1 - u) / (1 + u) with u = exp(-2|a|) above
    (1 - u > 0.63: no cancellation), one division for both; the sign of a restored."""
    mag, q = sp.Abs(a), a ** 2
    near = mag < TANH_SWITCH
    u = far_exp(mag)
    sinh = mag * series(q, lambda k: sp.Rational(1, sp.factorial(2 * k + 1)), TANH_SWITCH ** 2, bits)
    cosh = 1 + sp.Piecewise((cosh_minus_one(q, TANH_SWITCH ** 2, bits), near), (u, True))  # 1 + where: SymPy
    return sp.sign(a) * sp.Piecewise((sinh, near), (1 - u, True)) / cosh  # folds 1 / where into two divisions


KERNEL_FUNCTIONS: dict[type, Callable[[sp.Expr, int], sp.Expr]] = {sp.tanh: tanh_kernel_form}


def with_kernel_functions(e: sp.Expr, bits: int) -> sp.Expr:
    """e with each function of KERNEL_FUNCTIONS spelled in its kernel form for a dtype of `bits`: for
    generated code that only ever runs under torch.compile (compiled mode's symbolic backward, whose
    log_cosh_loss gradient is tanh: Inductor's tanh 6 ms per 4M float32 on CPU, the form ~2)."""
    return e.replace(lambda x: type(x) in KERNEL_FUNCTIONS, lambda x: KERNEL_FUNCTIONS[type(x)](x.args[0], bits))


def clamped_log(p: sp.Expr, complement: bool) -> sp.Expr:
    """max(log p, -100) (or of log1p(-p)) as torch's BCE computes it, with a finite gradient at p = 0 / 1.
    The floor is chosen by p <= 0 (p >= 1), not by not-p > 0: a NaN probability stays NaN, as in torch."""
    floor = p >= 1 if complement else p <= 0
    inner = shifted(p, floor, -1 if complement else 1)
    value = ir.log1p(-inner) if complement else sp.log(inner)
    return sp.Piecewise((LOG_FLOOR, floor), (sp.Max(value, LOG_FLOOR), True))


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
