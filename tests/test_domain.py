"""lossdsl.domain: interval bounds of IR expressions from input kinds and parameter constraints.

The stability rules decide with these bounds whether a rewrite is needed and whether it is safe: "the base
of this sqrt is >= 0 and can reach 0" (lo == 0), "y of this xlogy stays > 0" (lo > 0), "the clamp
max(a, c) is implied" (lo >= c). A bound that is too narrow makes a rule drop a clamp or a guard the
formula needs, so the central test is soundness: for random expressions built from the IR's constructors
and random points inside each input kind's domain and each parameter's constraint, the value computed in
mpmath (independently of the package, rounded to float64 the way generated code saturates) lies within
the computed bounds. Hand-derived intervals pin what the rules' preconditions read (exact 0 ends, strict
positivity, the constraint ops), and end-to-end reproductions show what an unsound bound does to a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ir
from lossdsl.domain import Bounds

mp = mpmath.mp
INF = math.inf
Interval = tuple[float, float]

# ---- a loss with one scalar leaf per kind and per constraint op (what the front end makes of undeclared
# shapes: a real Symbol, an integer Symbol for integral kinds)
KINDS = {"p": "prob", "b": "binary", "s": "sign", "n": "count", "q": "positive", "x": "real", "z": "logits",
         "i": "int"}
PARAMS: dict[str, tuple[str, tuple[float, ...]] | None] = {
    "a": ("in", (-2.0, 3.0)), "g": (">=", (0.0,)), "h": (">", (0.0,)), "w": ("<", (1.0,)), "v": ("<=", (-1.0,)),
    "u": None,
}
INTEGRAL = {"count", "int", "index"}


def leaf(name: str) -> sp.Symbol:
    kind = KINDS.get(name)
    return sp.Symbol(name, integer=True) if kind in INTEGRAL else sp.Symbol(name, real=True)


def make_loss(kinds: dict[str, str] | None = None,
              params: dict[str, tuple[str, tuple[float, ...]] | None] | None = None,
              axes: dict[str, tuple[str, ...]] | None = None) -> ir.LossIR:
    """A LossIR holding only declarations (Bounds reads nothing else)."""
    kinds = KINDS if kinds is None else kinds
    params = PARAMS if params is None else params
    axes = axes or {}
    inputs = [ir.Input(name, axes.get(name), kind, "c" if kind == "index" else None) for name, kind in kinds.items()]
    ps = [ir.Param(name, axes.get(name), None, 1.0, cons) for name, cons in params.items()]
    return ir.LossIR(name="t", inputs=inputs, params=ps, expr=sp.Integer(0), free=(), broadcast=True)


LOSS = make_loss()
P, B, S, N, Q, X, Z = (leaf(c) for c in "pbsnqxz")
A, G, H, W, V, U = (sp.Symbol(c, real=True) for c in "aghwvu")
k, m, c = (ir.index_symbol(name) for name in "kmc")


def bounds(e: sp.Basic, loss: ir.LossIR = LOSS) -> Interval:
    return Bounds(loss)(e)


# ---- hand-derived bounds: kinds, constraints, and the exact ends the rules compare against
@pytest.mark.parametrize(("name", "expected"), [
    ("p", (0.0, 1.0)), ("b", (0.0, 1.0)), ("s", (-1.0, 1.0)), ("n", (0.0, INF)), ("x", (-INF, INF)),
    ("z", (-INF, INF)), ("i", (-INF, INF)),
])
def test_each_kind_bounds_its_input(name: str, expected: Interval) -> None:
    assert bounds(leaf(name)) == expected


def test_positive_inputs_are_strictly_positive_but_may_be_arbitrarily_small() -> None:
    lo, hi = bounds(Q)
    assert 0 < lo <= 5e-324 and hi == INF  # the xlogy rule asks lo > 0; any double > 0 is a valid positive
    assert bounds(Q) != bounds(P)


@pytest.mark.parametrize(("name", "expected"), [
    ("a", (-2.0, 3.0)), ("g", (0.0, INF)), ("w", (-INF, 1.0)), ("v", (-INF, -1.0)), ("u", (-INF, INF)),
])
def test_each_constraint_op_bounds_its_parameter(name: str, expected: Interval) -> None:
    assert bounds(sp.Symbol(name, real=True)) == expected


def test_a_strict_lower_bound_excludes_the_bound_itself() -> None:
    lo, hi = bounds(H)  # h > 0: a denominator that never reaches 0
    assert lo > 0 and lo == math.nextafter(0.0, 1.0) and hi == INF
    lo, _ = bounds(sp.Symbol("t", real=True), make_loss({}, {"t": (">", (2.5,))}))
    assert 2.5 < lo < 2.5 + 1e-15


def test_constraints_parsed_from_the_language_reach_the_bounds() -> None:
    src = ("loss l(x; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0, eps = 1e-5 > 0, beta = -1.0 <= 0):\n"
           "    alpha * x + gamma + eps + beta\n")
    loss = lossdsl.parse(src).ir
    sym = {name: sp.Symbol(name, real=True) for name in ("alpha", "gamma", "eps", "beta")}
    assert Bounds(loss)(sym["alpha"]) == (0.0, 1.0)
    assert Bounds(loss)(sym["gamma"]) == (0.0, INF)
    assert Bounds(loss)(sym["eps"])[0] > 0
    assert Bounds(loss)(sym["beta"]) == (-INF, 0.0)


def test_inputs_and_parameters_with_axes_are_bounded_through_their_base() -> None:
    loss = make_loss({"p": "prob", "y": "index"}, {"wt": (">=", (0.0,))},
                     axes={"p": ("n", "c"), "y": ("n",), "wt": ("c",)})
    n = ir.index_symbol("n")
    pb, wb = sp.IndexedBase("p"), sp.IndexedBase("wt")
    assert Bounds(loss)(pb[n, c]) == (0.0, 1.0)
    assert Bounds(loss)(wb[c] * pb[n, c]) == (0.0, INF)
    assert Bounds(loss)(sp.IndexedBase("y")[n]) == (0.0, INF)


def test_names_the_loss_does_not_declare_are_unbounded() -> None:
    assert bounds(sp.Symbol("nowhere", real=True)) == (-INF, INF)
    assert bounds(sp.IndexedBase("nowhere")[k]) == (-INF, INF)


def test_index_symbols_and_axis_sizes() -> None:
    assert bounds(k) == (0.0, INF)
    assert bounds(ir.Size(k)) == (1.0, INF)
    assert bounds(k / ir.Size(k)) == (0.0, INF)


def test_bounds_belong_to_one_loss() -> None:
    """The memo is per Bounds object: the same symbol is bounded by each loss's own declaration."""
    t = sp.Symbol("t", real=True)
    as_prob = Bounds(make_loss({"t": "prob"}, {}))
    as_sign = Bounds(make_loss({"t": "sign"}, {}))
    assert as_prob(t**2) == (0.0, 1.0)
    assert as_sign(t) == (-1.0, 1.0)
    assert as_prob(t) == (0.0, 1.0)


E = math.e
HAND: list[tuple[str, sp.Basic, Interval]] = [
    ("one_minus_prob", 1 - P, (0.0, 1.0)),
    ("prob_product", P * B, (0.0, 1.0)),
    ("prob_difference", P - B, (-1.0, 1.0)),
    ("affine", 2 * P + 1, (1.0, 3.0)),
    ("sign_times_real_param", S * A, (-3.0, 3.0)),
    ("count_times_prob", N * P, (0.0, INF)),
    ("zero_times_unbounded", sp.Mul(0, X, evaluate=False), (0.0, 0.0)),
    ("even_power_through_zero", A**2, (0.0, 9.0)),
    ("even_power_of_negative", (V - 1) ** 2, (4.0, INF)),
    ("odd_power", A**3, (-8.0, 27.0)),
    ("square_of_real", X**2, (0.0, INF)),
    ("sqrt_of_prob", sp.sqrt(P), (0.0, 1.0)),
    ("frac_power_of_param", (A + 2) ** sp.Rational(3, 2), (0.0, 5.0**1.5)),
    ("reciprocal_of_prob", 1 / P, (1.0, INF)),
    ("reciprocal_of_interval", 1 / (A + 3), (1 / 6, 1.0)),
    ("inverse_square_root", (1 + P) ** sp.Rational(-1, 2), (2**-0.5, 1.0)),
    ("root_of_real", sp.sqrt(X), (-INF, INF)),
    ("exp_of_interval", sp.exp(A), (math.exp(-2.0), math.exp(3.0))),
    ("exp_of_real", sp.exp(X), (0.0, INF)),
    ("log_of_prob", sp.log(P), (-INF, 0.0)),
    ("log_of_interval", sp.log(A + 3), (0.0, math.log(6.0))),
    ("log1p_of_prob", ir.log1p(P), (0.0, math.log(2.0))),
    ("expm1_of_prob", ir.expm1(P), (0.0, E - 1)),
    ("sigmoid_saturates", ir.sigmoid(X), (0.0, 1.0)),
    ("logsigmoid", ir.logsigmoid(X), (-INF, 0.0)),
    ("softplus", ir.softplus(X), (0.0, INF)),
    ("logcosh", ir.logcosh(X), (0.0, INF)),
    ("relu_of_interval", ir.relu(A), (0.0, 3.0)),
    ("relu_of_negative", ir.relu(V), (0.0, 0.0)),
    ("abs_through_zero", sp.Abs(A), (0.0, 3.0)),
    ("abs_of_negative", sp.Abs(V - 1), (2.0, INF)),
    ("tanh", sp.tanh(X), (-1.0, 1.0)),
    ("erf", sp.erf(X), (-1.0, 1.0)),
    ("sin", sp.sin(X), (-1.0, 1.0)),
    ("cos", sp.cos(X), (-1.0, 1.0)),
    ("cosh", sp.cosh(X), (1.0, INF)),
    ("sign", sp.sign(X), (-1.0, 1.0)),
    ("unknown_function", sp.sinh(P), (-INF, INF)),
    ("max_with_constant", sp.Max(P, sp.Rational(1, 2)), (0.5, 1.0)),
    ("min_with_constant", sp.Min(P, sp.Rational(1, 2)), (0.0, 0.5)),
    ("clamped_log", sp.Max(sp.log(P), -100), (-100.0, 0.0)),
    ("where", sp.Piecewise((P, X > 0), (2 + P, True)), (0.0, 3.0)),
    ("iverson", ir.iverson(X > 0), (0.0, 1.0)),
    ("constant", sp.Rational(3, 4), (0.75, 0.75)),
    ("imaginary_constant", sp.I, (-INF, INF)),
]


@pytest.mark.parametrize(("e", "expected"), [(e, iv) for _, e, iv in HAND], ids=[name for name, _, _ in HAND])
def test_hand_derived_bounds(e: sp.Basic, expected: Interval) -> None:
    lo, hi = bounds(e)
    assert lo == pytest.approx(expected[0], rel=1e-15, abs=0)
    assert hi == pytest.approx(expected[1], rel=1e-15, abs=0)


pb, xb = sp.IndexedBase("p"), sp.IndexedBase("x")
AXES_LOSS = make_loss({"p": "prob", "x": "real"}, {}, axes={"p": ("k",), "x": ("k",)})
RED: list[tuple[str, sp.Basic, Interval]] = [
    ("sum_of_nonnegative", ir.Sum_(pb[k], sp.Tuple(k), sp.true), (0.0, INF)),
    ("sum_of_nonpositive", ir.Sum_(-pb[k], sp.Tuple(k), sp.true), (-INF, 0.0)),
    ("sum_of_zero_free_product", ir.Sum_(pb[k] * pb[m], sp.Tuple(k, m), sp.true), (0.0, INF)),
    ("sum_of_real", ir.Sum_(xb[k], sp.Tuple(k), sp.true), (-INF, INF)),
    ("prod", ir.Prod_(pb[k], sp.Tuple(k), sp.true), (-INF, INF)),
    ("mean", ir.Mean_(pb[k], sp.Tuple(k), sp.true), (0.0, 1.0)),
    ("max", ir.Max_(pb[k], sp.Tuple(k), sp.true), (0.0, 1.0)),
    ("min", ir.Min_(2 * pb[k] - 1, sp.Tuple(k), sp.true), (-1.0, 1.0)),
    ("logsumexp", ir.LogSumExp_(pb[k], sp.Tuple(k), sp.true), (0.0, INF)),
    ("norm", ir.Norm_(xb[k], sp.Tuple(k), sp.true), (0.0, INF)),
    ("softmax", ir.Softmax(xb[k], k), (0.0, 1.0)),
    ("log_softmax", ir.LogSoftmax(xb[k], k), (-INF, 0.0)),
    ("at", ir.At(pb[k], sp.Tuple(k), sp.Tuple(0)), (0.0, 1.0)),
    ("dice_denominator", ir.Sum_(pb[k], sp.Tuple(k), sp.true) + ir.Sum_(pb[m], sp.Tuple(m), sp.true), (0.0, INF)),
]


@pytest.mark.parametrize(("e", "expected"), [(e, iv) for _, e, iv in RED], ids=[name for name, _, _ in RED])
def test_hand_derived_bounds_of_tensor_nodes(e: sp.Basic, expected: Interval) -> None:
    assert Bounds(AXES_LOSS)(e) == expected


# ---- soundness: the value at any point of the domain lies within the bounds
class UndefinedError(Exception):
    """The real value does not exist there (log of a negative, 0 to a negative power): bounds claim nothing."""


def _real(v: mpmath.mpf | mpmath.mpc) -> mpmath.mpf:
    if isinstance(v, mpmath.mpc):
        if v.imag != 0:
            raise UndefinedError
        v = v.real
    if mp.isnan(v):
        raise UndefinedError
    return v


MP_FUNCS: dict[type, Callable[[mpmath.mpf], mpmath.mpf]] = {
    sp.exp: mp.exp, sp.log: mp.log, ir.log1p: mp.log1p, ir.expm1: mp.expm1,
    ir.sigmoid: lambda t: 1 / (1 + mp.exp(-t)), ir.logsigmoid: lambda t: -mp.log1p(mp.exp(-t)),
    ir.softplus: lambda t: mp.log1p(mp.exp(t)), ir.logcosh: lambda t: mp.log(mp.cosh(t)),
    ir.relu: lambda t: max(t, mp.mpf(0)), sp.Abs: abs, sp.tanh: mp.tanh, sp.erf: mp.erf, sp.sin: mp.sin,
    sp.cos: mp.cos, sp.cosh: mp.cosh, sp.sign: mp.sign,
}


COMPARE: dict[type, Callable[[mpmath.mpf, mpmath.mpf], bool]] = {
    sp.StrictGreaterThan: lambda a, b: a > b, sp.StrictLessThan: lambda a, b: a < b,
    sp.GreaterThan: lambda a, b: a >= b, sp.LessThan: lambda a, b: a <= b,
    sp.Eq: lambda a, b: a == b, sp.Ne: lambda a, b: a != b,
}


class MpEval:
    """An expression's value in mpmath at 50 digits, and the largest magnitude met on the way (the scale of
    the rounding error a float64 bound may carry)."""

    def __init__(self, env: dict[sp.Basic, float]) -> None:
        self.env = env
        self.scale = mp.mpf(1)

    def __call__(self, e: sp.Basic) -> mpmath.mpf:
        v = _real(self._eval(e))
        if mp.isfinite(v):
            if abs(v) > 1e300:  # float64 saturates there (inf - inf is NaN in float too); mpmath would go on
                raise UndefinedError  # (cos(exp(1e300)) takes forever): the properties cover the finite range
            self.scale = max(self.scale, abs(v))
        return v

    def _eval(self, e: sp.Basic) -> mpmath.mpf | mpmath.mpc:
        if e.is_Atom and e.is_number:  # 3/2, pi, E; compound constants are evaluated node by node below
            if e.has(sp.zoo, sp.nan, sp.oo, -sp.oo, sp.I):
                raise UndefinedError
            return mp.mpf(sp.N(e, 60))
        if e in self.env:
            return mp.mpf(self.env[e])
        if isinstance(e, sp.Add):
            return mp.fsum(self(a) for a in e.args)
        if isinstance(e, sp.Mul):
            out = mp.mpf(1)
            for a in e.args:
                out *= self(a)
            return out
        if isinstance(e, sp.Pow):
            base, ex = self(e.base), self(e.exp)
            if base == 0 and ex <= 0:
                raise UndefinedError
            return mp.power(base, ex) if base > 0 else mp.power(mp.mpc(base), ex)
        if isinstance(e, (sp.Max, sp.Min)):
            vals = [self(a) for a in e.args]
            return max(vals) if isinstance(e, sp.Max) else min(vals)
        if isinstance(e, sp.Piecewise):
            for expr, cond in e.args:
                if cond == sp.true or self.holds(cond):
                    return self(expr)
            raise UndefinedError
        if e.func in MP_FUNCS:
            arg = self(e.args[0])
            if isinstance(e, sp.log) and arg == 0:
                return mp.ninf
            return MP_FUNCS[e.func](arg)
        if isinstance(e, (sp.re, sp.im, sp.arg, sp.atan2)):
            raise UndefinedError  # SymPy's form of |exp(sqrt(a))| for a that may be negative: a complex value
        raise AssertionError(f"no reference evaluation for {e.func}")

    def holds(self, cond: sp.Basic) -> bool:
        if cond in (sp.true, sp.false):
            return bool(cond)
        if isinstance(cond, (sp.And, sp.Or)):
            parts = [self.holds(a) for a in cond.args]
            return all(parts) if isinstance(cond, sp.And) else any(parts)
        if isinstance(cond, sp.Not):
            return not self.holds(cond.args[0])
        if isinstance(cond, sp.ITE):
            return self.holds(cond.args[1]) if self.holds(cond.args[0]) else self.holds(cond.args[2])
        return COMPARE[type(cond)](self(cond.lhs), self(cond.rhs))


def as_float64(v: mpmath.mpf) -> float:
    """The value as float64 holds it: beyond the range it saturates to ±inf (what the bounds count as reachable)."""
    return float(v)


def assert_within(v: mpmath.mpf, lo: float, hi: float, scale: mpmath.mpf) -> None:
    f = as_float64(v)
    tol = 1e-12 * float(scale)
    assert lo - tol <= f <= hi + tol, (f, lo, hi)


LEAF_VALUES: dict[str, st.SearchStrategy] = {
    "p": st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    "b": st.sampled_from([0.0, 1.0]),
    "s": st.sampled_from([-1.0, 1.0]),
    "n": st.integers(0, 30).map(float),
    "q": st.sampled_from([5e-324, 1e-300]) | st.floats(1e-300, 40.0),
    "x": st.sampled_from([-6.0, 6.0]) | st.floats(-6.0, 6.0),
    "z": st.sampled_from([-6.0, 6.0]) | st.floats(-6.0, 6.0),
    "a": st.sampled_from([-2.0, 3.0]) | st.floats(-2.0, 3.0),
    "g": st.sampled_from([0.0]) | st.floats(0.0, 6.0),
    "h": st.sampled_from([5e-324]) | st.floats(1e-300, 6.0),
    "w": st.floats(-6.0, 1.0, exclude_max=True),
    "v": st.sampled_from([-1.0]) | st.floats(-6.0, -1.0),
    "u": st.floats(-6.0, 6.0),
}
SYMBOLS = {name: (leaf(name) if name in KINDS else sp.Symbol(name, real=True)) for name in LEAF_VALUES}

UNARY = [sp.exp, sp.log, ir.log1p, ir.expm1, ir.sigmoid, ir.logsigmoid, ir.softplus, ir.logcosh, ir.relu, sp.Abs,
         sp.tanh, sp.erf, sp.sin, sp.cos, sp.cosh, sp.sign, sp.sqrt]
EXPONENTS = [sp.Integer(2), sp.Integer(3), sp.Integer(-1), sp.Integer(-2), sp.Rational(1, 2), sp.Rational(3, 2),
             sp.Rational(-1, 2), sp.Float(0.75)]
# A parameter exponent (g >= 0) is applied last only: inverted, (b^g)^-1 = b^(-g), it meets the known bug of
# test_a_power_with_a_possibly_negative_symbolic_exponent.
CONSTANTS = st.sampled_from([sp.Integer(0), sp.Integer(1), sp.Integer(-1), sp.Integer(2), sp.Rational(1, 2),
                             sp.Rational(-3, 2), sp.pi])


def _where(t: tuple[sp.Basic, sp.Basic, sp.Basic, sp.Basic]) -> sp.Basic:
    return sp.Piecewise((t[0], t[2] > t[3]), (t[1], True))


def _apply(t: tuple[Callable[[sp.Basic], sp.Basic], sp.Basic]) -> sp.Basic:
    return t[0](t[1])


def _real_only(build: Callable[[tuple], sp.Basic]) -> Callable[[tuple], sp.Basic]:
    """A node SymPy refuses (Max of zoo, a comparison with I) or one holding a non-real number becomes p: the
    IR of a loss is real."""

    def safe(t: tuple) -> sp.Basic:
        try:
            out = build(t)
        except (TypeError, ValueError):
            return P
        return P if out.has(sp.zoo, sp.nan, sp.I, sp.oo, -sp.oo) else out

    return safe


def _extend(sub: st.SearchStrategy) -> st.SearchStrategy:
    builders: list[tuple[st.SearchStrategy, Callable[[tuple], sp.Basic]]] = [
        (st.tuples(sub, sub), lambda t: t[0] + t[1]),
        (st.tuples(sub, sub), lambda t: t[0] - t[1]),
        (st.tuples(sub, sub), lambda t: t[0] * t[1]),
        (st.tuples(CONSTANTS, sub), lambda t: t[0] * t[1] + t[0]),
        (st.tuples(sub, st.sampled_from(EXPONENTS)), lambda t: t[0] ** t[1]),
        (st.tuples(st.sampled_from(UNARY), sub), _apply),
        (st.tuples(sub, sub), lambda t: sp.Max(t[0], t[1])),
        (st.tuples(sub, sub), lambda t: sp.Min(t[0], t[1])),
        (st.tuples(sub, sub, sub, CONSTANTS), _where),
    ]
    return st.one_of(*(args.map(_real_only(build)) for args, build in builders))


EXPRS = st.recursive(st.sampled_from(sorted(SYMBOLS.values(), key=str)) | CONSTANTS, _extend, max_leaves=6)
POINTS = st.fixed_dictionaries({SYMBOLS[name]: values for name, values in LEAF_VALUES.items()})


@settings(max_examples=250, deadline=None)
@given(e=EXPRS, point=POINTS)
def test_bounds_contain_every_value_of_the_domain(e: sp.Basic, point: dict[sp.Basic, float]) -> None:
    check_sound(e, point)


def check_sound(e: sp.Basic, point: dict[sp.Basic, float]) -> None:
    """e's value at point lies within its bounds; bounds() never raises nor gives a nan (either fails)."""
    lo, hi = bounds(e)
    ev = MpEval(point)
    with mp.workdps(50):
        try:
            v = ev(e)
        except (UndefinedError, ZeroDivisionError, ValueError, OverflowError):
            return  # not a real number there (or past what mpmath can reduce): the bounds claim nothing
        assert_within(v, lo, hi, ev.scale)


def _unary(fn: Callable[[sp.Basic], sp.Basic]) -> Callable[[sp.Basic, sp.Basic], sp.Basic]:
    return lambda a, b: _apply((fn, a))


def _power(ex: sp.Basic) -> Callable[[sp.Basic, sp.Basic], sp.Basic]:
    return lambda a, b: a**ex


OPS: dict[str, Callable[[sp.Basic, sp.Basic], sp.Basic]] = {
    **{f"unary_{fn.__name__}": _unary(fn) for fn in UNARY},
    "add": lambda a, b: a + b, "mul": lambda a, b: a * b,
    **{f"pow_{ex}": _power(ex) for ex in EXPONENTS}, "pow_g": _power(G),
    "max": sp.Max, "min": sp.Min, "where": lambda a, b: sp.Piecewise((a, X > 0), (b, True)),
}


@pytest.mark.parametrize("op", sorted(OPS))
@settings(max_examples=25, deadline=None)
@given(a=st.recursive(st.sampled_from(sorted(SYMBOLS.values(), key=str)), _extend, max_leaves=2),
       b=st.sampled_from(sorted(SYMBOLS.values(), key=str)), point=POINTS)
def test_each_operation_keeps_its_bounds_sound(op: str, a: sp.Basic, b: sp.Basic,
                                              point: dict[sp.Basic, float]) -> None:
    """Every function and operator of the IR, on leaves and small subtrees (the trees above reach each one
    only now and then)."""
    check_sound(_real_only(lambda t: OPS[op](*t))((a, b)), point)


def test_the_soundness_check_catches_a_narrow_bound() -> None:
    """The checker used above fails on a bound that misses a value (guarding against a vacuous property)."""
    ev = MpEval({P: 1.0})
    with mp.workdps(50), pytest.raises(AssertionError):
        assert_within(ev(sp.exp(P)), 1.0, 2.5, ev.scale)


BODIES: list[Callable[[sp.Basic], sp.Basic]] = [lambda t: t, lambda t: -t, lambda t: t**2, lambda t: 1 - 2 * t,
                                                sp.exp, ir.softplus, lambda t: sp.log(t + 1)]
REDUCTIONS = [ir.Sum_, ir.Mean_, ir.Prod_, ir.Max_, ir.Min_, ir.LogSumExp_, ir.Norm_]
MP_REDUCE: dict[type, Callable[[list], mpmath.mpf]] = {
    ir.Sum_: mp.fsum, ir.Mean_: lambda vs: mp.fsum(vs) / len(vs), ir.Prod_: mp.fprod, ir.Max_: max, ir.Min_: min,
    ir.LogSumExp_: lambda vs: mp.log(mp.fsum(mp.exp(t) for t in vs)),
    ir.Norm_: lambda vs: mp.sqrt(mp.fsum(t * t for t in vs)),
}


@settings(max_examples=120, deadline=None)
@given(kind=st.sampled_from(["prob", "real", "sign", "positive", "count"]), body=st.sampled_from(BODIES),
       red=st.sampled_from(REDUCTIONS), data=st.data())
def test_reductions_over_nonempty_sets_stay_within_bounds(kind: str, body: Callable, red: type,
                                                          data: st.DataObject) -> None:
    values = {"prob": st.floats(0, 1), "real": st.floats(-6, 6), "sign": st.sampled_from([-1.0, 1.0]),
              "positive": st.floats(1e-300, 40), "count": st.integers(0, 30).map(float)}[kind]
    elems = data.draw(st.lists(values, min_size=1, max_size=5))
    loss = make_loss({"t": kind}, {}, axes={"t": ("k",)})
    e = red(body(sp.IndexedBase("t")[k]), sp.Tuple(k), sp.true)
    lo, hi = Bounds(loss)(e)
    with mp.workdps(50):
        try:
            parts = [MpEval({leaf("t"): t})(body(leaf("t"))) for t in elems]
            v = _real(MP_REDUCE[red](parts))  # a product of 0 and -inf (log(0)) is no number either
        except UndefinedError:
            return
        assert_within(v, lo, hi, max([mp.mpf(1), *(abs(t) for t in parts if mp.isfinite(t))]))


def test_an_empty_sum_is_within_its_bounds() -> None:
    """sum over an empty set is 0 (the emitter's identity): the bounds of a sum always contain 0."""
    for body in (pb[k], -pb[k], xb[k]):
        lo, hi = Bounds(AXES_LOSS)(ir.Sum_(body, sp.Tuple(k), sp.Ne(k, m)))
        assert lo <= 0 <= hi


# ---- what the rules' preconditions read
def test_exact_zero_ends_mean_the_value_can_reach_zero() -> None:
    """sqrt_at_zero and frac_pow_at_zero fire on lo == 0 exactly; a positive input keeps lo > 0."""
    assert bounds(P)[0] == 0.0 and bounds(X**2)[0] == 0.0 and bounds(sp.Abs(X))[0] == 0.0
    assert bounds(P * B)[0] == 0.0 and bounds(1 - P)[0] == 0.0 and bounds(ir.sigmoid(X))[0] == 0.0
    assert bounds(sp.exp(X))[0] == 0.0  # exp saturates to 0 in float
    assert bounds(Q)[0] > 0 and bounds(Q + P)[0] > 0 and bounds(H * Q)[0] >= 0


# ---- bugs: each test shows an unsound bound (or a crash) and, where it reaches a loss, the wrong value
EMPTY = [(ir.Max_, -INF), (ir.Min_, INF), (ir.LogSumExp_, -INF)]


@pytest.mark.parametrize(("red", "identity"), EMPTY, ids=["max", "min", "logsumexp"])
def test_a_conditional_reduction_may_be_empty(red: type, identity: float) -> None:
    lo, hi = Bounds(AXES_LOSS)(red(pb[k], sp.Tuple(k), sp.Ne(k, m)))
    assert lo <= identity <= hi


def test_a_clamp_around_an_empty_max_is_kept(cache_dir) -> None:
    src = "loss a(p[n, c]: prob):\n    max(max_{k != n}(p[k, 0]), 0)\n"
    out = lossdsl.compile(src, reduction="none")(torch.full((1, 3), 0.5, dtype=torch.float64))
    assert out.tolist() == [0.0]


@pytest.mark.parametrize(("exponent", "at"), [(U, {U: -1.0}), (-G, {G: 2.0})], ids=["unconstrained", "negated"])
def test_a_power_with_a_possibly_negative_symbolic_exponent(exponent: sp.Basic, at: dict) -> None:
    lo, hi = bounds((1 - P / 2) ** exponent)
    value = (1 - 0.5 / 2) ** float(exponent.subs(at))  # p = 0.5: 4/3 (u = -1), 16/9 (g = 2)
    assert lo <= value <= hi


def test_a_clamp_around_a_reciprocal_power_is_kept(cache_dir) -> None:
    src = "loss a(p: prob; g = 2.0 >= 0):\n    min(1 / (1 - p/2)^g, 1)\n"
    out = lossdsl.compile(src, reduction="none")(torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert out.tolist() == [1.0, 1.0]


def test_integer_power_beyond_float_range_is_unbounded() -> None:
    loss = make_loss({}, {"t": ("in", (0.0, 100.0))})
    assert Bounds(loss)(sp.Symbol("t", real=True) ** 200) == (0.0, INF)


def test_a_loss_with_a_large_integer_power_compiles(cache_dir) -> None:
    loss = lossdsl.parse("loss l(x; a = 1.0 in [0, 100]):\n    max(a^200 * x, 1)\n")
    assert loss.ir.expr.has(sp.Max)


@pytest.mark.parametrize(("e", "value"), [(ir.softplus(sp.Integer(1)), math.log1p(math.e)),
                                          (ir.relu(sp.Integer(1)), 1.0), (ir.logsigmoid(sp.Integer(0)), -math.log(2)),
                                          (ir.logcosh(sp.Integer(2)), math.log(math.cosh(2)))],
                         ids=["softplus", "relu", "logsigmoid", "logcosh"])
def test_bounds_of_a_constant_ir_function(e: sp.Basic, value: float) -> None:
    """A number built from the IR's own functions bounds itself (it crashed complex() before ir's _Numeric)."""
    lo, hi = bounds(e)
    assert lo == pytest.approx(value, rel=1e-15) and hi == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize(("src", "const"), [
    ("loss l(x):\n    sqrt(x^2 + softplus(1))\n", math.log1p(math.e)),
    ("loss h(x; d = 1.0):\n    sqrt(x^2 + softplus(-d))\nloss l(x):\n    h(x, d=2.0)\n", math.log1p(math.exp(-2.0))),
], ids=["written", "inlined"])
def test_a_loss_with_a_constant_softplus_compiles(src: str, const: float, cache_dir) -> None:
    """A rule asks the bounds of the sqrt's base, which holds a constant softplus (written, or a called loss's
    parameter given a number)."""
    out = lossdsl.compile(src, reduction="none")(torch.tensor([0.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([math.sqrt(const), math.sqrt(9 + const)], dtype=torch.float64))


def test_a_power_of_a_zero_base() -> None:
    _, hi = bounds(ir.relu(V) ** -1)  # relu(v) = 0 for v <= -1: 1/0, inf in float
    assert hi == INF


def test_a_loss_dividing_by_a_zero_bounded_term_compiles(cache_dir) -> None:
    loss = lossdsl.parse("loss l(b: binary, x):\n    max(x / relu(b - 1), 1)\n")
    assert loss.ir.expr.has(sp.Max)


def test_an_infinite_bound_plus_an_infinite_one_is_not_nan() -> None:
    lo, hi = bounds(sp.log(-P) + X)
    assert not (math.isnan(lo) or math.isnan(hi))


@pytest.mark.parametrize("fn", [ir.log1p, ir.expm1], ids=["log1p", "expm1"])
def test_log1p_and_expm1_keep_the_sign_of_tiny_arguments(fn: type) -> None:
    loss = make_loss({}, {"t": ("in", (-1e-20, 1e-20))})
    lo, hi = Bounds(loss)(fn(sp.Symbol("t", real=True)))
    assert lo <= -1e-20 * (1 - 1e-9) and hi >= 1e-20 * (1 - 1e-9)  # log1p(±1e-20) and expm1(±1e-20) ≈ ±1e-20


def test_exp_lower_bound_is_finite_below_the_float64_overflow() -> None:
    loss = make_loss({}, {"t": ("in", (701.0, 702.0))})
    lo, hi = Bounds(loss)(sp.exp(sp.Symbol("t", real=True)))
    assert lo <= math.exp(701.0) and hi >= math.exp(702.0)


def test_numbers_bound_themselves() -> None:
    """Numbers bound themselves exactly (Rational, pi) and non-real numbers are unbounded."""
    assert bounds(sp.Rational(-7, 2)) == (-3.5, -3.5)
    lo, hi = bounds(sp.pi)
    assert lo == hi == float(sp.pi)
    assert bounds(sp.nan) == (-INF, INF) and bounds(sp.zoo) == (-INF, INF)
