"""lossdsl.ir: the IR's SymPy classes and helpers, tested on their own.

What is checked, and against what:
* the elementwise functions (sigmoid, softplus, logsigmoid, logcosh, relu, isfinite, xlogy): their derivatives
  (chain rule included) against SymPy differentiating their explicit definitions, evaluated by SymPy at
  moderate and extreme points; logcosh's evaluation rules (even, zero at zero); their numeric values;
* the structural nodes (reductions, normalisers, At, Size, FnCall, Grad): not auto-evaluated, their accessors
  and assumptions, text and LaTeX printing (hand-written expected strings, powers included, since SymPy hands
  a power's exponent to the base's printer), pickling (the disk cache stores IR by pickle);
* the LaTeX of whole IR expressions read back by lossdsl's LaTeX reader into a loss that computes the same;
* the piecewise_fold patch (a Piecewise inside a reduction stays there, so bound indices keep their scope);
* index_symbol / is_index, iverson, unnegated (a property: same truth value), expressions, host_symbols and
  the LossIR / Input / Param dataclasses.
"""

from __future__ import annotations

import itertools
import pickle

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import from_latex, ir
from lossdsl.scope import free_indices

mp = mpmath.mp
D = torch.float64

i, j, c, n, m = (ir.index_symbol(s) for s in "ijcnm")
g = ir.index_symbol("*s")
x, y, l_ = sp.IndexedBase("x"), sp.IndexedBase("y"), sp.IndexedBase("l")
a, b, k = sp.symbols("a b k", real=True)
t = sp.Symbol("t", real=True)

EXPLICIT = {
    ir.sigmoid: lambda u: 1 / (1 + sp.exp(-u)),
    ir.softplus: lambda u: sp.log(1 + sp.exp(u)),
    ir.logsigmoid: lambda u: -sp.log(1 + sp.exp(-u)),
    ir.logcosh: lambda u: sp.log(sp.cosh(u)),
}


def explicit(e: sp.Expr) -> sp.Expr:
    """e with the IR's functions written out as their textbook definitions."""
    for cls, definition in EXPLICIT.items():
        e = e.replace(cls, definition)
    return e


def value(e: sp.Expr, at: float) -> mpmath.mpf:
    """e(t) by SymPy's own adaptive evaluation, to 30 digits."""
    return mp.mpf(sp.N(e.subs(t, sp.Float(at, 40)), 30))


def assert_same(got: mpmath.mpf, want: mpmath.mpf) -> None:
    assert abs(got - want) <= mp.mpf("1e-25") * max(abs(want), mp.mpf("1e-300")), (got, want)


# ---- elementwise functions
@pytest.mark.parametrize("f", list(EXPLICIT), ids=lambda f: f.__name__)
@pytest.mark.parametrize("at", [-1e4 / 3, -30.0, -1.3, 0.0, 0.4, 7.0, 1e4 / 3])
def test_derivatives_match_the_explicit_definitions(f: type[sp.Function], at: float) -> None:
    inner = 3 * t - 1  # through the chain rule
    got = explicit(sp.diff(f(inner), t))
    want = sp.diff(explicit(f(inner)), t)
    with mp.workdps(40):
        assert_same(value(got, at), value(want, at))


def test_derivatives_are_written_with_the_ir_functions() -> None:
    assert sp.diff(ir.sigmoid(t), t) == ir.sigmoid(t) * (1 - ir.sigmoid(t))
    assert sp.diff(ir.softplus(2 * t), t) == 2 * ir.sigmoid(2 * t)
    assert sp.diff(ir.logsigmoid(t), t) == ir.sigmoid(-t)
    assert sp.diff(ir.logcosh(t), t) == sp.tanh(t)
    assert sp.diff(ir.relu(t), t) == sp.Heaviside(t, 0)
    assert sp.diff(ir.isfinite(t), t) == 0


def test_relu_derivative_is_the_step_with_zero_at_zero() -> None:
    step = sp.diff(ir.relu(t), t)
    assert [step.subs(t, v) for v in (-2, 0, sp.Rational(1, 3))] == [0, 0, 1]


def test_xlogy_partial_derivatives_match_x_log_y() -> None:
    u, v = sp.symbols("u v", positive=True)
    for wrt in (u, v):
        assert sp.simplify(sp.diff(ir.xlogy(u, v), wrt) - sp.diff(u * sp.log(v), wrt)) == 0
    assert sp.diff(ir.xlogy(u**2, v), u) == 2 * u * sp.log(v)


def test_logcosh_is_even_zero_at_zero_and_otherwise_unevaluated() -> None:
    assert ir.logcosh(sp.Integer(0)) == 0
    assert ir.logcosh(-t) == ir.logcosh(t)
    assert ir.logcosh(a - b) == ir.logcosh(b - a)  # one canonical sign
    assert isinstance(ir.logcosh(t), ir.logcosh) and ir.logcosh(t).args == (t,)


def test_logcosh_latex() -> None:
    assert sp.latex(ir.logcosh(t)) == r"\log\cosh\left(t\right)"
    assert sp.latex(2 * ir.logcosh(a - b)) == r"2 \log\cosh\left(a - b\right)"


def test_a_power_of_logcosh_prints() -> None:
    assert sp.latex(ir.logcosh(t) ** 2) == r"\left(\log\cosh\left(t\right)\right)^{2}"


def test_sigmoid_has_a_numeric_value() -> None:
    assert float(ir.sigmoid(sp.Integer(1))) == pytest.approx(float(1 / (1 + mp.exp(-1))), rel=1e-15)


@pytest.mark.parametrize(("node", "want"), [
    (ir.relu(sp.Integer(-1)), mp.mpf(0)),
    (ir.softplus(sp.Integer(1)), mp.log1p(mp.e)),
    (ir.logsigmoid(sp.Integer(1)), -mp.log1p(mp.exp(-1))),
    (ir.logcosh(sp.Integer(1)), mp.log(mp.cosh(1))),
    (ir.xlogy(sp.Integer(2), sp.Integer(3)), 2 * mp.log(3)),
], ids=["relu", "softplus", "logsigmoid", "logcosh", "xlogy"])
def test_elementwise_functions_of_numbers_have_numeric_values(node: sp.Expr, want: mpmath.mpf) -> None:
    assert node.is_number
    assert float(node) == pytest.approx(float(want), rel=1e-15)


# ---- structural nodes
def test_reductions_hold_body_indices_and_condition_and_are_not_evaluated() -> None:
    s = ir.Sum_(x[i] * x[j], sp.Tuple(i, j), sp.Ne(j, i))
    assert s.body == x[i] * x[j] and s.indices == (i, j) and s.cond == sp.Ne(j, i)
    const = ir.Sum_(sp.Integer(2), sp.Tuple(i), sp.true)
    assert isinstance(const, ir.Sum_) and const != 2
    assert s.is_real and s.is_commutative
    assert ir.Sum_(x[i], sp.Tuple(i), sp.true) * a == a * ir.Sum_(x[i], sp.Tuple(i), sp.true)


def test_reduction_and_normaliser_tables() -> None:
    assert {op: cls.__name__ for op, cls in ir.REDUCTIONS.items()} == {
        "sum": "Sum_", "mean": "Mean_", "prod": "Prod_", "max": "Max_", "min": "Min_", "logsumexp": "LogSumExp_",
        "norm": "Norm_"}
    assert all(getattr(ir, cls.__name__) is cls and cls.op == op for op, cls in ir.REDUCTIONS.items())
    assert {"softmax": ir.Softmax, "log_softmax": ir.LogSoftmax, "normalize": ir.Normalize} == ir.NORMALISERS
    sm = ir.Softmax(x[n, c], c)
    assert sm.body == x[n, c] and sm.index == c and isinstance(ir.Softmax(sp.Integer(1), c), ir.Softmax)


def test_size_is_a_positive_integer() -> None:
    size = ir.Size(c)
    assert size.is_integer and size.is_positive
    assert sp.Gt(size, 0) is sp.true
    assert sp.Eq(size, 0) is sp.false


@pytest.mark.parametrize(("node", "text"), [
    (ir.Sum_(x[i], sp.Tuple(i), sp.true), "sum_{i}(x[i])"),
    (ir.Mean_(x[i, j], sp.Tuple(i, j), sp.true), "mean_{i, j}(x[i, j])"),
    (ir.Sum_(x[i] * x[j], sp.Tuple(i, j), sp.Ne(j, i)), "sum_{i, j | Ne(j, i)}(x[i]*x[j])"),
    (ir.LogSumExp_(x[n, c], sp.Tuple(c), sp.true), "logsumexp_{c}(x[n, c])"),
    (ir.LogSoftmax(x[n, c], c), "log_softmax_c(x[n, c])"),
    (ir.Normalize(x[i, j], j), "normalize_j(x[i, j])"),
    (ir.At(ir.Softmax(x[n, c], c), sp.Tuple(c), sp.Tuple(y[n])), "(softmax_c(x[n, c]))[c=y[n]]"),
    (ir.At(x[i, j], sp.Tuple(i, j), sp.Tuple(0, y[n])), "(x[i, j])[i=0, j=y[n]]"),
    (ir.Size(c), "C"),
    (ir.Size(g), "S"),
    (ir.FnCall(sp.Symbol("f"), sp.Tuple(x[n, c], a), sp.Tuple(n)), "f(x[n, c], a)[n]"),
    (ir.FnCall(sp.Symbol("f"), sp.Tuple(a), sp.Tuple()), "f(a)"),
    (ir.Grad(a**2, a), "grad(a**2, a)"),
])
def test_text_printing(node: sp.Basic, text: str) -> None:
    assert str(node) == text


@pytest.mark.parametrize(("node", "tex"), [
    (ir.Sum_(x[i], sp.Tuple(i), sp.true), r"\sum_{i} \left({x}_{i}\right)"),
    (ir.Prod_(x[i], sp.Tuple(i), sp.true), r"\prod_{i} \left({x}_{i}\right)"),
    (ir.Mean_(x[i], sp.Tuple(i), sp.true), r"\operatorname{mean}_{i} \left({x}_{i}\right)"),
    (ir.Max_(x[i], sp.Tuple(i), sp.true), r"\max_{i} \left({x}_{i}\right)"),
    (ir.Min_(x[i], sp.Tuple(i), sp.true), r"\min_{i} \left({x}_{i}\right)"),
    (ir.LogSumExp_(x[i], sp.Tuple(i), sp.true), r"\operatorname{logsumexp}_{i} \left({x}_{i}\right)"),
    (ir.Norm_(x[i], sp.Tuple(i), sp.true), r"\left\| {x}_{i} \right\|_{i}"),
    (ir.Sum_(x[i, j], sp.Tuple(i, j), sp.true), r"\sum_{i,j} \left({x}_{i,j}\right)"),
    (ir.Sum_(x[i] * x[j], sp.Tuple(i, j), sp.Ne(j, i)), r"\sum_{i,j:\,j \neq i} \left({x}_{i} {x}_{j}\right)"),
    (ir.Softmax(x[c], c), r"\operatorname{softmax}_{c}\left({x}_{c}\right)"),
    (ir.LogSoftmax(x[c], c), r"\operatorname{log\_softmax}_{c}\left({x}_{c}\right)"),
    (ir.Normalize(x[c], c), r"\operatorname{normalize}_{c}\left({x}_{c}\right)"),
    (ir.At(x[n, c], sp.Tuple(c), sp.Tuple(y[n])), r"\left. {x}_{n,c} \right|_{c = {y}_{n}}"),
    (ir.At(x[i, j], sp.Tuple(i, j), sp.Tuple(0, y[n])), r"\left. {x}_{i,j} \right|_{i = 0,\,j = {y}_{n}}"),
    (ir.Size(c), "C"),
    (ir.FnCall(sp.Symbol("f"), sp.Tuple(x[n, c], a), sp.Tuple(n)), r"f\left({x}_{n,c}, a\right)"),
    (ir.Grad(a**2, a), r"\nabla_{a} \left(a^{2}\right)"),
])
def test_latex_printing(node: sp.Basic, tex: str) -> None:
    assert sp.latex(node) == tex


def test_group_indices_print_without_their_star() -> None:
    assert sp.latex(ir.Sum_(x[n, g], sp.Tuple(g), sp.true)).startswith(r"\sum_{s} \left(")
    assert sp.latex(ir.At(x[n, g], sp.Tuple(g), sp.Tuple(0))).endswith(r"\right|_{s = 0}")
    assert sp.latex(ir.Size(g)) == "S"


@pytest.mark.parametrize(("node", "tex"), [
    (ir.Sum_(x[i], sp.Tuple(i), sp.true), r"\sum_{i} \left({x}_{i}\right)"),
    (ir.Norm_(x[i], sp.Tuple(i), sp.true), r"\left\| {x}_{i} \right\|_{i}"),
    (ir.Softmax(x[c], c), r"\operatorname{softmax}_{c}\left({x}_{c}\right)"),
    (ir.At(x[n, c], sp.Tuple(c), sp.Tuple(y[n])), r"\left. {x}_{n,c} \right|_{c = {y}_{n}}"),
    (ir.FnCall(sp.Symbol("f"), sp.Tuple(a), sp.Tuple()), r"f\left(a\right)"),
    (ir.Grad(a**2, a), r"\nabla_{a} \left(a^{2}\right)"),
])
def test_powers_of_structural_nodes_bracket_the_node(node: sp.Basic, tex: str) -> None:
    """SymPy passes a power's exponent to the base's printer: each node prints the power itself."""
    assert sp.latex(node**2) == rf"\left({tex}\right)^{{2}}"
    assert sp.latex(node**3 * a) == rf"a \left({tex}\right)^{{3}}"


def test_powers_and_quotients_of_sizes() -> None:
    assert sp.latex(ir.Size(c) ** 2) == "C^{2}"
    assert sp.latex(a / ir.Size(c)) == r"\frac{a}{C}"


@pytest.mark.parametrize("node", [
    *(cls(x[i] * a, sp.Tuple(i), sp.Ne(i, j)) for cls in ir.REDUCTIONS.values()),
    *(cls(x[n, c], c) for cls in ir.NORMALISERS.values()),
    ir.At(ir.Softmax(x[n, c], c), sp.Tuple(c), sp.Tuple(y[n])), ir.Size(g),
    ir.FnCall(sp.Symbol("f"), sp.Tuple(x[n, c]), sp.Tuple(n)), ir.Grad(a**2, a),
    ir.sigmoid(a), ir.softplus(a), ir.logsigmoid(a), ir.logcosh(a), ir.relu(a), ir.isfinite(a), ir.xlogy(a, b),
], ids=lambda e: type(e).__name__)
def test_nodes_survive_pickling(node: sp.Basic) -> None:
    back = pickle.loads(pickle.dumps(node))
    assert back == node and type(back) is type(node)


def test_a_stdlib_loss_ir_survives_pickling() -> None:
    loss_ir = lossdsl.stdlib.get("cross_entropy").ir
    back = pickle.loads(pickle.dumps(loss_ir))
    assert back == loss_ir and back.expr.atoms(ir.At) == loss_ir.expr.atoms(ir.At)


@pytest.mark.parametrize("src", [
    "loss l(x[i], y[j]):\n    max_i(x[i]) - min_j(exp(y[j]))/3",
    "loss l(x[i, j]):\n    sum_{i, j}(x[i, j]^2)",
    "loss l(x[i, j]):\n    sum_i(log(sum_j(x[i, j]^2)))",
    "loss l(x[i]):\n    sum_i(tanh(x[i]) - x[i]/(1 + x[i]^2))",
    "loss l(x[i]):\n    max_i(abs(x[i] - 1))",
])
def test_ir_latex_reads_back_as_the_same_loss(src: str) -> None:
    """The LaTeX of the IR, read by lossdsl's LaTeX reader, computes what the IR computes."""
    loss = lossdsl.parse(src)
    back = from_latex(sp.latex(loss.expr))
    assert {i.name: len(i.axes) for i in back.inputs} == {i.name: len(i.axes) for i in loss.inputs}
    gen = torch.Generator().manual_seed(1)
    values = {i.name: torch.randn((3,) * len(i.axes), generator=gen, dtype=D) for i in loss.inputs}
    torch.testing.assert_close(back.compile()(**values), loss.compile()(**values), rtol=1e-12, atol=1e-12)


# ---- the piecewise_fold patch
def test_a_condition_on_a_reduction_keeps_the_reduction_closed() -> None:
    """[sum_m([l[m] > l[n]]) < k]: SymPy's own fold would move [l[m] > l[n]] out of the sum, unbinding m."""
    rank = ir.Sum_(ir.iverson(l_[m] > l_[n]), sp.Tuple(m), sp.true)
    mask = ir.iverson(rank < k)
    assert mask.atoms(ir.Sum_) == {rank}
    assert free_indices(mask) == [n]
    unpatched = sp.piecewise_fold  # bound at SymPy's import, before lossdsl patched the module's name
    assert m in free_indices(unpatched(rank))  # what the patch prevents


def test_a_condition_on_a_normaliser_of_a_where_is_left_alone() -> None:
    guarded = ir.Normalize(sp.Piecewise((x[i], x[i] > 0), (0, True)), i)
    mask = ir.iverson(guarded > 0)
    assert mask == sp.Piecewise((1, guarded > 0), (0, True)) and mask.atoms(ir.Normalize) == {guarded}


def test_folding_outside_the_structural_nodes_is_sympys() -> None:
    fold = ir._piecewise_module.piecewise_fold
    p = sp.Piecewise((a, a > 0), (0, True))
    assert fold(p + 1) == sp.Piecewise((a + 1, a > 0), (1, True))
    inside = ir.Sum_(sp.Piecewise((x[i], x[i] > 0), (0, True)), sp.Tuple(i), sp.true)
    assert fold(inside) is inside
    assert fold(2 * inside + a) == 2 * inside + a


def test_foldable_sees_piecewises_outside_tensors_only() -> None:
    p = sp.Piecewise((a, a > 0), (0, True))
    inside = ir.Sum_(sp.Piecewise((x[i], x[i] > 0), (0, True)), sp.Tuple(i), sp.true)
    assert ir._foldable(p + 1) and ir._foldable(sp.exp(p) * a)
    assert not ir._foldable(p)  # expr itself is no other Piecewise
    assert not ir._foldable(inside + a) and not ir._foldable(sp.exp(inside))


# ---- helpers
def test_index_symbols_are_the_only_nonnegative_integer_symbols() -> None:
    assert ir.is_index(i) and ir.is_index(g) and i.is_integer and i.is_nonnegative
    assert ir.index_symbol("i") == i
    assert not ir.is_index(sp.Symbol("i"))
    assert not ir.is_index(sp.Symbol("k", integer=True))  # an int parameter
    assert not ir.is_index(x[i]) and not ir.is_index(sp.Integer(2)) and not ir.is_index(ir.Size(c))


def test_iverson() -> None:
    assert ir.iverson(sp.true) == 1
    mask = ir.iverson(a > b)
    assert isinstance(mask, sp.Piecewise)
    assert [mask.subs({a: u, b: v}) for u, v in ((2, 1), (1, 2), (1, 1))] == [1, 0, 0]


RELATIONS = [sp.Eq, sp.Ne, sp.Lt, sp.Le, sp.Gt, sp.Ge]
TERMS = [a, -a, b, -b, 2 * a - b, -a - b, b - a, sp.Integer(-3), a + 1]


def truth(rel: sp.Basic, at: dict[sp.Symbol, int]) -> bool:
    return bool(type(rel)(rel.lhs.subs(at), rel.rhs.subs(at)))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RELATIONS), st.sampled_from(TERMS), st.sampled_from(TERMS))
def test_unnegated_keeps_the_truth_value(rel: type, lhs: sp.Expr, rhs: sp.Expr) -> None:
    e = rel(lhs, rhs, evaluate=False)
    out = ir.unnegated(e)
    assert isinstance(out, sp.core.relational.Relational)
    if rhs.is_number or not rhs.could_extract_minus_sign():
        assert out is e
    else:
        assert out.rhs == -e.lhs or out.lhs == -e.lhs  # both sides negated (a flipped order swaps them)
    for u, v in itertools.product(range(-2, 3), repeat=2):
        assert truth(out, {a: u, b: v}) == truth(e, {a: u, b: v}), (e, out, u, v)


def test_unnegated_argmax_mask() -> None:
    top = ir.Max_(x[i], sp.Tuple(i), sp.true)
    e = sp.Eq(-x[j], -top, evaluate=False)
    assert ir.unnegated(e) == sp.Eq(x[j], top)
    assert ir.unnegated(sp.Lt(a, -b)) == sp.Gt(-a, b)


def make_loss(expr: sp.Expr, weight: sp.Expr | None = None) -> ir.LossIR:
    params = [ir.Param("alpha", None, None, 1.0), ir.Param("gamma", None, None, 2.0), ir.Param("beta", None, None, 0.5),
              ir.Param("k", None, "int", 3), ir.Param("w", ("c",), None, 1.0)]
    inputs = [ir.Input("x", None), ir.Input("lab", ("n",), "index", "c")]
    return ir.LossIR("t", inputs, params, expr, (), True, reduce_weight=weight)


def test_host_symbols_are_scalar_float_parameters_in_exponents_and_parameter_comparisons() -> None:
    xs, alpha, gamma, beta, kk, w = sp.symbols("x alpha gamma beta k w", real=True)
    expr = (xs**gamma * beta + sp.Piecewise((1, alpha >= 0), (2, True)) + xs**kk + xs**w
            + sp.Piecewise((1, xs > beta), (0, True)))
    loss = make_loss(expr)
    assert ir.host_symbols(loss) == {gamma, alpha}  # not beta (compared with an input), k (int), w (shaped)
    assert ir.host_symbols(loss, xs ** (2 * beta)) == {gamma, alpha, beta}
    assert ir.host_symbols(make_loss(xs * beta, weight=xs**beta)) == {beta}  # the reduction weight counts too


def test_expressions_lists_the_sympy_fields() -> None:
    xs = sp.Symbol("x", real=True)
    assert ir.expressions(make_loss(xs**2)) == [xs**2]
    assert ir.expressions(make_loss(xs**2, weight=xs + 1)) == [xs**2, xs + 1]


def test_loss_ir_lookups_and_defaults() -> None:
    one, two = make_loss(sp.Integer(1)), make_loss(sp.Integer(2))
    assert one.input("lab").kind_arg == "c" and one.input("nope") is None
    assert one.param("k").type == "int" and one.param("x") is None
    one.axis_of["n"] = "n"
    one.notes.append({"pass": "p"})
    assert two.axis_of == {} and two.notes == [] and two.statements == []  # no shared mutable defaults
    assert (one.reduce_mode, one.doc, one.source) == (None, None, "")


@pytest.mark.parametrize(("kind", "integral"), [("index", True), ("int", True), ("count", True), ("real", False),
                                                ("prob", False), ("binary", False), ("sign", False)])
def test_integral_input_kinds(kind: str, integral: bool) -> None:
    assert ir.Input("v", ("n",), kind).is_integral is integral


def test_the_front_end_builds_ir_from_these_classes() -> None:
    """A parsed loss uses the nodes as documented: index symbols, Indexed inputs, a LogSoftmax read At a label."""
    loss = lossdsl.parse("loss l(x[n, c]: logits, y[n]: index(c)):\n    -log_softmax_c(x)[n, y]").ir
    (at,) = loss.expr.atoms(ir.At)
    body, axes, values = at.args
    assert isinstance(body, ir.LogSoftmax) and body.index == c and body.body == x[n, c]
    assert axes == sp.Tuple(c) and values == sp.Tuple(y[n])
    assert loss.free == ("n",) and all(ir.is_index(s) for s in free_indices(loss.expr))
