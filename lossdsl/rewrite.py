"""Stability rewriting: formulas written the way papers print them → forms that stay finite and accurate.

`RULES` is the table: each rule has a name, the pattern it matches and what it becomes (as text, for the
report), its domain precondition, the function that tries it on one node, and the two formulas its tests
use: one on which it fires and one on which its precondition fails. The pass `stability` walks the IR
outermost-first (so `log(exp(a)/sum exp(b))` is seen whole before `exp(a)/sum exp(b)` is), rewrites the
children, then tries the node once more, and records every firing in `LossIR.notes`.

Because gradients are derived from the IR after this pass (and autograd runs through the emitted forward),
one rewrite makes both the forward and the backward pass stable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from . import ir, passes
from .domain import Bounds
from .scope import free_indices
from .stable import (
    adds_axis,
    clamped_log,
    log_ratio,
    logaddexp,
    logsumexp,
    position,
    shifted,
    softplus,
)

PASS_NAME = "stability"

A = sp.Wild("a")


class Ctx:
    """What a rule may ask about the loss: bounds of sub-expressions and the kinds of its inputs."""

    def __init__(self, loss: ir.LossIR) -> None:
        self.loss = loss
        self.bounds = Bounds(loss)

    def kind(self, e: sp.Basic) -> str | None:
        name = e.base.name if isinstance(e, sp.Indexed) else (e.name if isinstance(e, sp.Symbol) else None)
        inp = self.loss.input(name) if name else None
        return inp.kind if inp else None


Apply = Callable[[sp.Basic, Ctx], sp.Basic | None]


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    result: str
    precondition: str
    apply: Apply
    fires: str  # a loss on which the rule fires (its test)
    not_fires: str  # a loss on which the rule's precondition fails
    sample: tuple[float, float] = (-30.0, 30.0)  # where its value test draws inputs
    late: bool = False  # tried only once the node's children are rewritten (a guard for what is left)


def _exp_over_sum(m: sp.Mul) -> tuple[sp.Expr, ir.Sum_, list[sp.Basic]] | None:
    """Split a product into exp(a), 1/sum(exp(b)) and the other factors."""
    factors = list(sp.Mul.make_args(m))
    num = next((f for f in factors if isinstance(f, sp.exp)), None)
    den = next((f for f in factors if isinstance(f, sp.Pow) and f.exp == -1 and isinstance(f.base, ir.Sum_)
                and isinstance(f.base.body, sp.exp)), None)
    if num is None or den is None:
        return None
    rest = [f for f in factors if f is not num and f is not den]
    return num.args[0], den.base, rest


# ---- rule functions: node -> replacement or None
def wild(pattern: sp.Expr, result: Callable[[sp.Expr], sp.Expr]) -> Apply:
    """A rule given as a SymPy pattern in one wildcard `a` and the form it becomes."""

    def apply(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
        if e.func != pattern.func:
            return None
        m = e.match(pattern)
        return result(m[A]) if m and A in m else None

    return apply


def r_prob_log(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if isinstance(e, ir.log1p) and ctx.kind(-e.args[0]) == "prob":
        return clamped_log(-e.args[0], complement=True)
    if not isinstance(e, sp.log):
        return None
    u = e.args[0]
    if ctx.kind(u) == "prob":
        return clamped_log(u, complement=False)
    rest = u - 1
    if u.is_Add and ctx.kind(-rest) == "prob":
        return clamped_log(-rest, complement=True)
    return None


def r_implied_clamp(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    """max(a, c) where a >= c already: BCE written as torch documents it, max(log(p), -100), around the
    clamped log the prob_log rule makes of log(p), would clamp twice (eager: a clamp and its backward's
    compare and select, 10 ms of 4M elements)."""
    if not isinstance(e, (sp.Max, sp.Min)):
        return None
    consts = [a for a in e.args if a.is_number]
    rest = [a for a in e.args if not a.is_number]
    if len(consts) != 1 or not rest:
        return None
    lo, hi = ctx.bounds(e.func(*rest))
    c = float(consts[0])
    return e.func(*rest) if (lo >= c if isinstance(e, sp.Max) else hi <= c) else None


def r_log_exp_ratio(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not (isinstance(e, sp.log) and isinstance(e.args[0], sp.Mul)):
        return None
    parts = _exp_over_sum(e.args[0])
    if parts is None or parts[2]:
        return None
    return log_ratio(parts[0], parts[1])


def r_log_softmax(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not isinstance(e, sp.log):
        return None
    u = e.args[0]
    if isinstance(u, ir.Softmax):
        return ir.LogSoftmax(*u.args)
    if isinstance(u, ir.At) and isinstance(u.args[0], ir.Softmax):
        return ir.At(ir.LogSoftmax(*u.args[0].args), u.args[1], u.args[2])
    return None


def _exp_sum(e: sp.Basic) -> bool:
    """sum of exp(b), b not already shifted by its own max (which is what `logsumexp` builds)."""
    if not (isinstance(e, ir.Sum_) and isinstance(e.body, sp.exp)):
        return False
    return not any(m.args[1] == e.args[1] for m in e.body.atoms(ir.Max_))


def r_logsumexp(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if isinstance(e, sp.log) and _exp_sum(e.args[0]):
        s = e.args[0]
        return logsumexp(s.body.args[0], s.args[1], s.cond)
    return None


def _log_term(t: sp.Basic) -> sp.Expr | None:
    """log of one term of a sum of exponentials: exp(u) -> u, sum exp(u) -> logsumexp(u)."""
    if isinstance(t, sp.exp):
        return t.args[0]
    if _exp_sum(t):
        return logsumexp(t.body.args[0], t.args[1], t.cond)
    return None


def r_logaddexp(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not (isinstance(e, sp.log) and isinstance(e.args[0], sp.Add)):
        return None
    logs = [_log_term(t) for t in e.args[0].args]
    if len(logs) < 2 or any(x is None for x in logs):
        return None
    out = logs[0]
    for x in logs[1:]:
        out = logaddexp(out, x)
    return out


def r_log_cosh_identity(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    """u + softplus(-2u) - log 2 (TensorFlow's log_cosh, the usual "stable" spelling) is log(cosh(u)), but
    for small u it subtracts log 2 from log 2 + u^2/2: 30 of float32's 24 bits are lost at u = 1e-4."""
    if not isinstance(e, sp.Add) or -sp.log(2) not in e.args:
        return None
    for t in e.args:
        if isinstance(t, ir.softplus):
            u = -t.args[0] / 2
            if u in e.args:
                return ir.logcosh(u.args[0] if isinstance(u, sp.Abs) else u) + (e - u - t + sp.log(2))
    return None


def r_log1p(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not (isinstance(e, sp.log) and isinstance(e.args[0], sp.Add)):
        return None
    const, rest = e.args[0].as_coeff_Add()
    return ir.log1p(rest) if const == 1 and not rest.is_number else None


def r_expm1(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not isinstance(e, sp.Add):
        return None
    const, rest = e.as_coeff_Add()
    if const not in (1, -1):
        return None
    for t in sp.Add.make_args(rest):
        coeff, f = t.as_coeff_Mul()
        if isinstance(f, sp.exp) and coeff == -const:
            return coeff * ir.expm1(f.args[0]) + (rest - t)
    return None


def r_softmax(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    parts = _exp_over_sum(e) if isinstance(e, sp.Mul) else None
    if parts is None or len(parts[1].indices) != 1:
        return None
    a, total, rest = parts
    (c,), b = total.indices, total.body.args[0]
    if a == b and total.cond == sp.true:
        return sp.Mul(ir.Softmax(b, c), *rest)
    if c in free_indices(a):
        return None
    v = position(a, b, c) if total.cond == sp.true else None
    if v is None:
        ratio = sp.exp(-logsumexp(sp.factor_terms(b - a), total.args[1], total.cond))
    else:
        soft = ir.Softmax(b, c)
        ratio = soft if v == c else ir.At(soft, sp.Tuple(c), sp.Tuple(v))
    return sp.Mul(ratio, *rest)


def r_lse_minus_member(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not isinstance(e, sp.Add):
        return None
    terms = list(e.args)
    for t in terms:
        if not (isinstance(t, ir.LogSumExp_) and len(t.indices) == 1):
            continue
        (c,), b = t.indices, t.body
        for u in terms:
            if u is not t and u.could_extract_minus_sign() and c not in free_indices(-u):
                v = position(-u, b, c)
                if v is not None and v != c and not adds_axis(v, t):
                    stable = -log_ratio(-u, ir.Sum_(sp.exp(b), t.args[1], t.cond))
                    return stable + sp.Add(*(x for x in terms if x is not t and x is not u))
    return None


def _xlogy_pairs(m: sp.Mul) -> tuple[sp.Basic, sp.Basic, sp.Basic | None] | None:
    """In a product, a log(u) factor and the factor x with u == x (x log x) or u == x/y (x log(x/y))."""
    factors = sp.Mul.make_args(m)
    for f in factors:
        if not isinstance(f, sp.log):
            continue
        u = f.args[0]
        if u in factors:
            return f, u, None
        num, den = sp.fraction(u)
        if den != 1 and num in factors:
            return f, num, den
    return None


def r_xlogx(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    found = _xlogy_pairs(e) if isinstance(e, sp.Mul) else None
    if found is None or found[2] is not None:
        return None
    f, x, _ = found
    return sp.Mul(*(g for g in sp.Mul.make_args(e) if g is not f and g != x)) * safe_xlogy(x, x, ctx)


def r_xlog_ratio(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    found = _xlogy_pairs(e) if isinstance(e, sp.Mul) else None
    if found is None or found[2] is None:
        return None
    f, x, y = found
    rest = sp.Mul(*(g for g in sp.Mul.make_args(e) if g is not f and g != x))
    return rest * (safe_xlogy(x, x, ctx) - safe_xlogy(x, y, ctx))


def r_norm(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if not (isinstance(e, sp.Pow) and e.exp == sp.Rational(1, 2) and isinstance(e.base, ir.Sum_)):
        return None
    s = e.base
    if s.cond == sp.true and isinstance(s.body, sp.Pow) and s.body.exp == 2:
        return ir.Norm_(s.body.base, s.args[1], s.cond)
    return None


def _guarded_pow(base: sp.Expr, exp: sp.Expr, ctx: Ctx) -> sp.Expr | None:
    """base^exp with base in [0, inf) reaching 0 and 0 < exp < 1: same value, gradient 0 (not inf) at 0.
    The zero branch is chosen by base <= 0, not by not-base > 0, so a NaN base stays NaN (a NaN embedding's
    distance is NaN, as torch's)."""
    lo, _ = ctx.bounds(base)
    if lo != 0:
        return None
    if exp.is_number:
        if not 0 < float(exp) < 1:
            return None
        zero = base <= 0
    else:
        zero = sp.And(base <= 0, exp < 1)
    inner = shifted(base, zero, 1)
    return sp.Piecewise((sp.Pow(0, exp), zero), (inner**exp, True))


def r_sqrt(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if isinstance(e, sp.Pow) and e.exp == sp.Rational(1, 2):
        return _guarded_pow(e.base, e.exp, ctx)
    return None


def r_frac_pow(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    if isinstance(e, sp.Pow) and e.exp != sp.Rational(1, 2) and not e.exp.is_Integer:
        return _guarded_pow(e.base, e.exp, ctx)
    return None


def r_empty_ratio(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    """num/den with den a non-negative sum that an empty mask makes 0 (no eps): 0/0 := 1, the eps -> 0
    limit of (num + eps)/(den + eps) that Dice, IoU and Tversky use; num/0 with num != 0 stays inf."""
    if not isinstance(e, sp.Mul):
        return None
    for f in e.args:
        if not (isinstance(f, sp.Pow) and f.exp == -1):
            continue
        den = f.base
        const, _ = den.as_coeff_Add()
        lo, _ = ctx.bounds(den)
        if lo == 0 and const == 0 and den.atoms(ir.Sum_):
            sign = -1 if e.could_extract_minus_sign() else 1  # 1 - 2 sum(pg)/den: the ratio is 2 sum(pg)/den
            num = sign * sp.Mul(*(g for g in e.args if g is not f))
            empty = sp.And(sp.Eq(den, 0), sp.Eq(num, 0))
            return sign * sp.Piecewise((1, empty), (num / shifted(den, empty, 1), True))
    return None


def safe_xlogy(x: sp.Expr, y: sp.Expr, ctx: Ctx) -> sp.Expr:
    """torch.xlogy(x, y) passes x / y back to y: NaN at x = y = 0 (KL's p log p at p = 0). Where y can reach
    0, the same value from x log(y) where x != 0, with y read as 1 where x = 0, gives that gradient 0.
    For x log(x) the guard is x log(x + [x = 0]) alone: its value at x = 0 is already 0 and y needs no
    masking (eager kl_div: 5 whole-tensor ops instead of 11, one of them a where)."""
    if ctx.bounds(y)[0] > 0:
        return ir.xlogy(x, y)
    zero = sp.Eq(x, 0)
    if x == y:
        return x * sp.log(shifted(x, zero, 1))
    return sp.Piecewise((x * sp.log(shifted(y * ir.iverson(sp.Not(zero)), zero, 1)), sp.Not(zero)), (0, True))


def r_xlogy_at_zero(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    return safe_xlogy(*e.args, ctx) if isinstance(e, ir.xlogy) else None


SAFE_POINT = {sp.StrictGreaterThan: 1, sp.GreaterThan: 1, sp.StrictLessThan: -1, sp.LessThan: -1}


def _pole(node: sp.Basic) -> tuple[sp.Basic, float] | None:
    """The argument of a log, xlogy, root or negative power and the value at or below which it is singular."""
    if isinstance(node, (sp.log, ir.log1p)):
        return node.args[0], (0.0 if isinstance(node, sp.log) else -1.0)
    if isinstance(node, ir.xlogy):
        return node.args[1], 0.0
    if isinstance(node, sp.Pow) and not (node.exp.is_Integer and node.exp > 0):
        return node.base, 0.0
    return None


def _guarded(a: sp.Basic, u: sp.Basic) -> bool:
    """Whether a already reads u through a where on u (a rule's own double-where, logsumexp's shifted sum)."""
    relations = (r for p in a.atoms(sp.Piecewise) for c in p.args for r in c.cond.atoms(sp.core.relational.Relational))
    return any(r.has(u) for r in relations)


def _open_poles(e: sp.Basic, u: sp.Basic, ctx: Ctx) -> list[sp.Basic]:
    """The nodes of e with a pole in something built from u that u's bounds let them reach and no guard
    keeps away: inf or NaN (with an infinite derivative) outside the branch's condition on u."""
    out = []
    for node in sp.preorder_traversal(e):
        p = _pole(node)
        if p is not None and p[0].has(u) and ctx.bounds(p[0])[0] <= p[1] and not _guarded(p[0], u):
            out.append(node)
    return out


def r_guarded_branch(e: sp.Basic, ctx: Ctx) -> sp.Basic | None:
    """where(u > k, f(u), g): f is evaluated everywhere and where() passes 0 * f'(u) back, NaN where f'(u) is
    infinite (Stirling's t log t + log(2 pi t)/2 at t = 0). f reads u only where the condition holds and a
    safe point k + 1 elsewhere (the double-where), so the value is unchanged and the gradient finite."""
    if not isinstance(e, sp.Piecewise) or len(e.args) < 2:
        return None
    (expr, cond), rest = e.args[0], e.args[1:]
    step = SAFE_POINT.get(type(cond))
    if step is None or not cond.rhs.is_number or cond.lhs.is_number:
        return None
    u = cond.lhs
    if not _open_poles(expr, u, ctx):
        return None
    safe = shifted(u * ir.iverson(cond), sp.Not(cond), cond.rhs + step)
    return sp.Piecewise((_substitute(expr, u, safe), cond), *rest)


def _substitute(e: sp.Basic, u: sp.Basic, by: sp.Basic) -> sp.Basic:
    """e with u replaced by `by` outside conditions: every value f reads is safe (t log t at t < 0 is NaN, and
    0 * NaN is NaN in the backward pass too), while nested wheres keep testing the real u."""
    if e == u:
        return by
    if not e.args or e.is_Boolean or isinstance(e, sp.core.relational.Relational):
        return e
    args = [_substitute(a, u, by) for a in e.args]
    return e.func(*args) if any(a is not b for a, b in zip(args, e.args, strict=True)) else e


BCE_PROB = "loss b(p: prob, y: binary):\n    -(y*log(p) + (1 - y)*log(1 - p))\n"
RULES: list[Rule] = [
    Rule("log_sigmoid", "log(sigmoid(a))", "logsigmoid(a) = -softplus(-a)", "none",
         wild(sp.log(ir.sigmoid(A)), ir.logsigmoid), "log(sigmoid(x))", "log(sigmoid(x) + 1)"),
    Rule("log_one_minus_sigmoid", "log(1 - sigmoid(a))", "logsigmoid(-a) = -softplus(a)", "none",
         wild(sp.log(1 - ir.sigmoid(A)), lambda a: ir.logsigmoid(-a)), "log(1 - sigmoid(x))",
         "log(2 - sigmoid(x))"),
    Rule("log_one_plus_exp", "log(1 + exp(a))", "softplus(a) = -logsigmoid(-a)", "none",
         wild(sp.log(1 + sp.exp(A)), softplus), "log(1 + exp(x))", "log(2 + exp(x))"),
    Rule("log1p_exp", "log1p(exp(a))", "softplus(a) = -logsigmoid(-a)", "none",
         wild(ir.log1p(sp.exp(A)), softplus), "log1p(exp(x))", "log1p(exp(x) + 1)"),
    Rule("log_cosh", "log(cosh(a))",
         "c = min(|a|, 20): log1p(2 sinh(c / 2)^2) + (|a| - c); derivative tanh(a)",
         "none", wild(sp.log(sp.cosh(A)), ir.logcosh), "log(cosh(x))", "log(cosh(x) + 1)", (-1e4, 1e4)),
    Rule("log_cosh_identity", "a + softplus(-2a) - log 2", "log(cosh(a)), computed as the log_cosh rule's form",
         "the three terms appear together in one sum", r_log_cosh_identity, "x + softplus(-2*x) - log(2)",
         "x + softplus(-2*x) - log(3)", (-1e-3, 1e-3)),
    Rule("prob_log_clamp", "log(p), log(1 - p), log1p(-p) with p: prob", "max(log p, -100), max(log1p(-p), -100)",
         "p has kind prob (torch's binary_cross_entropy clamps there)", r_prob_log, BCE_PROB,
         "loss b(p, y: binary):\n    -(y*log(p) + (1 - y)*log(1 - p))\n", (0.0, 1.0)),
    Rule("log_softmax", "log(exp(a) / sum_c exp(b)), a = b at c = v",
         "-softplus(logsumexp_{c != v}(b - a)) (log_softmax_c(b) when a = b)",
         "the sum is over one index; a is one of the b's (else -logsumexp(b - a))", r_log_exp_ratio,
         "loss ce(x[n, c], y[n]: index(c)):\n    -log(exp(x[n, y]) / sum_c(exp(x[n, c])))\n",
         "loss ce(x[n, c], y[n]: index(c)):\n    -log(2*exp(x[n, y]) / sum_c(exp(x[n, c])))\n"),
    Rule("log_of_softmax", "log(softmax_c(a))", "log_softmax_c(a)", "none", r_log_softmax,
         "loss s(x[n, c]):\n    -log(softmax_c(x))\n", "loss s(x[n, c]):\n    -log(1 + softmax_c(x))\n",
         (-30.0, 30.0)),
    Rule("logsumexp", "log(sum_c exp(b))", "logsumexp_c(b)", "the summand is exactly exp(b)", r_logsumexp,
         "loss l(x[n, c]):\n    log(sum_c(exp(x[n, c])))\n", "loss l(x[n, c]):\n    log(sum_c(2*exp(x[n, c])))\n",
         (-1e4, 1e4)),
    Rule("logaddexp", "log(A + B + ...), each exp(u) or sum exp(u)", "logaddexp of u's and logsumexps",
         "every term is an exponential or a sum of exponentials", r_logaddexp,
         "loss l(x[n, c], z[n]):\n    log(exp(z[n]) + sum_c(exp(x[n, c])))\n",
         "loss l(x[n, c], z[n]):\n    log(z[n] + sum_c(exp(x[n, c])))\n", (-1e4, 1e4)),
    Rule("log1p", "log(1 + a)", "log1p(a)", "the constant term is exactly 1", r_log1p,
         "log(1 + x)", "log(2 + x)", (-0.9, 1e-3)),
    Rule("expm1", "exp(a) - 1", "expm1(a)", "the constant term is exactly -1 (or 1 - exp(a))", r_expm1,
         "exp(x) - 1", "exp(x) - 2", (-1e-3, 1e-3)),
    Rule("softmax", "exp(a) / sum_c exp(b)", "softmax_c(b) read at a's position (else exp(-logsumexp(b - a)))",
         "the sum is over one index not free in a", r_softmax,
         "loss s(x[n, c]):\n    exp(x[n, c]) / sum_c(exp(x[n, c]))\n",
         "loss s(x[n, c]):\n    exp(x[n, c]) / sum_c(exp(x[n, c]) + 1)\n", (-1e4, 1e4)),
    Rule("lse_minus_member", "logsumexp_c(b) - a, a = b at c = v", "softplus(logsumexp_{c != v}(b - a))",
         "a is one of the b's at a position other than c itself", r_lse_minus_member,
         "loss ce(x[n, c], y[n]: index(c)):\n    -x[n, y] + logsumexp_c(x[n, c])\n",
         "loss ce(x[n, c], z[n]):\n    -z[n] + logsumexp_c(x[n, c])\n", (-1e4, 1e4)),
    Rule("xlogx", "x log(x)", "xlogy(x, x) (0 at x = 0, gradient finite: safe_xlogy)",
         "the factor is the log's argument", r_xlogx,
         "x*log(x)", "x*log(y)", (0.0, 5.0)),
    Rule("xlog_ratio", "x log(x / y)", "xlogy(x, x) - xlogy(x, y)", "the factor is the ratio's numerator",
         r_xlog_ratio, "x*log(x/y)", "y*log(x/y)", (0.0, 5.0)),
    Rule("norm_at_zero", "sqrt(sum_d b^2)", "norm_d(b) (torch's norm: gradient 0 at 0)",
         "the sum is unconditioned and its body a square", r_norm,
         "loss l(x[n, d]):\n    sqrt(sum_d(x[n, d]^2))\n", "loss l(x[n, d]):\n    sqrt(sum_d(x[n, d]^3))\n"),
    Rule("sqrt_at_zero", "sqrt(b)", "sqrt(b) with gradient 0 (not inf) where b = 0",
         "b >= 0 and can reach 0 (by kinds, |.|, squares, saturation)", r_sqrt,
         "loss l(p: prob):\n    sqrt(p)\n", "loss l(p: positive):\n    sqrt(p)\n", (0.0, 1.0)),
    Rule("frac_pow_at_zero", "b^g, 0 < g < 1 (or a parameter g)", "b^g with gradient 0 where b = 0 (g < 1)",
         "b >= 0 and can reach 0", r_frac_pow,
         "loss l(p: prob; g = 0.5 >= 0):\n    (1 - p)^g\n", "loss l(p: prob):\n    (1 - p)^1.5\n", (0.0, 1.0)),
    Rule("guarded_branch", "where(u > k, f(u), g) (also >=, <, <=), f singular outside",
         "f read at u where the condition holds and at k + 1 (k - 1) elsewhere: a finite unused gradient",
         "the condition bounds u by a constant; f has a log, xlogy, root or negative power of u",
         r_guarded_branch, "where(x > 1, x*log(x) + 0.5*log(x), 0)", "where(x > 1, x^2 - x, 0)", (-3.0, 3.0),
         late=True),
    Rule("xlogy_at_zero", "xlogy(x, y)", "x log(y) where x != 0 (y read as 1 elsewhere), else 0",
         "y can reach 0 (its gradient x / y is then 0 / 0)", r_xlogy_at_zero, "xlogy(x, y)",
         "loss l(x, y: positive):\n    xlogy(x, y)\n", (0.0, 3.0), late=True),
    Rule("implied_clamp", "max(a, c) (min(a, c)), c a constant", "a",
         "a's bounds already keep it >= c (<= c), as the prob_log rule's clamped log does", r_implied_clamp,
         "loss b(p: prob):\n    max(log(p), -100)\n", "max(log(x), -100)", (0.0, 1.0), late=True),
    Rule("empty_ratio", "num / den, den a sum of non-negative terms", "1 where num = den = 0, else num/den",
         "den >= 0, has no constant term (eps) and sums over an axis (an empty mask makes it 0)",
         r_empty_ratio,
         "loss d(p[n, k]: prob, g[n, k]: binary):\n    1 - 2*sum_k(p*g) / (sum_k(p) + sum_k(g))\n",
         "loss d(p[n, k]: prob, g[n, k]: binary):\n    1 - (2*sum_k(p*g) + 1) / (sum_k(p) + sum_k(g) + 1)\n",
         (0.0, 1.0)),
]


LEAVES = (sp.Indexed, ir.Size, sp.Tuple)


class Rewriter:
    """Applies the table to one expression, outermost first, recording firings."""

    def __init__(self, ctx: Ctx, statements: list[tuple[str, sp.Expr]]) -> None:
        self.ctx = ctx
        self.statements = statements
        self.fired: list[dict] = []

    def where(self, e: sp.Basic) -> str:
        return next((name for name, value in self.statements if value.has(e)), "result")

    def step(self, e: sp.Basic, late: bool = False) -> sp.Basic | None:
        for rule in RULES:
            if rule.late and not late:
                continue
            out = rule.apply(e, self.ctx)
            if out is not None and out != e:
                self.fired.append({"pass": PASS_NAME, "rule": rule.name, "where": self.where(e),
                                   "before": sp.sstr(e), "after": sp.sstr(out)})
                return out
        return None

    def walk(self, e: sp.Basic, branches: bool = True) -> sp.Basic:
        """Rewrite e outermost first. `branches`: whether a where's branches (ExprCondPair, a Tuple) are
        walked too; they are in the user's formula, not inside a rule's output, whose guards would
        otherwise be guarded again (the sqrt and power rules' shifted bases)."""
        leaf = isinstance(e, LEAVES) and not (branches and isinstance(e, ExprCondPair))
        if not e.args or leaf or e.is_Boolean:
            return e
        out = self.step(e)
        e = out if out is not None else e
        if not e.args or e.is_Boolean:
            return e
        args = [self.walk(a, branches and out is None) for a in e.args]
        if any(x is not y for x, y in zip(args, e.args, strict=True)):
            e = e.func(*args)
        again = self.step(e, late=True) if out is None else None
        return again if again is not None else e


@passes.register(PASS_NAME)
def stability(loss: ir.LossIR) -> ir.LossIR:
    """The pass: rewrite the loss (and its reduction weight), keep the naive expression for the report."""
    rw = Rewriter(Ctx(loss), loss.statements)
    expr = rw.walk(loss.expr)
    weight = rw.walk(loss.reduce_weight) if loss.reduce_weight is not None else None
    note = {"pass": PASS_NAME, "rule": None, "naive": loss.expr, "naive_weight": loss.reduce_weight}
    return dataclasses.replace(loss, expr=expr, reduce_weight=weight, notes=[*loss.notes, note, *rw.fired])


def fired(loss: ir.LossIR) -> list[str]:
    """Names of the rules that fired on a loss, in order."""
    return [n["rule"] for n in loss.notes if n.get("pass") == PASS_NAME and n.get("rule")]


def naive(loss: ir.LossIR) -> ir.LossIR:
    """The loss as the front end produced it (before this pass)."""
    note = next((n for n in loss.notes if n.get("pass") == PASS_NAME and n.get("rule") is None), None)
    if note is None:
        return loss
    kept = [n for n in loss.notes if n.get("pass") != PASS_NAME]
    return dataclasses.replace(loss, expr=note["naive"], reduce_weight=note["naive_weight"], notes=kept)


__all__ = ["RULES", "Rule", "fired", "naive", "stability"]
