"""The front end (lossdsl.frontend): syntax tree → checked IR, a SymPy expression over indices and reductions.

Everything after it (passes, gradients, code generation) trusts that IR, so these tests pin what each construct
of LANGUAGE.md lowers to, how index names are bound to axes (the union-find the code generator sizes tensors
by), which indices are free (the batch axes `reduction` acts over), and the errors a user gets for bad input.

The references are independent of the code under test: SymPy expressions built by hand, Python's own
arithmetic, and `Reference`, a small loop interpreter of the IR that reads the value of a loss element straight
from the input tensors, compared with torch's functions. It checks what an IR *means* without going through
the code generator. Definitions are lowered directly (`frontend.lower`) so the passes never rewrite them.
"""

from __future__ import annotations

import itertools
import math

import pytest
import sympy as sp
import torch
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from lossdsl import ir
from lossdsl.errors import KindError, LossError, ParameterError, ScopeError, ShapeError, UnknownNameError
from lossdsl.frontend import check_param_value, lower
from lossdsl.parser import parse_text

# ---------------------------------------------------------------- helpers


def lower_text(text: str) -> ir.LossIR:
    """Lower the last definition of `text`; the others are the losses it may call (as a file's are)."""
    defs = parse_text(text)
    by_name = {d.name: d for d in defs}
    return lower(defs[-1], by_name.get)


def lowering_error(text: str, cls: type[LossError] = LossError) -> LossError:
    """The error lowering `text` raises, with the source attached as lossdsl.parse attaches it."""
    with pytest.raises(cls) as info:
        lower_text(text)
    return info.value.with_source(text)


def ix(*names: str) -> tuple[sp.Symbol, ...]:
    """Index symbols: non-negative integers (the only such symbols in the IR)."""
    return tuple(sp.Symbol(n, integer=True, nonnegative=True) for n in names)


def tensor(name: str, *indices: sp.Expr) -> sp.Indexed:
    return sp.Indexed(sp.IndexedBase(name), *indices)


def real(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def integer(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True)


def iverson(cond: sp.Basic) -> sp.Piecewise:
    return sp.Piecewise((1, cond), (0, True))


def reductions(e: sp.Basic) -> list[sp.Basic]:
    """The reduction nodes of an IR expression, outermost first."""
    kinds = tuple(ir.REDUCTIONS.values())
    return [node for node in sp.preorder_traversal(e) if isinstance(node, kinds)]


def same_axis(loss: ir.LossIR, a: str, b: str) -> bool:
    return loss.axis_of[a] == loss.axis_of[b]


class Reference:
    """The value of a lowered loss at each element of its free indices, computed by plain loops.

    `arrays` holds the input tensors and the shaped parameters by name, `params` the scalar parameters. Axis
    sizes come from the IR's own contract with the code generator: an index's axis (axis_of) and the tensor
    position that fixes its size (sizes_from). Only the nodes these tests produce are understood."""

    def __init__(self, loss: ir.LossIR, arrays: dict[str, torch.Tensor], params: dict[str, float] | None = None):
        self.loss, self.arrays, self.params = loss, arrays, params or {}

    def size(self, index: sp.Symbol) -> int:
        name, position = self.loss.sizes_from[self.loss.axis_of[str(index)]]
        return self.arrays[name].shape[position]

    def holds(self, cond: sp.Basic, env: dict) -> bool:
        if cond == sp.true or cond == sp.false:
            return bool(cond)
        if isinstance(cond, sp.And):
            return all(self.holds(c, env) for c in cond.args)
        if isinstance(cond, sp.Or):
            return any(self.holds(c, env) for c in cond.args)
        if isinstance(cond, sp.Not):
            return not self.holds(cond.args[0], env)
        compare = {sp.Eq: float.__eq__, sp.Ne: float.__ne__, sp.Lt: float.__lt__, sp.Le: float.__le__,
                   sp.Gt: float.__gt__, sp.Ge: float.__ge__}[type(cond)]
        return compare(self.value(cond.lhs, env), self.value(cond.rhs, env))

    def value(self, e: sp.Basic, env: dict) -> float:
        if e.is_number:
            return float(e)
        if isinstance(e, sp.Symbol):
            return float(env[e]) if e in env else float(self.params[e.name])
        if isinstance(e, sp.Indexed):
            position = tuple(int(self.value(i, env)) for i in e.indices)
            return float(self.arrays[e.base.name][position])
        if isinstance(e, sp.Add):
            return sum(self.value(a, env) for a in e.args)
        if isinstance(e, sp.Mul):
            return math.prod(self.value(a, env) for a in e.args)
        if isinstance(e, sp.Pow):
            return self.value(e.base, env) ** self.value(e.exp, env)
        if isinstance(e, (sp.exp, sp.log)):
            return {sp.exp: math.exp, sp.log: math.log}[type(e)](self.value(e.args[0], env))
        if isinstance(e, sp.Piecewise):
            return next(self.value(v, env) for v, c in e.args if self.holds(c, env))
        if isinstance(e, ir.Size):
            return float(self.size(e.args[0]))
        if isinstance(e, ir.At):
            body, axes, values = e.args
            at = {a: int(self.value(v, env)) for a, v in zip(axes, values, strict=True)}
            return self.value(body, {**env, **at})
        if isinstance(e, tuple(ir.REDUCTIONS.values())):
            ranges = [range(self.size(i)) for i in e.indices]
            terms = [self.value(e.body, inner) for point in itertools.product(*ranges)
                     if self.holds(e.cond, inner := {**env, **dict(zip(e.indices, point, strict=True))})]
            combine = {"sum": sum, "mean": lambda t: sum(t) / len(t), "prod": math.prod, "max": max, "min": min,
                       "logsumexp": lambda t: math.log(sum(math.exp(v) for v in t)),
                       "norm": lambda t: math.sqrt(sum(v * v for v in t))}[e.op]
            return combine(terms)
        if isinstance(e, tuple(ir.NORMALISERS.values())):
            column = [self.value(e.body, {**env, e.index: v}) for v in range(self.size(e.index))]
            here = self.value(e.body, env)
            lse = math.log(sum(math.exp(v) for v in column))
            return {"softmax": math.exp(here - lse), "log_softmax": here - lse,
                    "normalize": here / math.sqrt(sum(v * v for v in column))}[e.op]
        raise NotImplementedError(f"Reference does not evaluate {type(e).__name__}")

    def table(self, expr: sp.Expr | None = None) -> torch.Tensor:
        """The expression (the loss by default) at every element of the loss's free indices, in their order."""
        free = ix(*self.loss.free)
        shape = [self.size(i) for i in free]
        out = torch.empty(shape, dtype=torch.float64)
        for point in itertools.product(*map(range, shape)):
            out[point] = self.value(self.loss.expr if expr is None else expr, dict(zip(free, point, strict=True)))
        return out


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected.to(torch.float64), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- names, kinds and parameters

n, c, d, i, j, s = ix("n", "c", "d", "i", "j", "*s")


def test_undeclared_inputs_are_typed_scalars_that_broadcast() -> None:
    loss = lower_text("loss a(x, y: int, z: count, u: index(c), p: prob):\n    x + y + z + u + p")
    assert loss.expr == real("x") + integer("y") + integer("z") + integer("u") + real("p")
    assert loss.broadcast and loss.free == ()
    assert [(inp.name, inp.axes, inp.kind) for inp in loss.inputs] == [
        ("x", None, "real"), ("y", None, "int"), ("z", None, "count"), ("u", None, "index"), ("p", None, "prob")]


def test_declared_inputs_and_shaped_parameters_are_indexed_by_their_axis_names() -> None:
    loss = lower_text("loss a(x[n, c], g[n]; w[c] = 1):\n    x * w + g")
    assert loss.expr == tensor("x", n, c) * tensor("w", c) + tensor("g", n)
    assert loss.free == ("n", "c") and not loss.broadcast
    assert loss.sizes_from == {"n": ("x", 0), "c": ("x", 1)}


def test_scalar_parameters_by_type() -> None:
    loss = lower_text("loss a(x[n]; g = 2.5 >= 0, k: int = 2, on: bool = true, t: learnable = 0, need):\n"
                      "    x * g * k * on * t * need")
    assert loss.expr == tensor("x", n) * real("g") * integer("k") * integer("on") * real("t") * real("need")
    params = {p.name: (p.type, p.default, p.constraint) for p in loss.params}
    assert params == {"g": (None, 2.5, (">=", (0,))), "k": ("int", 2, None), "on": ("bool", True, None),
                      "t": ("learnable", 0, None), "need": (None, None, None)}


@pytest.mark.parametrize("default,expected", [
    ("1e-5", 1e-5), ("-100", -100), ("2*3 - 1", 5), ("2^10", 1024), ("-2^2", -4), ("1/4", 0.25),
    ("inf", math.inf), ("-inf", -math.inf), ("true", True), ("false", False), ("(1 + 1)^-1", 0.5),
])
def test_defaults_are_evaluated_constants(default: str, expected: float) -> None:
    (p,) = lower_text(f"loss a(x; w = {default}):\n    x * w").params
    assert p.default == expected and type(p.default) is type(expected)


def _arithmetic(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One more level of bracketed arithmetic on integers: a binary operation, a small power or a negation."""
    binary = st.tuples(inner, st.sampled_from("+-*/"), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    power = st.tuples(inner, st.integers(0, 3)).map(lambda t: f"({t[0]})^{t[1]}")
    return binary | power | inner.map(lambda e: f"-{e}")


CONSTANT_TEXT = st.recursive(st.integers(-9, 9).map(str), _arithmetic, max_leaves=6)


@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.generate])  # no shrinking: it is known
@given(CONSTANT_TEXT)
@example("(2)^0")
def test_a_default_is_what_python_computes_for_the_same_arithmetic(expr: str) -> None:
    try:
        expected = eval(expr.replace("^", "**"))  # the test's own text: integers, + - * / ** and brackets
    except ZeroDivisionError:
        return
    (p,) = lower_text(f"loss a(x; w = {expr}):\n    x * w").params
    assert p.default == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("decl,constraint", [
    ("eps = 0 > 0", None), ("eps = 0 >= 0", (">=", (0,))), ("eps = 1 < 1", None), ("eps = 1 <= 1", ("<=", (1,))),
    ("eps = 1e300 in [0, inf]", ("in", (0, math.inf))), ("eps = -1e-9 in [0, 1]", None),
    ("eps = 1 in [-1, 2^1]", ("in", (-1, 2))),
])
def test_a_default_is_checked_against_its_constraint_at_the_boundary(decl: str, constraint: tuple | None) -> None:
    text = f"loss a(x; {decl}):\n    x * eps"
    if constraint is not None:
        assert lower_text(text).params[0].constraint == constraint
    else:
        err = lowering_error(text, ParameterError)
        assert "parameter 'eps'" in err.message and "violates its constraint eps" in err.message
        assert (err.line, err.column) == (1, 11)


# ---------------------------------------------------------------- expressions

x, y, z = real("x"), real("y"), real("z")

ELEMENTWISE = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "sign": sp.sign, "sin": sp.sin, "cos": sp.cos,
    "tanh": sp.tanh, "cosh": sp.cosh, "sinh": sp.sinh, "acos": sp.acos, "sigmoid": ir.sigmoid,
    "logsigmoid": ir.logsigmoid, "softplus": ir.softplus, "relu": ir.relu, "log1p": ir.log1p, "expm1": ir.expm1,
    "erf": sp.erf,
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_each_documented_elementwise_function(name: str) -> None:
    assert lower_text(f"loss a(x, y):\n    {name}(x - y)").expr == ELEMENTWISE[name](x - y)


@pytest.mark.parametrize("text,expected", [
    ("x + y*z - x/y", x + y * z - x / y),
    ("x^y^z", x ** (y**z)),
    ("-x^2", -(x**2)),
    ("x ** 0.5", x ** sp.Float(0.5)),
    ("2*x + 2.0*y", sp.Integer(2) * x + sp.Float(2.0) * y),
    ("|x - y|", sp.Abs(x - y)),
    ("pi * x + true - false", sp.pi * x + 1),
    ("min(x, y) + max(x, z)", sp.Min(x, y) + sp.Max(x, z)),
    ("xlogy(x, y)", ir.xlogy(x, y)),
    ("clamp(x, y, z)", sp.Min(sp.Max(x, y), z)),
    ("where(x > 0, y, z)", sp.Piecewise((y, x > 0), (z, True))),
    ("y if x <= 1 else z", sp.Piecewise((y, x <= 1), (z, True))),
    ("[x > y]", iverson(x > y)),
    ("[x == y] + [x != y] + [x < y] + [x >= y]",
     iverson(sp.Eq(x, y)) + iverson(sp.Ne(x, y)) + iverson(x < y) + iverson(x >= y)),
    ("[x > 0 and not y > 0 or z == 1]", iverson(sp.Or(sp.And(x > 0, sp.Not(y > 0)), sp.Eq(z, 1)))),
])
def test_arithmetic_conditions_and_choices(text: str, expected: sp.Expr) -> None:
    assert lower_text(f"loss a(x, y, z):\n    {text}").expr == expected


def test_a_number_used_as_a_condition_means_it_is_nonzero() -> None:
    loss = lower_text("loss a(x[n], y[n]):\n    [x] + [not y] + where(x, 1, 2)")
    xn, yn = tensor("x", n), tensor("y", n)
    assert loss.expr == (iverson(sp.Ne(xn, 0)) + iverson(sp.Eq(yn, 0))
                         + sp.Piecewise((1, sp.Ne(xn, 0)), (2, True)))


@pytest.mark.parametrize("text,expected", [
    ("[x]", iverson(sp.Ne(x, 0))),
    ("[not x]", iverson(sp.Eq(x, 0))),
    ("[x and y]", iverson(sp.And(sp.Ne(x, 0), sp.Ne(y, 0)))),
    ("where(x, y, z)", sp.Piecewise((y, sp.Ne(x, 0)), (z, True))),
])
def test_a_scalar_input_used_as_a_condition_means_it_is_nonzero(text: str, expected: sp.Expr) -> None:
    assert lower_text(f"loss a(x, y, z):\n    {text}").expr == expected


def test_an_index_name_used_as_a_value_is_its_integer_position() -> None:
    loss = lower_text("loss a(x[n, c], y[n]: index(c), q[i, j]):\n    sum_c([c == y] * x) + sum_j([i != j] * q)")
    assert loss.expr == (ir.Sum_(iverson(sp.Eq(c, tensor("y", n))) * tensor("x", n, c), sp.Tuple(c), sp.true)
                         + ir.Sum_(iverson(sp.Ne(i, j)) * tensor("q", i, j), sp.Tuple(j), sp.true))
    assert loss.free == ("n", "i")


def test_an_axis_name_in_capitals_is_its_size() -> None:
    loss = lower_text("loss a(x[n, c, *s]):\n    sum_c(x) / C + N * S")
    assert loss.expr == (ir.Sum_(tensor("x", n, c, s), sp.Tuple(c), sp.true) / ir.Size(c)
                         + ir.Size(n) * ir.Size(s))
    assert loss.free == ("n", "*s")


def test_calls_of_fn_inputs_grad_and_builtins_are_opaque_nodes() -> None:
    loss = lower_text("loss a(x[n], f: fn):\n    f(x)[n] + grad(sum(x^2), x)")
    assert loss.expr == (ir.FnCall(sp.Symbol("f"), sp.Tuple(tensor("x", n)), sp.Tuple(n))
                         + ir.Grad(ir.Sum_(tensor("x", n) ** 2, sp.Tuple(n), sp.true), tensor("x", n)))
    assert loss.free == ("n",)
    unlabelled = lower_text("loss a(x[n], f: fn):\n    f(x)")
    assert unlabelled.free == () and unlabelled.broadcast
    ctc = lower_text("loss a(lp[t, n, c], y[n, s2], il[n], tl[n]):\n    ctc_nll(lp, y, il, tl, 0)[n]")
    assert ctc.expr == ir.FnCall(sp.Symbol("ctc_nll"), sp.Tuple(tensor("lp", *ix("t", "n", "c")),
                                                                tensor("y", *ix("n", "s2")), tensor("il", n),
                                                                tensor("tl", n), 0), sp.Tuple(n))
    assert ctc.free == ("n",)


# ---------------------------------------------------------------- reductions and normalisers

REDUCTION_CLASSES = {"sum": ir.Sum_, "mean": ir.Mean_, "prod": ir.Prod_, "max": ir.Max_, "min": ir.Min_,
                     "logsumexp": ir.LogSumExp_, "norm": ir.Norm_}


@pytest.mark.parametrize("op", sorted(REDUCTION_CLASSES))
def test_a_subscripted_reduction_binds_its_index(op: str) -> None:
    loss = lower_text(f"loss a(x[n, c]):\n    {op}_c(x)")
    assert loss.expr == REDUCTION_CLASSES[op](tensor("x", n, c), sp.Tuple(c), sp.true)
    assert loss.free == ("n",)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "prod", "logsumexp", "norm"])
def test_a_one_argument_reduction_binds_every_free_index(op: str) -> None:
    loss = lower_text(f"loss a(x[n, c], y):\n    {op}(x * y)")
    assert loss.expr == REDUCTION_CLASSES[op](tensor("x", n, c) * y, sp.Tuple(n, c), sp.true)
    assert loss.free == ()


def test_max_and_min_of_two_arguments_stay_elementwise() -> None:
    loss = lower_text("loss a(x[n], y[n]):\n    max(x, y) - min(x, y)")
    assert loss.expr == sp.Max(tensor("x", n), tensor("y", n)) - sp.Min(tensor("x", n), tensor("y", n))
    assert loss.free == ("n",)


@pytest.mark.parametrize("op,cls", [("softmax", ir.Softmax), ("log_softmax", ir.LogSoftmax),
                                    ("normalize", ir.Normalize)])
def test_a_normaliser_keeps_its_index_free(op: str, cls: type) -> None:
    loss = lower_text(f"loss a(x[n, c]):\n    {op}_c(x)")
    assert loss.expr == cls(tensor("x", n, c), c)
    assert loss.free == ("n", "c")


def test_braced_reductions_over_several_indices_groups_and_conditions() -> None:
    loss = lower_text("loss a(x[n, c, *s], z[i, d]):\n    sum_{c, *s}(x) + sum_{j != i}(sum_d(z[i, d] * z[j, d]))")
    found = reductions(loss.expr)
    assert ir.Sum_(tensor("x", n, c, s), sp.Tuple(c, s), sp.true) in found
    pairwise = next(r for r in found if r.cond != sp.true)
    (k,) = pairwise.indices
    assert k not in (i, j) and same_axis(loss, str(k), "i")  # a fresh name, on the axis of z's first position
    assert pairwise.cond == sp.Ne(k, i)
    assert pairwise.body == ir.Sum_(tensor("z", i, d) * tensor("z", k, d), sp.Tuple(d), sp.true)
    assert loss.free == ("n", "i")


def test_a_reduction_index_is_local_to_its_reduction() -> None:
    """`k` in two sums ranges over two different axes; a nested `k` shadows the outer one."""
    loss = lower_text("loss a(x[n, c], y[n, d]):\n    sum_k(x[n, k]) * sum_k(y[n, k])")
    (kx,) = next(r for r in reductions(loss.expr) if r.body.base.name == "x").indices
    (ky,) = next(r for r in reductions(loss.expr) if r.body.base.name == "y").indices
    assert kx != ky and same_axis(loss, str(kx), "c") and same_axis(loss, str(ky), "d")
    assert not same_axis(loss, "c", "d") and loss.free == ("n",)
    nested = lower_text("loss a(x[n, c], y[n, d]):\n    sum_k(x[n, k] * sum_k(y[n, k]))")
    outer, inner = reductions(nested.expr)
    assert same_axis(nested, str(outer.indices[0]), "c") and same_axis(nested, str(inner.indices[0]), "d")
    xs, ys = randn(2, 3), randn(2, 4)
    close(Reference(nested, {"x": xs, "y": ys}).table(), xs.sum(1) * ys.sum(1))


def test_reducing_over_a_declared_axis_the_body_does_not_use_multiplies_by_its_size() -> None:
    loss = lower_text("loss a(x[n, c], g[n]):\n    sum_c(g)")
    assert loss.expr == ir.Sum_(tensor("g", n), sp.Tuple(c), sp.true)
    xs, gs = torch.zeros(2, 5), torch.tensor([1.0, -2.0])
    close(Reference(loss, {"x": xs, "g": gs}).table(), 5 * gs)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "e", "f"]), min_size=1, max_size=4, unique=True))
def test_the_free_indices_are_the_unreduced_ones_in_declaration_order(reduced: list[str]) -> None:
    loss = lower_text(f"loss r(x[a, b, e, f]):\n    sum_{{{', '.join(reduced)}}}(x)")
    assert loss.expr == ir.Sum_(tensor("x", *ix("a", "b", "e", "f")), sp.Tuple(*ix(*reduced)), sp.true)
    assert loss.free == tuple(a for a in "abef" if a not in reduced)


# ---------------------------------------------------------------- binding indices to axes


@settings(max_examples=30, deadline=None)
@given(st.permutations(["p", "q", "r", "u", "v"]).map(lambda names: names[:3]))
def test_indexing_binds_each_name_to_the_axis_it_stands_at(names: list[str]) -> None:
    loss = lower_text(f"loss a(x[i, j, d]):\n    x[{', '.join(names)}]")
    assert loss.expr == tensor("x", *ix(*names))
    assert loss.free == tuple(names)
    assert [loss.axis_of[name] for name in names] == ["i", "j", "d"]


def test_free_indices_follow_the_axis_order_not_the_order_of_use() -> None:
    loss = lower_text("loss a(x[n, c], y[c, n]):\n    y + x")
    assert loss.expr == tensor("y", c, n) + tensor("x", n, c)
    assert loss.free == ("n", "c")


def test_pairwise_terms_bind_a_new_name_to_a_declared_axis() -> None:
    """LANGUAGE.md: after z[j, d] with z declared z[i, d], j ranges over the same axis as i."""
    loss = lower_text("loss a(z[i, d]):\n    sum_d(z[i, d] * z[j, d])")
    assert loss.expr == ir.Sum_(tensor("z", i, d) * tensor("z", j, d), sp.Tuple(d), sp.true)
    assert loss.free == ("i", "j") and same_axis(loss, "j", "i") and not same_axis(loss, "j", "d")
    zs = randn(3, 4)
    close(Reference(loss, {"z": zs}).table(), zs @ zs.T)


def test_gathering_with_an_index_input_unifies_its_axis() -> None:
    loss = lower_text("loss a(x[n, c], y[n]: index(k); w[c] = 1):\n    w[y] * x[n, y] + x[n, 0]")
    gathered = tensor("y", n)
    assert loss.expr == tensor("w", gathered) * tensor("x", n, gathered) + tensor("x", n, 0)
    assert same_axis(loss, "k", "c") and loss.free == ("n",)


def test_an_intermediate_is_inlined_and_recorded_for_display() -> None:
    loss = lower_text("loss a(x[n, c], y[n, c]):\n    p = sigmoid(x)\n    t[n, c] = p * y\n    return t + p")
    p = ir.sigmoid(tensor("x", n, c))
    assert loss.expr == p * tensor("y", n, c) + p
    assert loss.statements == [("p", p), ("t[n, c]", p * tensor("y", n, c))]


def test_an_intermediate_read_with_distinct_names_is_renamed() -> None:
    loss = lower_text("loss a(q[i, d], k[j, d]):\n    s[i, j] = sum_d(q[i, d] * k[j, d])\n    s[j, i] - s")
    dot = ir.Sum_(tensor("q", i, d) * tensor("k", j, d), sp.Tuple(d), sp.true)
    swapped = ir.Sum_(tensor("q", j, d) * tensor("k", i, d), sp.Tuple(d), sp.true)
    assert loss.expr == swapped - dot
    assert same_axis(loss, "i", "j")  # s[j, i] puts j where i stands: the two axes must agree


def test_a_bare_intermediate_inside_a_reduction_reads_that_reductions_own_index() -> None:
    loss = lower_text("loss a(x[n, c]):\n    h[n, c, j] = x[n, c] * x[n, j]\n    sum_{c, j}(h)")
    (red,) = reductions(loss.expr)
    c_, j_ = red.indices
    assert c_ == c and j_ != j and same_axis(loss, str(j_), "c")
    assert red.body == tensor("x", n, c) * tensor("x", n, j_)
    xs = randn(2, 3)
    close(Reference(loss, {"x": xs}).table(), xs.sum(1) ** 2)


SLOTS = st.lists(st.sampled_from(["i", "j", "k", "0", "1"]), min_size=3, max_size=3)


@settings(max_examples=40, deadline=None)
@given(SLOTS)
def test_reading_an_intermediate_at_any_positions_means_reading_its_value_there(slots: list[str]) -> None:
    """Distinct names rename, a repeated name reads a diagonal, a constant a fixed position (ir.At)."""
    loss = lower_text(f"loss a(x[a, b, e]; w[e] = 1):\n    t[a, b, e] = x * w\n    t[{', '.join(slots)}]")
    xs, ws = randn(2, 2, 2), randn(2)
    full = xs * ws
    names = [sl for sl in dict.fromkeys(slots) if not sl.isdigit()]
    assert set(loss.free) == set(names)
    got = Reference(loss, {"x": xs, "w": ws}).table()
    order = list(loss.free)
    for point in itertools.product(range(2), repeat=len(order)):
        env = dict(zip(order, point, strict=True))
        position = tuple(int(sl) if sl.isdigit() else env[sl] for sl in slots)
        assert got[point].item() == pytest.approx(full[position].item(), rel=1e-12)


def test_info_nce_from_language_md_means_cross_entropy_over_cosine_similarities() -> None:
    loss = lower_text("loss info_nce(q[i, d], k[j, d]; tau = 0.07 > 0):\n"
                      "    s[i, j] = sum_d(normalize_d(q)[i, d] * normalize_d(k)[j, d]) / tau\n"
                      "    -s[i, i] + logsumexp_j(s[i, j])")
    assert loss.free == ("i",) and same_axis(loss, "j", "i")
    q, k = randn(4, 3), randn(4, 3)
    logits = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / 0.5
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4), reduction="none")
    close(Reference(loss, {"q": q, "k": k}, {"tau": 0.5}).table(), expected)


def test_cross_entropy_from_language_md_means_torchs_per_element_loss_and_weight() -> None:
    loss = lower_text(
        "loss cross_entropy(x[n, c, *d]: logits, y[n, *d]: index(c);\n"
        "                   weight[c] = 1, ignore_index: int = -100, label_smoothing = 0 in [0, 1]):\n"
        "    lp = log_softmax_c(x)\n"
        "    keep = [y != ignore_index]\n"
        "    nll = -weight[y] * lp[n, y, *d]\n"
        "    smooth = -sum_c(weight[c] * lp[n, c, *d]) / C      # C: the size of axis c\n"
        "    keep * ((1 - label_smoothing) * nll + label_smoothing * smooth)\n"
        "    reduce mean weighted by keep * weight[y]\n")
    assert loss.free == ("n", "*d") and loss.reduce_mode == "weighted"
    assert loss.sentinels == {"y": ["ignore_index"]}
    xs, ys, ws = randn(3, 4, 2), torch.tensor([[0, 3], [1, 2], [3, 1]]), torch.rand(4, dtype=torch.float64) + 0.5
    params = {"ignore_index": 1, "label_smoothing": 0.2}  # a real class, so that every gather stays in range
    ref = Reference(loss, {"x": xs, "y": ys, "weight": ws}, params)
    expected = torch.nn.functional.cross_entropy(xs, ys, weight=ws, ignore_index=1, label_smoothing=0.2,
                                                 reduction="none")
    close(ref.table(), expected)
    close(ref.table(loss.reduce_weight), ws[ys] * (ys != 1))


def test_dice_from_language_md_sums_over_the_spatial_group() -> None:
    loss = lower_text("loss dice(p[n, c, *s]: prob, g[n, c, *s]: binary; eps = 1e-5 > 0):\n"
                      "    1 - (2*sum_{*s}(p*g) + eps) / (sum_{*s}(p^2) + sum_{*s}(g^2) + eps)")
    p, g, eps = tensor("p", n, c, s), tensor("g", n, c, s), real("eps")

    def over_s(e: sp.Expr) -> sp.Expr:
        return ir.Sum_(e, sp.Tuple(s), sp.true)

    assert loss.expr == 1 - (2 * over_s(p * g) + eps) / (over_s(p**2) + over_s(g**2) + eps)
    assert loss.free == ("n", "c") and loss.sizes_from["*s"] == ("p", 2)


def test_huber_from_language_md_is_a_piecewise_of_its_intermediate() -> None:
    loss = lower_text("loss huber(x, y; delta = 1.0 > 0):\n    e = |x - y|\n"
                      "    0.5*e^2 if e <= delta else delta*(e - 0.5*delta)")
    e, delta, half = sp.Abs(x - y), real("delta"), sp.Float(0.5)
    assert loss.expr == sp.Piecewise((half * e**2, e <= delta), (delta * (e - half * delta), True))
    assert loss.broadcast and loss.free == () and loss.params[0].constraint == (">", (0,))


def test_center_loss_from_language_md_leaves_the_size_of_k_to_a_keyword() -> None:
    """No input fixes the axis k of the learnable centres: sizes_from has no entry for it, which is how the
    module knows to ask for `k=` when it is built."""
    loss = lower_text("loss center(f[n, d], y[n]: index(k); c[k, d]: learnable = 0):\n"
                      "    0.5 * sum_d((f[n, d] - c[y, d])^2)")
    centre = tensor("c", tensor("y", n), d)
    assert loss.expr == sp.Float(0.5) * ir.Sum_((tensor("f", n, d) - centre) ** 2, sp.Tuple(d), sp.true)
    assert loss.free == ("n",) and loss.axis_of["k"] == "k" and "k" not in loss.sizes_from
    assert loss.params[0].type == "learnable" and loss.params[0].axes == ("k", "d")


def test_uncertainty_weighting_from_language_md_has_no_free_index() -> None:
    loss = lower_text("loss uncertainty_weighting(l[t]; s[t]: learnable = 0):\n    sum_t(exp(-s[t]) * l[t] + s[t])")
    (t_,) = ix("t")
    st_ = tensor("s", t_)
    assert loss.expr == ir.Sum_(sp.exp(-st_) * tensor("l", t_) + st_, sp.Tuple(t_), sp.true)
    assert loss.free == () and not loss.broadcast


def test_the_ir_keeps_the_name_docstring_and_source() -> None:
    text = 'loss named(x):\n    "What it does."\n    x\n'
    loss = lower_text(text)
    assert (loss.name, loss.doc, loss.source) == ("named", "What it does.", text)


@pytest.mark.parametrize("constraint,value,bad", [
    ((">", (0,)), torch.tensor([0.5, 2.0]), None), ((">", (0,)), torch.tensor([[0.5], [0.0]]), "0.0"),
    (("in", (0, 1)), torch.tensor([0.0, 1.0, 1.5]), "1.5"), (("<=", (1,)), 1, None), (("<", (1,)), 1, "1"),
    ((">=", (0,)), -0.25, "-0.25"), (None, -5.0, None), ((">", (0,)), None, None),
])
def test_parameter_values_are_checked_elementwise_against_the_constraint(constraint: tuple | None, value: object,
                                                                          bad: str | None) -> None:
    """check_param_value is what the module runs on values given by keyword (tensors included)."""
    param = ir.Param("w", None, None, 1.0, constraint)
    if bad is None:
        check_param_value(param, value)
        return
    with pytest.raises(ParameterError) as info:
        check_param_value(param, value)
    assert info.value.message.startswith(f"parameter 'w' = {bad} violates its constraint w ")
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- loss calls (inlining)


def test_a_called_loss_is_inlined_per_element_with_its_defaults_and_keywords() -> None:
    lib = "loss sq(u, v; k = 2):\n    k * (u - v)^2\n"
    assert lower_text(lib + "loss a(x[n], y[n]):\n    sq(x, y)").expr == 2 * (tensor("x", n) - tensor("y", n)) ** 2
    keyed = lower_text(lib + "loss a(x[n], y[n]; g = 1):\n    sq(x, 0, k = g + 1)")
    assert keyed.expr == (real("g") + 1) * tensor("x", n) ** 2
    assert [p.name for p in keyed.params] == ["g"] and keyed.free == ("n",)


def test_a_called_loss_with_axes_reduces_over_the_callers_matching_axis() -> None:
    lib = "loss rowdot(u[m, e], v[m, e]):\n    sum_e(u * v)\n"
    loss = lower_text(lib + "loss a(x[n, c], y[n, c]):\n    rowdot(x, y)")
    (red,) = reductions(loss.expr)
    assert same_axis(loss, str(red.indices[0]), "c") and loss.free == ("n",)
    xs, ys = randn(3, 4), randn(3, 4)
    close(Reference(loss, {"x": xs, "y": ys}).table(), (xs * ys).sum(1))


# ---------------------------------------------------------------- reduction statements


@pytest.mark.parametrize("mode", ["mean", "sum", "none", "batchmean"])
def test_a_reduce_line_sets_the_reduction(mode: str) -> None:
    loss = lower_text(f"loss a(x[n, c]):\n    x\n    reduce {mode}")
    assert (loss.reduce_mode, loss.reduce_weight) == (mode, None)
    assert lower_text("loss a(x[n, c]):\n    x").reduce_mode is None


def test_reduce_mean_weighted_by_keeps_the_weight_expression() -> None:
    loss = lower_text("loss a(x[n, c], y[n]: index(c); w[c] = 1):\n    -x[n, y]\n    reduce mean weighted by w[y]")
    assert loss.reduce_mode == "weighted" and loss.reduce_weight == tensor("w", tensor("y", n))


def test_sentinels_are_the_non_index_values_an_index_input_is_compared_with() -> None:
    loss = lower_text("loss a(x[n, c], y[n]: index(c); ig: int = -100):\n"
                      "    [y != -100] * [y != ig] * sum_c([c == y] * x)")
    assert {k: sorted(map(str, v)) for k, v in loss.sentinels.items()} == {"y": ["-100", "ig"]}
    assert lower_text("loss a(x[n, c], y[n]: index(c)):\n    sum_c([c == y] * x)").sentinels == {}


# ---------------------------------------------------------------- errors a user sees

ERRORS = [
    ("loss a(x; x = 1):\n    x", ScopeError, "'x' is declared twice", (1, 11)),
    ("loss a(y[n]: index):\n    y", KindError, "the kind `index` takes the axis it indexes", (1, 8)),
    ("loss a(f[n]: fn):\n    f", KindError, "the `fn` input 'f' cannot have axes", (1, 8)),
    ("loss a(x[n]; w = x):\n    x", ParameterError, "the default of 'w' must be a constant number", (1, 18)),
    ("loss a(x[n]; w = 1 in [0, x]):\n    x", ParameterError, "the bound of 'w' must be a constant", (1, 27)),
    ("loss a(x[n]):\n    return x\n    return x", ScopeError, "a loss has one result", (3, 5)),
    ("loss a(x[n]):\n    return x\n    y = x", ScopeError, "nothing may follow the loss expression", (3, 5)),
    ("loss a(x[n]):\n    y = x", ScopeError, "loss 'a' has no result line", (1, 1)),
    ("loss a(x[n]):\n    x\n    reduce sum weighted by x", ScopeError, "only `reduce mean` can be", (3, 5)),
    ("loss a(x[n]):\n    x + 1 = x\n    x", KindError, "left side of `=` must be a name", (2, 5)),
    ("loss a(x[n]):\n    x = 2\n    x", ScopeError, "'x' is an input or parameter and cannot be", (2, 5)),
    ("loss a(x[n]):\n    s[n, 0] = x\n    s", KindError, "an intermediate is declared with index names", (2, 10)),
    ("loss a(x[n], f: fn):\n    f(x)[0]", KindError, "a function's result is labelled with index names", (2, 5)),
    ("loss a(x[n, c]):\n    (x + 1)[n]", ShapeError, "the expression has 2 axes (n, c) but is indexed with 1", (2, 5)),
    ("loss a(x[n]):\n    y = x\n    y[n, n]", ShapeError, "'y' has 1 axis (n) but is indexed with 2", (3, 5)),
    ("loss a(x[n, c, *s]):\n    x[n, *s, c]", ShapeError, "the group *s stands where axis 'c' is declared", (2, 10)),
    ("loss a(x[n, c], y: index(c)):\n    x[n, y]", ShapeError, "declare the axes of the index input 'y'", (2, 10)),
    ("loss a(x[n]):\n    exp(x, x)", KindError, "exp() takes 1 argument, got 2", (2, 5)),
    ("loss a(x[n]):\n    clamp(x, 0)", KindError, "clamp() takes 3 arguments, got 2", (2, 5)),
    ("loss a(x[n]):\n    sum_{n}(x, x)", KindError, "takes one expression, got 2", (2, 5)),
    ("loss a(x[n]):\n    summ_{n}(x)", UnknownNameError, "unknown reduction 'summ'; did you mean 'sum'?", (2, 5)),
    ("loss a(x[n, c]):\n    softmax_{n, c}(x)", KindError, "softmax normalises over exactly one index", (2, 5)),
    ("loss a(x[n, c]):\n    x * cc", UnknownNameError, "unknown name 'cc'; did you mean 'c'?", (2, 9)),
    ("loss a(x[n, c]):\n    sum_cc(x[n, c])", ScopeError, "index 'cc' does not occur in the reduced expression; "
     "did you mean 'c'?", (2, 5)),
    ("loss a(x[n, c]):\n    sigmod(x)", UnknownNameError, "unknown function 'sigmod'; did you mean 'sigmoid'?", (2, 5)),
    ("loss a(x[n]):\n    ctc_nll(x)", KindError, "ctc_nll() takes 5 arguments: ctc_nll(log_probs[t, n, c]", (2, 5)),
    ("loss a(x[i]):\n    s[i, j] = x[i]\n    s[i, j] * j", ScopeError,
     "index 'j' does not range over any input's axis: index a tensor with it, as in x[j]", (1, 1)),
    ("loss sq(u, v):\n    (u - v)^2\nloss a(x[n]):\n    sq(x)", KindError, "loss 'sq' takes 2 inputs, got 1", (4, 5)),
    ("loss dot(u[e], v[e]):\n    sum_e(u * v)\nloss a(x[n, c], y[n, c]):\n    dot(x, y)", ShapeError,
     "argument u of 'dot' needs 1 free indices, got 2", (4, 9)),
    ("loss sc(u; kk = 2):\n    kk * u\nloss a(x[n]):\n    sc(x, k = 3)", UnknownNameError,
     "loss 'sc' has no parameter 'k'; did you mean 'kk'?", (4, 15)),
    ("loss sc(u; kk):\n    kk * u\nloss a(x[n]):\n    sc(x)", ParameterError, "loss 'sc' needs a value for 'kk'",
     (4, 5)),
    ("loss a(x: real(c)):\n    x", KindError, "only the kind `index` takes an axis (`index(c)`); `real` stands alone",
     (1, 8)),
    ("loss a(x[n]):\n    sum_(x)", ScopeError, "sum_ names no index: write sum_c(x) for one axis, sum_{c, k}(x)",
     (2, 5)),
    ("loss a(x[n]):\n    softmax_(x)", ScopeError, "softmax_ names no index: write softmax_c(x) for one axis",
     (2, 5)),
]


@pytest.mark.parametrize("text,cls,fragment,where", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_a_rejected_definition_names_the_problem_at_its_place(text: str, cls: type, fragment: str,
                                                              where: tuple[int, int]) -> None:
    err = lowering_error(text, cls)
    assert fragment in err.message
    assert (err.line, err.column) == where
    rendered = str(err).splitlines()
    assert rendered[0] == f"line {where[0]}, column {where[1]}: {err.message}"
    assert rendered[1] == "    " + text.splitlines()[where[0] - 1]
    assert rendered[2].index("^") == 4 + where[1] - 1


# ---------------------------------------------------------------- regressions: bugs these tests found, fixed


def test_calling_a_loss_twice_keeps_the_callers_axes_apart() -> None:
    loss = lower_text("loss rowsum(u[m, e]):\n    sum_e(u)\nloss a(x[n, c], y[n, d]):\n    rowsum(x) + rowsum(y)")
    assert not same_axis(loss, "c", "d")  # x and y may have different widths


def test_a_called_loss_ties_the_axes_its_inputs_share() -> None:
    loss = lower_text("loss pair(u[e], v[e]):\n    sum_e(u * v)\nloss a(p[c], q[d]):\n    pair(p, q)")
    assert same_axis(loss, "c", "d")  # else a size mismatch surfaces as torch's RuntimeError, not an InputError


def test_a_normaliser_over_a_new_index_name_keeps_that_name() -> None:
    loss = lower_text("loss a(x[n, c], y[n, c]):\n    softmax_k(x[n, k]) * y[n, k]")
    assert len(loss.free) == 2  # elementwise over (n, k), not an outer product over (n, k__1, k)


def test_reading_an_intermediate_with_its_bound_index_name() -> None:
    loss = lower_text("loss a(q[i, d], k[j, d]):\n    s[i, j] = sum_d(q[i, d] * k[j, d])\n    s[i, d]")
    q, k = randn(3, 4), randn(4, 4)
    close(Reference(loss, {"q": q, "k": k}).table(), q @ k.T)


@pytest.mark.parametrize("default,expected", [("2^0", 1), ("1 + 0", 1), ("3 * 0", 0), ("100.0 * 200", 20000.0)])
def test_a_default_with_a_zero_or_large_right_operand(default: str, expected: float) -> None:
    (p,) = lower_text(f"loss a(x; w = {default}):\n    x * w").params
    assert p.default == expected


@pytest.mark.parametrize("default", ["1/0", "10.0^400", "(-1)^0.5"])
def test_a_default_python_cannot_compute_as_a_real_number_is_a_parameter_error(default: str) -> None:
    with pytest.raises(ParameterError, match="'w'"):
        lower_text(f"loss a(x; w = {default}):\n    x * w")


@pytest.mark.parametrize("decl", ["w = 1 == 2", "w = 1 != 1"])  # wrong whether or not `==` is meant to work
def test_an_equality_constraint_is_a_loss_error(decl: str) -> None:
    with pytest.raises(LossError):
        lower_text(f"loss a(x; {decl}):\n    x * w")


@pytest.mark.parametrize("decl", ["k: int = 1.5", "k: bool = 2"])
def test_a_typed_parameter_default_of_the_wrong_type_is_rejected(decl: str) -> None:
    with pytest.raises(ParameterError, match="'k'"):
        lower_text(f"loss a(x; {decl}):\n    x * k")


def test_a_recursive_loss_is_a_loss_error() -> None:
    try:
        lower_text("loss b(u):\n    a(u)\nloss a(x):\n    b(x)")
        raised: type[BaseException] | None = None
    except (LossError, RecursionError) as err:  # caught here: pytest would render a thousand-frame traceback
        raised = type(err)
    assert raised is not None and issubclass(raised, LossError), raised


@pytest.mark.parametrize("call", ["sum(x, x)", "mean()"])
def test_a_reduction_with_the_wrong_argument_count_does_not_suggest_itself(call: str) -> None:
    err = lowering_error(f"loss a(x[n]):\n    {call}")
    name = call.split("(")[0]
    assert f"did you mean '{name}'" not in err.message


def test_where_rejects_keywords_like_the_other_functions() -> None:
    with pytest.raises(KindError):
        lower_text("loss a(x[n]):\n    where(x > 0, x, 0, k = 1)")


def test_a_constant_keyword_violating_the_callees_constraint_is_rejected() -> None:
    with pytest.raises(ParameterError, match="kk"):
        lower_text("loss sc(u; kk = 2 > 0):\n    kk * u\nloss a(x[n]):\n    sc(x, kk = -1)")


def test_an_index_listed_twice_in_a_reduction_is_rejected() -> None:
    with pytest.raises(LossError):
        lower_text("loss a(x[n, c]):\n    sum_{c, c}(x)")


def test_a_single_index_where_a_group_is_declared_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match=r"\*s"):
        lower_text("loss a(x[n, c, *s]):\n    x[n, c, k]")
