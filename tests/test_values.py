"""lossdsl.values: the emitter's values (`V`) and how numbers print into generated code.

* `_literal` writes a SymPy number as Python source. Generated code evaluates it, so it must be valid
  Python naming nothing but `float`, evaluate to a float (never an int: `x ** 2` and `x ** 2.0` differ in
  torch's type promotion for integer tensors), and round-trip: the value it evaluates to is the float nearest
  the number (checked against Python's own correctly rounded int/Fraction conversions), with inf and nan
  spelled as float('inf') / float('nan').
* `_paren` parenthesises an operand only where needed. The emitter splices operands into templates such as
  f"{_paren(a)} ** {_paren(b)}"; Python's parser is the reference: the spliced text must parse to the
  operator applied to exactly the operands' own trees.
* `V` is a frozen record: emitters rebuild values rather than mutate them, and read `is_tensor` from `kind`.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable
from fractions import Fraction

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ir
from lossdsl.values import V, _literal, _paren


def run_literal(code: str) -> float:
    """Evaluate a literal the way generated code would see it, with nothing in scope but float."""
    value = eval(compile(code, "<literal>", "eval"), {"__builtins__": {"float": float}}, {})
    assert type(value) is float, (code, value)
    return value


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


# ---- V
def test_a_value_is_a_tensor_without_labels_by_default() -> None:
    v = V("t1")
    assert (v.code, v.labels, v.kind, v.ell) == ("t1", (), "tensor", False)
    assert v.is_tensor


@pytest.mark.parametrize(("kind", "tensor"), [("tensor", True), ("num", False), ("py", False)])
def test_is_tensor_follows_the_kind(kind: str, tensor: bool) -> None:
    assert V("x", ("n",), kind).is_tensor is tensor


def test_values_are_frozen_records() -> None:
    v = V("t1", ("n", "c"), "tensor", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.code = "t2"  # type: ignore[misc]
    assert v == V("t1", ("n", "c"), "tensor", True) and hash(v) == hash(V("t1", ("n", "c"), "tensor", True))
    assert v != V("t1", ("c", "n"), "tensor", True) and v != V("t1", ("n", "c"), "tensor", False)
    relabelled = dataclasses.replace(v, labels=("m", "c"))
    assert relabelled.labels == ("m", "c") and v.labels == ("n", "c")


# ---- _literal
@pytest.mark.parametrize(("number", "text"), [
    (sp.Integer(0), "0.0"), (sp.Integer(3), "3.0"), (sp.Integer(-7), "-7.0"), (sp.Rational(1, 2), "0.5"),
    (sp.Rational(-3, 4), "-0.75"), (sp.Float(1e-5), "1e-05"), (sp.oo, "float('inf')"), (-sp.oo, "float('-inf')"),
    (sp.nan, "float('nan')"),
])
def test_literal_text(number: sp.Basic, text: str) -> None:
    assert _literal(number) == text


@settings(max_examples=150, deadline=None)
@given(n=st.integers(-(10**300), 10**300) | st.integers(-(2**60), 2**60) | st.integers(-1000, 1000))
def test_integer_literals_round_trip(n: int) -> None:
    code = _literal(sp.Integer(n))
    assert run_literal(code) == float(n)
    if abs(n) < 2**53:
        assert code == f"{n}.0"  # exact and readable


def test_integers_at_the_edge_of_exact_floats() -> None:
    for n in (2**53 - 1, 2**53, 2**53 + 1, -(2**53) - 1, 2**1023, 10**308):
        assert run_literal(_literal(sp.Integer(n))) == float(n)


@settings(max_examples=150, deadline=None)
@given(p=st.integers(-(10**30), 10**30), q=st.integers(1, 10**30))
def test_rational_literals_are_the_nearest_float(p: int, q: int) -> None:
    assert run_literal(_literal(sp.Rational(p, q))) == float(Fraction(p, q))


@settings(max_examples=150, deadline=None)
@given(v=st.floats(allow_nan=True, allow_infinity=True))
def test_float_literals_round_trip(v: float) -> None:
    got = run_literal(_literal(sp.Float(v)))
    assert same_float(got, float(sp.Float(v)))
    if math.isfinite(v) and v != 0:
        assert got == v  # SymPy's Float of a double holds it exactly


@pytest.mark.parametrize("number", [sp.pi, sp.E, sp.sqrt(2), sp.log(2), -sp.pi / 3, sp.Float("0.1", 40)],
                         ids=["pi", "e", "sqrt2", "log2", "minus_pi_third", "float40"])
def test_irrational_and_high_precision_literals_are_the_nearest_float(number: sp.Basic) -> None:
    expected = float(sp.N(number, 50))  # correctly rounded from 50 digits
    assert run_literal(_literal(number)) == expected


def test_literals_appear_in_generated_code_as_floats(cache_dir) -> None:
    """A loss with integer and rational constants evaluates to the real formula (3 * x^2 + 1/4)."""
    x = torch.tensor([0.5, -2.0], dtype=torch.float64)
    out = lossdsl.compile("loss l(x):\n    3 * x^2 + 1/4\n", reduction="none")(x)
    assert out.tolist() == [3 * 0.25 + 0.25, 3 * 4.0 + 0.25]


@pytest.mark.parametrize("n", [10**400, -(10**400)], ids=["positive", "negative"])
def test_an_integer_beyond_the_float_range_prints_as_infinity(n: int) -> None:
    assert run_literal(_literal(sp.Integer(n))) == (math.inf if n > 0 else -math.inf)


def test_a_loss_with_a_huge_integer_constant_runs(cache_dir) -> None:
    out = lossdsl.compile("loss l(x):\n    x + 10^400\n", reduction="none")(torch.zeros(2, dtype=torch.float64))
    assert out.tolist() == [math.inf, math.inf]


@pytest.mark.parametrize(("number", "value"), [(ir.softplus(sp.Integer(1)), math.log1p(math.e)),
                                               (ir.relu(sp.Integer(-2)), 0.0), (ir.logsigmoid(sp.Integer(0)),
                                                                               -math.log(2))],
                         ids=["softplus", "relu", "logsigmoid"])
def test_a_constant_ir_function_prints_its_value(number: sp.Basic, value: float) -> None:
    assert run_literal(_literal(number)) == pytest.approx(value, rel=1e-15)


def test_a_loss_with_a_constant_softplus_runs(cache_dir) -> None:
    out = lossdsl.compile("loss l(x):\n    x + softplus(1)\n", reduction="none")(torch.zeros(1, dtype=torch.float64))
    assert out.tolist() == pytest.approx([math.log1p(math.e)], rel=1e-15)


# ---- _paren
@pytest.mark.parametrize("code", ["x", "t12", "_dev", "3.0", "2", ".5", "x.sum(1)", "x[..., None]",
                                  "torch.exp(x + 1)", "float('-inf')", "(a + b)", "torch.where(m, -a, b)[0]"])
def test_atoms_are_left_alone(code: str) -> None:
    assert _paren(code) == code


@pytest.mark.parametrize("code", ["-x", "~m", "not m", "a + b", "a * b", "x ** 2.0", "a < b", "a & b", "a | b",
                                  "a if c else b", "(a + b) * (c + d)", "(a) + (b)", "-3.0", "1e-05"])
def test_compound_operands_are_wrapped_once(code: str) -> None:
    assert _paren(code) == f"({code})"


NAMES = st.sampled_from(["x", "t1", "t23", "_dev", "mask"])
NUMBERS = st.one_of(st.integers(-50, 50).map(sp.Integer), st.floats(-1e6, 1e6).map(sp.Float),
                    st.sampled_from([sp.oo, -sp.oo, sp.nan, sp.Rational(1, 3), sp.Float(1e-5)])).map(_literal)
ATOMS = st.one_of(NAMES.map(lambda s: ast.Name(s, ast.Load())),
                  NUMBERS.map(lambda s: ast.parse(s, mode="eval").body))
BINOPS = [ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitAnd, ast.BitOr]
CMPOPS = [ast.Lt, ast.Gt, ast.LtE, ast.GtE, ast.Eq, ast.NotEq]
UNARY = [ast.USub, ast.Invert, ast.Not]


def _call(fn: str, args: list[ast.expr]) -> ast.expr:
    return ast.Call(ast.Attribute(ast.Name("torch", ast.Load()), fn, ast.Load()), args, [])


def _extend(sub: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(sub, st.sampled_from(BINOPS), sub).map(lambda t: ast.BinOp(t[0], t[1](), t[2])),
        st.tuples(st.sampled_from(UNARY), sub).map(lambda t: ast.UnaryOp(t[0](), t[1])),
        st.tuples(sub, st.sampled_from(CMPOPS), sub).map(lambda t: ast.Compare(t[0], [t[1]()], [t[2]])),
        st.tuples(sub, sub, sub).map(lambda t: ast.IfExp(t[0], t[1], t[2])),
        st.tuples(st.sampled_from([ast.And, ast.Or]), sub, sub).map(lambda t: ast.BoolOp(t[0](), [t[1], t[2]])),
        st.tuples(st.sampled_from(["exp", "where", "clamp"]), st.lists(sub, min_size=1, max_size=3)).map(
            lambda t: _call(*t)),
        sub.map(lambda e: ast.Subscript(e, ast.Constant(0), ast.Load())),
        sub.map(lambda e: ast.Call(ast.Attribute(e, "sum", ast.Load()), [ast.Constant(-1)], [])),
    )


CODES = st.recursive(ATOMS, _extend, max_leaves=6).map(lambda e: ast.unparse(ast.fix_missing_locations(e)))


def tree(code: str) -> str:
    return ast.dump(ast.parse(code, mode="eval").body)


# the emitter's templates (emit.py, fused.py): how each splices its operands, and where the operands land
BINARY: dict[str, Callable[[str, str], str]] = {
    "pow": lambda a, b: f"{_paren(a)} ** {_paren(b)}",
    "mul": lambda a, b: f"{_paren(a)} * {_paren(b)}",
    "div": lambda a, b: f"{_paren(a)} / {_paren(b)}",
    "lt": lambda a, b: f"{_paren(a)} < {_paren(b)}",
    "and": lambda a, b: " & ".join(_paren(c) for c in (a, b)),
    "or": lambda a, b: " | ".join(_paren(c) for c in (a, b)),
}


@settings(max_examples=150, deadline=None)
@given(a=CODES, b=CODES, op=st.sampled_from(sorted(BINARY)))
def test_spliced_binary_operands_keep_their_trees(a: str, b: str, op: str) -> None:
    spliced = ast.parse(BINARY[op](a, b), mode="eval").body
    if isinstance(spliced, ast.Compare):
        left, (right,) = spliced.left, spliced.comparators
    else:
        assert isinstance(spliced, ast.BinOp)
        left, right = spliced.left, spliced.right
    assert ast.dump(left) == tree(a) and ast.dump(right) == tree(b)


@settings(max_examples=100, deadline=None)
@given(a=CODES)
def test_spliced_unary_operands_keep_their_trees(a: str) -> None:
    for text, node in ((f"-{_paren(a)}", ast.UnaryOp), (f"~{_paren(a)}", ast.UnaryOp),
                       (f"not {_paren(a)}", ast.UnaryOp), (f"{_paren(a)}.reshape(3, 1)", ast.Call)):
        spliced = ast.parse(text, mode="eval").body
        assert isinstance(spliced, node)
        inner = spliced.operand if node is ast.UnaryOp else spliced.func.value
        assert ast.dump(inner) == tree(a), text


@settings(max_examples=100, deadline=None)
@given(lit=NUMBERS, op=st.sampled_from(sorted(BINARY)))
def test_printed_numbers_splice_as_operands(lit: str, op: str) -> None:
    """A negative literal is a unary minus in Python: (-2.0) ** x and -(2.0 ** x) differ."""
    for a, b in ((lit, "x"), ("x", lit)):
        spliced = ast.parse(BINARY[op](a, b), mode="eval").body
        left, right = (spliced.left, spliced.comparators[0]) if isinstance(spliced, ast.Compare) else (
            spliced.left, spliced.right)
        assert ast.dump(left) == tree(a) and ast.dump(right) == tree(b)
    power = eval(BINARY["pow"](lit, "x"), {"__builtins__": {"float": float}}, {"x": 2.0})
    assert same_float(power, run_literal(lit) ** 2.0)


def test_the_splice_check_catches_a_missing_parenthesis() -> None:
    """The property above would fail for an operand spliced without parentheses (it is not vacuous)."""
    spliced = ast.parse("a + b ** c", mode="eval").body
    assert isinstance(spliced, ast.BinOp) and ast.dump(spliced.left) != tree("a + b")
