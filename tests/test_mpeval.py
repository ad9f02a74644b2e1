"""lossdsl.mpeval: the high-precision mpmath evaluator of the IR, tested on its own.

test_rewrite.py uses it as the reference for each stability rule (through stability.reference); here the
evaluator itself is checked, node by node, against references computed independently of it:
* elementwise functions against SymPy's own adaptive evaluation of their textbook definitions, at extreme
  arguments (logits of +-1e4, +-745, tiny and zero arguments) where float64 would overflow or cancel;
* special values (log 0, xlogy(0, 0), 0^0, sqrt of a negative, ...) against torch in float64;
* reductions, normalisers and gathers against torch at moderate values and against direct mpmath formulas
  (log-sum-exp without the max shift, which mpmath can afford) at extreme ones;
* a property: random scalar expressions against SymPy's evaluation of the same expression written out;
* the complex step: the imaginary part carries the exact derivative (SymPy's derivative as reference);
* elements() ordering and broadcasting, agree() and converged() (precision raising, with and without oracle).
"""

from __future__ import annotations

from collections.abc import Callable

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lossdsl import ir
from lossdsl.mpeval import Evaluator, UnsupportedError, agree, converged, elements

mp = mpmath.mp
D = torch.float64

t, a, b = sp.symbols("t a b", real=True)
i, j, c, n = (ir.index_symbol(s) for s in "ijcn")
x, y = sp.IndexedBase("x"), sp.IndexedBase("y")


def loss_of(expr: sp.Expr, axis_of: dict[str, str] | None = None) -> ir.LossIR:
    return ir.LossIR("t", [], [], expr, (), False, axis_of=dict(axis_of or {}))


def evaluator(expr: sp.Expr, arrays: dict[str, list] | None = None, scalars: dict[str, object] | None = None,
              sizes: dict[str, int] | None = None, axis_of: dict[str, str] | None = None) -> Evaluator:
    """An Evaluator over mpf arrays (nested lists of numbers) and scalars."""
    arrs = {k: np.array(np.vectorize(mp.mpf, otypes=[object])(np.array(v, dtype=object)), dtype=object)
            for k, v in (arrays or {}).items()}
    return Evaluator(loss_of(expr, axis_of), arrs, dict(scalars or {}), dict(sizes or {}))


def ev(expr: sp.Expr, env: dict | None = None, **kw: object) -> object:
    return evaluator(expr, **kw).ev(expr, env or {})  # type: ignore[arg-type]


def close(got: object, want: object, digits: int = 40) -> bool:
    return abs(got - want) <= mp.mpf(10) ** -digits * max(abs(want), mp.mpf(10) ** -300)


def same_special(got: object, want: float) -> bool:
    """NaN for NaN, the same infinity, or equal to 1e-15."""
    if np.isnan(want):
        return bool(mp.isnan(got))
    if np.isinf(want):
        return bool(mp.isinf(got)) and (got > 0) == (want > 0)
    return abs(float(got) - want) <= 1e-15 * max(abs(want), 1e-300)


# ---- elementwise functions
EXPLICIT = {
    ir.sigmoid: lambda u: 1 / (1 + sp.exp(-u)),
    ir.softplus: lambda u: sp.log(1 + sp.exp(u)),
    ir.logsigmoid: lambda u: -sp.log(1 + sp.exp(-u)),
    ir.logcosh: lambda u: sp.log(sp.cosh(u)),
    ir.relu: lambda u: sp.Max(u, 0),
    ir.expm1: lambda u: sp.exp(u) - 1,
    ir.log1p: lambda u: sp.log(1 + u),
    ir.xlogy: lambda u, v: u * sp.log(v),
}


def explicit(e: sp.Expr) -> sp.Expr:
    for cls, definition in EXPLICIT.items():
        e = e.replace(cls, definition)
    return e


def reference(e: sp.Expr, at: dict[sp.Symbol, object], dps: int = 5000) -> object:
    """e written out (no IR functions), translated by SymPy's lambdify into mpmath calls and evaluated at `dps`
    digits: the naive textbook formula, made exact by sheer precision (log(1 + e^-1e4) needs 4343 digits)."""
    f = sp.lambdify(list(at), explicit(e), modules="mpmath")
    with mp.workdps(dps):
        return +f(*(mp.mpf(v) if not isinstance(v, mpmath.mpc) else v for v in at.values()))


LOGITS = [-1e4, -745.5, -30.0, -1.0, -1e-20, 0.0, 1e-20, 0.5, 30.0, 745.5, 1e4]
FUNCTIONS = [sp.exp(t), sp.tanh(t), sp.sinh(t), sp.cosh(t), sp.atan(t), sp.erf(t), sp.Abs(t), sp.sign(t),
             ir.sigmoid(t), ir.logsigmoid(t), ir.softplus(t), ir.logcosh(t), ir.relu(t), ir.expm1(t),
             sp.exp(-t**2 / 2)]


@pytest.mark.parametrize("f", FUNCTIONS, ids=str)
def test_elementwise_functions_at_extreme_logits(f: sp.Expr) -> None:
    with mp.workdps(50):
        for v in LOGITS:
            if f == ir.logcosh(t) and abs(v) < 1e-10:
                continue  # test_logcosh_keeps_its_precision_at_tiny_arguments
            got = ev(f, scalars={"t": mp.mpf(v)})
            assert close(got, reference(f, {t: v}), 40), (f, v, got)


def test_logcosh_keeps_its_precision_at_tiny_arguments() -> None:
    with mp.workdps(50):
        got = ev(ir.logcosh(t), scalars={"t": mp.mpf("1e-30")})
        assert close(got, reference(ir.logcosh(t), {t: mp.mpf("1e-30")}), 40), got


@pytest.mark.parametrize("f", [sp.sin(t), sp.cos(t), sp.tan(t)], ids=str)
def test_trigonometric_functions(f: sp.Expr) -> None:
    with mp.workdps(50):
        for v in (-1e4, -2.5, 0.0, 1e-20, 0.3, 1e4):
            assert close(ev(f, scalars={"t": mp.mpf(v)}), reference(f, {t: v}), 35)


@pytest.mark.parametrize("f", [sp.log(t), ir.log1p(-t), sp.sqrt(t), sp.acos(t - 1), sp.asin(1 - t),
                               ir.xlogy(t, t), ir.xlogy(1 - t, 1 - t), sp.log(1 - t), t ** sp.Rational(3, 2)],
                         ids=str)
def test_functions_of_probabilities_including_0_and_1(f: sp.Expr) -> None:
    """At 0 and 1 the references are the limits torch uses: log 0 = -inf, 0 log 0 = 0."""
    limits = {0.0: {sp.log(t): -mp.inf, ir.xlogy(t, t): 0, sp.sqrt(t): 0,
                    t ** sp.Rational(3, 2): 0},
              1.0: {ir.xlogy(1 - t, 1 - t): 0, sp.log(1 - t): -mp.inf, ir.log1p(-t): -mp.inf}}
    with mp.workdps(50):
        for v in (0.0, 1e-300, 1e-20, 0.25, 0.5, 1 - 2**-53, 1.0):
            if v == 1e-300 and f.has(1 - t):
                continue  # 1 - 1e-300 is 1 at 50 digits: a question of working precision (converged's)
            got = ev(f, scalars={"t": mp.mpf(v)})
            want = limits.get(v, {}).get(f)
            if want is None:
                want = reference(f, {t: v})
            assert got == want if mp.isinf(want) or want == 0 else close(got, want, 40), (f, v, got, want)


# (expression, {symbol: value}, torch's float64 result)
SPECIAL = [
    (sp.log(t), {"t": 0}, torch.log(torch.tensor(0.0, dtype=D))),
    (sp.log(t), {"t": -1}, torch.log(torch.tensor(-1.0, dtype=D))),
    (ir.log1p(t), {"t": -1}, torch.log1p(torch.tensor(-1.0, dtype=D))),
    (ir.log1p(t), {"t": -2}, torch.log1p(torch.tensor(-2.0, dtype=D))),
    (sp.sqrt(t), {"t": -1}, torch.sqrt(torch.tensor(-1.0, dtype=D))),
    (sp.sqrt(t), {"t": 0}, torch.sqrt(torch.tensor(0.0, dtype=D))),
    (t ** a, {"t": 0, "a": 0}, torch.tensor(0.0, dtype=D) ** 0.0),
    (t ** a, {"t": 0, "a": -1}, torch.tensor(0.0, dtype=D) ** -1.0),
    (t ** a, {"t": 0, "a": 2.5}, torch.tensor(0.0, dtype=D) ** 2.5),
    (t ** a, {"t": -8, "a": 1 / 3}, torch.tensor(-8.0, dtype=D) ** (1 / 3)),
    (t ** a, {"t": -2, "a": 3}, torch.tensor(-2.0, dtype=D) ** 3.0),
    (t ** a, {"t": -2, "a": -1}, torch.tensor(-2.0, dtype=D) ** -1.0),
    (ir.xlogy(t, a), {"t": 0, "a": 0}, torch.xlogy(torch.tensor(0.0, dtype=D), torch.tensor(0.0, dtype=D))),
    (ir.xlogy(t, a), {"t": 0, "a": -1}, torch.xlogy(torch.tensor(0.0, dtype=D), torch.tensor(-1.0, dtype=D))),
    (ir.xlogy(t, a), {"t": 0, "a": np.nan}, torch.xlogy(torch.tensor(0.0, dtype=D), torch.tensor(np.nan, dtype=D))),
    (ir.xlogy(t, a), {"t": 2, "a": 0}, torch.xlogy(torch.tensor(2.0, dtype=D), torch.tensor(0.0, dtype=D))),
    (ir.xlogy(t, a), {"t": -2, "a": 0}, torch.xlogy(torch.tensor(-2.0, dtype=D), torch.tensor(0.0, dtype=D))),
    (ir.xlogy(t, a), {"t": 2, "a": -1}, torch.xlogy(torch.tensor(2.0, dtype=D), torch.tensor(-1.0, dtype=D))),
    (ir.relu(t), {"t": 0}, torch.relu(torch.tensor(0.0, dtype=D))),
    (sp.sign(t), {"t": 0}, torch.sign(torch.tensor(0.0, dtype=D))),
    (sp.Heaviside(t, 0), {"t": 0}, torch.heaviside(torch.tensor(0.0, dtype=D), torch.tensor(0.0, dtype=D))),
    (sp.Heaviside(t, 0), {"t": 1e-300}, torch.heaviside(torch.tensor(1e-300, dtype=D), torch.tensor(0.0, dtype=D))),
    (sp.Max(t, a), {"t": np.nan, "a": 1}, torch.maximum(torch.tensor(np.nan, dtype=D), torch.tensor(1.0, dtype=D))),
    (sp.Max(t, a), {"t": 1, "a": np.nan}, torch.maximum(torch.tensor(1.0, dtype=D), torch.tensor(np.nan, dtype=D))),
    (sp.Min(t, a), {"t": 1, "a": np.nan}, torch.minimum(torch.tensor(1.0, dtype=D), torch.tensor(np.nan, dtype=D))),
    (sp.Max(t, a), {"t": -np.inf, "a": -3}, torch.tensor(-3.0, dtype=D)),
    (ir.sigmoid(t), {"t": 0}, torch.sigmoid(torch.tensor(0.0, dtype=D))),
    (ir.softplus(t), {"t": 0}, F.softplus(torch.tensor(0.0, dtype=D))),
    (ir.logsigmoid(t), {"t": -np.inf}, F.logsigmoid(torch.tensor(-np.inf, dtype=D))),
    (sp.exp(t), {"t": -np.inf}, torch.exp(torch.tensor(-np.inf, dtype=D))),
    (sp.tanh(t), {"t": np.inf}, torch.tanh(torch.tensor(np.inf, dtype=D))),
]


@pytest.mark.parametrize(("expr", "at", "want"), SPECIAL, ids=[f"{e} at {at}" for e, at, _ in SPECIAL])
def test_special_values_agree_with_torch(expr: sp.Expr, at: dict[str, float], want: torch.Tensor) -> None:
    got = ev(expr, scalars={k: mp.mpf(v) for k, v in at.items()})
    assert same_special(got, want.item()), (expr, at, got, want)


@pytest.mark.parametrize(("base", "exponent"), [(-2.0, np.nan), (-2.0, np.inf)])
def test_a_negative_base_with_a_nonfinite_exponent(base: float, exponent: float) -> None:
    got = ev(t ** a, scalars={"t": mp.mpf(base), "a": mp.mpf(exponent)})
    assert same_special(got, (torch.tensor(base, dtype=D) ** exponent).item())


def test_zero_to_a_nan_power_is_nan() -> None:
    assert mp.isnan(ev(t ** a, scalars={"t": mp.mpf(0), "a": mp.nan}))


def test_numbers_and_constants() -> None:
    with mp.workdps(50):
        assert close(ev(sp.pi), mp.pi, 48) and close(ev(sp.E), mp.e, 48)
        assert close(ev(sp.Rational(1, 3)), mp.mpf(1) / 3, 48)
        assert ev(sp.Integer(-7)) == -7
        assert ev(sp.oo) == mp.inf and ev(-sp.oo) == -mp.inf
        assert ev(sp.true) is True and ev(sp.false) is False


def test_a_nan_constant_evaluates_to_nan() -> None:
    assert mp.isnan(ev(sp.nan))


def test_logic_and_branches() -> None:
    e = sp.Piecewise((a, sp.And(a > 0, b < 1)), (b, sp.Or(a < -1, sp.Not(b > 2))), (a * b, True))
    for va, vb in [(1, 0), (1, 5), (-2, 5), (0, 3), (0, 1), (-1, 2)]:
        want = e.subs({a: va, b: vb})
        assert ev(e, scalars={"a": mp.mpf(va), "b": mp.mpf(vb)}) == want
    for rel in (sp.Eq(a, b), sp.Ne(a, b), sp.Lt(a, b), sp.Le(a, b), sp.Gt(a, b), sp.Ge(a, b)):
        for va, vb in [(1, 1), (1, 2), (2, 1)]:
            assert ev(rel, scalars={"a": mp.mpf(va), "b": mp.mpf(vb)}) == bool(rel.subs({a: va, b: vb}))


def leaves() -> st.SearchStrategy[sp.Expr]:
    """Exact numbers: a Float would make SymPy fold constant subtrees to 15 digits before the reference sees them."""
    return st.one_of(st.sampled_from([a, b]), st.sampled_from([sp.Integer(2), sp.Rational(-3, 4), sp.Rational(1, 10)]))


ROOTS = [sp.tanh, sp.atan, sp.Abs, sp.erf, sp.sign, ir.sigmoid, ir.softplus, ir.logsigmoid, ir.logcosh, ir.relu,
         ir.expm1, lambda e: sp.exp(-(e**2)), lambda e: ir.log1p(e**2), lambda e: sp.log(1 + sp.exp(e)),
         lambda e: ir.xlogy(e, 1 + e**2)]


def extend(kids: st.SearchStrategy[sp.Expr]) -> st.SearchStrategy[sp.Expr]:
    """No bare exp, so nothing grows past e^(e^...): the values stay where mpmath computes them quickly."""
    return st.one_of(
        st.tuples(kids, kids).map(lambda p: p[0] + p[1]),
        st.tuples(kids, kids).map(lambda p: p[0] * p[1]),
        st.tuples(kids, kids).map(lambda p: p[0] - p[1]),
        st.tuples(st.sampled_from(ROOTS), kids).map(lambda p: p[0](p[1])),
        st.tuples(kids, kids).map(lambda p: sp.Max(p[0], p[1])),
        st.tuples(kids, kids).map(lambda p: sp.Min(p[0], p[1])),
        kids.map(lambda e: e**2),
        kids.map(lambda e: sp.sqrt(1 + e**2)),
        st.tuples(kids, kids).map(lambda p: sp.Piecewise((p[0], a > b), (p[1], True))),
    )


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(ROOTS), st.recursive(leaves(), extend, max_leaves=6), st.floats(-5, 5), st.floats(-5, 5))
def test_random_expressions_agree_with_the_written_out_formula(root: Callable[[sp.Expr], sp.Expr], inner: sp.Expr,
                                                                va: float, vb: float) -> None:
    """At 60 digits, against the formula written out and evaluated at 300: values stay below ~1e12 here, so
    rounding is below 1e-45 in absolute terms, and what cancels to nothing at 60 digits is below that too."""
    e = root(inner)
    want = reference(e, {a: va, b: vb}, 300)
    with mp.workdps(60):
        got = ev(e, scalars={"a": mp.mpf(va), "b": mp.mpf(vb)})
    assert abs(got - want) <= mp.mpf("1e-40") * (1 + abs(want)), (e, va, vb, got, want)


# ---- the complex step
DERIVATIVE_CASES = [sp.exp(t), sp.tanh(t), sp.erf(t), sp.Abs(t), ir.sigmoid(t),
                    ir.logsigmoid(t), ir.softplus(t), ir.logcosh(t), ir.relu(t), ir.expm1(t), sp.log(1 + t**2),
                    ir.log1p(t**2), sp.Max(t, 1 - t), sp.sqrt(1 + t**2), sp.Piecewise((t**2, t > 0), (-t, True))]


@pytest.mark.parametrize("f", DERIVATIVE_CASES, ids=str)
def test_complex_step_gives_the_derivative(f: sp.Expr) -> None:
    """Im f(t + ih) / h for h = 10^-(dps + 30): what stability._derivatives computes, against SymPy's f'."""
    d = sp.diff(explicit(f), t)  # by SymPy, on the written-out formula
    with mp.workdps(50):
        h = mp.mpf(10) ** (-mp.dps - 30)
        for v in (-1e4, -30.0, -0.7, 0.3, 2.0, 30.0, 1e4):
            got = ev(f, scalars={"t": mp.mpc(v, h)}).imag / h
            want = reference(d, {t: v}, 200)
            assert close(got, want, 30), (f, v, got, want)


# ---- indexed values, reductions, normalisers, gathers
VEC = [0.3, -1.7, 2.2, 0.0, -0.4]


@pytest.mark.parametrize(("op", "ref"), [
    ("sum", lambda v: v.sum()), ("mean", lambda v: v.mean()), ("prod", lambda v: v.prod()),
    ("max", lambda v: v.amax()), ("min", lambda v: v.amin()), ("logsumexp", lambda v: v.logsumexp(0)),
    ("norm", lambda v: v.norm()),
])
def test_reductions_match_torch(op: str, ref: Callable[[torch.Tensor], torch.Tensor]) -> None:
    e = ir.REDUCTIONS[op](sp.exp(x[i]) - x[i] ** 2, sp.Tuple(i), sp.true)
    got = ev(e, arrays={"x": VEC}, sizes={"i": 5})
    v = torch.tensor(VEC, dtype=D)
    torch.testing.assert_close(torch.tensor(float(got), dtype=D), ref(torch.exp(v) - v**2), rtol=1e-13, atol=0)


@pytest.mark.parametrize(("op", "want"), [("sum", 0), ("mean", mp.nan), ("prod", 1), ("max", -mp.inf),
                                          ("min", mp.inf), ("logsumexp", -mp.inf), ("norm", 0)])
def test_empty_reductions(op: str, want: object) -> None:
    """A condition no index satisfies leaves nothing to reduce: the empty sum, product, mean (nan), sup, inf."""
    e = ir.REDUCTIONS[op](x[i], sp.Tuple(i), sp.Gt(i, 10))
    got = ev(e, arrays={"x": VEC}, sizes={"i": 5})
    assert (mp.isnan(got) and mp.isnan(want)) or got == want


def test_a_conditioned_reduction_sums_over_the_other_indices() -> None:
    e = ir.Sum_(x[j], sp.Tuple(j), sp.Ne(j, i))
    evl = evaluator(e, arrays={"x": VEC}, sizes={"i": 5}, axis_of={"j": "i"})
    got = [evl.ev(e, {i: k}) for k in range(5)]
    v = torch.tensor(VEC, dtype=D)
    torch.testing.assert_close(torch.tensor([float(g) for g in got], dtype=D), v.sum() - v, rtol=1e-13, atol=1e-15)


def test_two_index_reductions_and_memo_keys() -> None:
    grid = [[1.0, 2.0, -3.0], [0.5, -0.25, 4.0]]
    rows = ir.Sum_(x[n, c] * y[c], sp.Tuple(c), sp.true)
    evl = evaluator(rows, arrays={"x": grid, "y": [1.0, 10.0, 100.0]}, sizes={"n": 2, "c": 3})
    assert [evl.ev(rows, {n: 0}), evl.ev(rows, {n: 1})] == [-279, 398]  # memo keyed by n's value
    total = ir.Sum_(x[n, c], sp.Tuple(n, c), sp.true)
    assert ev(total, arrays={"x": grid}, sizes={"n": 2, "c": 3}) == 4.25


def test_logsumexp_at_extreme_logits_against_the_unshifted_formula() -> None:
    vals = [1e4, -1e4, 1e4 - 1e-9, -3.0, 9999.0]
    e = ir.LogSumExp_(x[i], sp.Tuple(i), sp.true)
    with mp.workdps(60):
        want = mp.log(mp.fsum(mp.exp(mp.mpf(v)) for v in vals))  # mpmath does not overflow: no shift needed
        assert close(ev(e, arrays={"x": vals}, sizes={"i": 5}), want, 50)
        inf = ev(e, arrays={"x": [1.0, np.inf]}, sizes={"i": 2})
        ninf = ev(e, arrays={"x": [-np.inf, -np.inf]}, sizes={"i": 2})
    assert inf == mp.inf and ninf == -mp.inf


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_and_min_reductions_propagate_nan(op: str) -> None:
    e = ir.REDUCTIONS[op](x[i], sp.Tuple(i), sp.true)
    for vals in ([np.nan, 1.0], [1.0, np.nan]):
        assert mp.isnan(ev(e, arrays={"x": vals}, sizes={"i": 2})), vals


def test_reductions_keep_a_leading_nan() -> None:
    for op in ("sum", "mean", "prod", "logsumexp", "norm", "max", "min"):
        e = ir.REDUCTIONS[op](x[i], sp.Tuple(i), sp.true)
        assert mp.isnan(ev(e, arrays={"x": [np.nan, 1.0]}, sizes={"i": 2})), op


ROWS = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -2.0, 1e-3], [0.0, 0.0, 0.0, 0.0], [1e-13, 0.0, -1e-13, 0.0]]


@pytest.mark.parametrize(("cls", "ref"), [
    (ir.Softmax, lambda v: F.softmax(v, dim=1)),
    (ir.LogSoftmax, lambda v: F.log_softmax(v, dim=1)),
    (ir.Normalize, lambda v: F.normalize(v, dim=1)),
])
def test_normalisers_match_torch(cls: type, ref: Callable[[torch.Tensor], torch.Tensor]) -> None:
    e = cls(x[n, c], c)
    evl = evaluator(e, arrays={"x": ROWS}, sizes={"n": 4, "c": 4})
    got = torch.tensor([[float(evl.ev(e, {n: r, c: k})) for k in range(4)] for r in range(4)], dtype=D)
    torch.testing.assert_close(got, ref(torch.tensor(ROWS, dtype=D)), rtol=1e-13, atol=1e-300)


def test_cross_entropy_at_extreme_logits() -> None:
    """-log_softmax_c(x)[n, y[n]]: an At of a normaliser, read at each row's label."""
    logits = [[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4 - 1e-6], [2.0, -1.0, 0.5]]
    labels = [1, 2, 0]
    e = -ir.At(ir.LogSoftmax(x[n, c], c), sp.Tuple(c), sp.Tuple(y[n]))
    with mp.workdps(60):
        evl = evaluator(e, arrays={"x": logits, "y": labels}, sizes={"n": 3, "c": 3})
        got = elements(evl, e, ("n",), ())
        for row, label, value in zip(logits, labels, got, strict=True):
            want = mp.log(mp.fsum(mp.exp(mp.mpf(v)) for v in row)) - mp.mpf(row[label])
            assert close(value, want, 50), (row, value, want)
    moderate = torch.tensor(logits[2:], dtype=D)
    ref = F.cross_entropy(moderate, torch.tensor(labels[2:]), reduction="none")
    torch.testing.assert_close(torch.tensor([float(got[2])], dtype=D), ref, rtol=1e-14, atol=0)


def test_at_reads_constant_positions_and_diagonals() -> None:
    grid = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    diag = ir.At(x[i, j] * 2, sp.Tuple(j), sp.Tuple(i))
    evl = evaluator(diag, arrays={"x": grid}, sizes={"i": 3, "j": 3})
    assert [evl.ev(diag, {i: k}) for k in range(3)] == [2, 10, 18]
    corner = ir.At(x[i, j], sp.Tuple(i, j), sp.Tuple(2, 0))
    assert ev(corner, arrays={"x": grid}, sizes={"i": 3, "j": 3}) == 7
    assert ev(x[n, 2], {n: 1}, arrays={"x": grid}) == 6  # a constant slot of an input


def test_sizes_follow_axis_names_and_renamed_indices() -> None:
    assert ev(ir.Size(c), sizes={"c": 7}) == 7
    assert ev(ir.Size(ir.index_symbol("k")), sizes={"c": 4}, axis_of={"k": "c"}) == 4
    assert ev(ir.Size(ir.index_symbol("c__3")), sizes={"c": 5}) == 5  # a bound index renamed on inlining
    mean = ir.Mean_(x[ir.index_symbol("j__2")], sp.Tuple(ir.index_symbol("j__2")), sp.true)
    assert ev(mean, arrays={"x": [1.0, 2.0, 6.0]}, sizes={"i": 3}, axis_of={"j": "i"}) == 3
    with pytest.raises(UnsupportedError, match="no size"):
        ev(ir.Size(ir.index_symbol("q")), sizes={"c": 4})


@pytest.mark.parametrize("expr", [
    ir.FnCall(sp.Symbol("f"), sp.Tuple(t), sp.Tuple()),
    ir.Grad(t**2, t),
    sp.Symbol("unknown", real=True) + t,
], ids=["fn", "grad", "unknown name"])
def test_what_it_does_not_model_is_an_unsupported_error(expr: sp.Expr) -> None:
    with pytest.raises(UnsupportedError):
        ev(expr, scalars={"t": mp.mpf(1)})


# ---- elements, agree, converged
def test_elements_are_in_c_order_over_the_free_indices() -> None:
    grid = [[1.0, -2.0, 3.0], [0.5, 0.25, -4.0]]
    e = x[n, c] * y[c] + 1
    evl = evaluator(e, arrays={"x": grid, "y": [2.0, 3.0, 5.0]}, sizes={"n": 2, "c": 3})
    got = torch.tensor([float(v) for v in elements(evl, e, ("n", "c"), ())], dtype=D)
    want = (torch.tensor(grid, dtype=D) * torch.tensor([2.0, 3.0, 5.0], dtype=D) + 1).flatten()
    assert torch.equal(got, want)


def test_elements_broadcast_undeclared_inputs() -> None:
    p, q = sp.symbols("p q", real=True)
    e = ir.logsigmoid(p) * q
    pa, qa = [[-1e4], [0.5]], [1.0, -2.0, 3.0]  # shapes (2, 1) and (3,) broadcast to (2, 3)
    evl = evaluator(e, arrays={"p": pa, "q": qa})
    got = torch.tensor([float(v) for v in elements(evl, e, (), ("p", "q"))], dtype=D)
    want = (F.logsigmoid(torch.tensor(pa, dtype=D)) * torch.tensor(qa, dtype=D)).flatten()
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)


@mp.workdps(40)
def test_agree() -> None:
    one = mp.mpf(1)
    assert agree(one, one + mp.mpf("1e-21"), 20) and not agree(one, one + mp.mpf("1e-19"), 20)
    assert agree(mp.mpf(0), mp.mpf(0), 20) and agree(mp.mpf("1e-400"), mp.mpf("1e-400") * (1 + mp.mpf("1e-25")), 20)
    assert not agree(mp.nan, mp.nan, 20) and not agree(mp.inf, mp.inf, 20) and not agree(one, mp.inf, 20)


def test_converged_raises_precision_until_successive_values_agree() -> None:
    calls: list[tuple[int, list[int] | None]] = []

    def compute(which: list[int] | None) -> list:
        calls.append((mp.dps, which))
        values = [mp.mpf(1) / 3, mp.nan, mp.exp(mp.mpf(-3))]
        return values if which is None else [values[k] for k in which]

    values, ok = converged(compute)
    assert ok == [True, False, True]
    assert [d for d, _ in calls] == [40, 80, 160, 320, 640, 1280, 2560]
    assert calls[0][1] is None and calls[1][1] == [0, 1, 2] and all(w == [1] for _, w in calls[2:])
    with mp.workdps(80):
        assert close(values[0], mp.mpf(1) / 3, 70) and mp.isnan(values[1])


@pytest.mark.parametrize("v", [200.0, 600.0])
def test_converged_with_an_oracle_reaches_the_true_value_of_a_cancelling_formula(v: float) -> None:
    """log(1 + e^-v) is 0 at 40 and at 80 digits; against the stable form it settles on e^-v (1 - ...)."""
    naive = sp.log(1 + sp.exp(-t))

    def compute(which: list[int] | None) -> list:
        return [evaluator(naive, scalars={"t": mp.mpf(v)}).ev(naive, {})]

    def stable(which: list[int] | None) -> list:
        return [mp.log1p(mp.exp(-mp.mpf(v)))]

    with mp.workdps(60):
        oracle = converged(stable)[0]
        values, ok = converged(compute, oracle)
        want = mp.log1p(mp.exp(-mp.mpf(v)))
        assert ok == [True] and close(values[0], want, 19)


def test_converged_with_an_oracle_gives_up_past_its_cap() -> None:
    """a (e^t + 1) - a e^t at t = 1e4 is a, but e^t has 4343 digits: up to the 2560-digit cap the 1 is lost,
    so the value stays unsettled (the caller falls back to the oracle); at 4400 digits it is exact."""
    naive = a * (sp.exp(t) + 1) - a * sp.exp(t)
    at = {"a": mp.mpf(1), "t": mp.mpf(1e4)}
    values, ok = converged(lambda which: [ev(naive, scalars=at)], [mp.mpf(1)])
    assert ok == [False] and values[0] == 0
    with mp.workdps(4400):
        assert ev(naive, scalars=at) == 1
