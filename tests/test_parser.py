"""The grammar's surface: headers, statements, line continuation, spellings, docstrings."""

from __future__ import annotations

import pytest

import lossdsl
from lossdsl import LossSyntaxError
from lossdsl import syntax as s
from lossdsl.parser import parse_text

HEADER = """
# a comment line
loss full(x[n, c, *s]: logits, y[n, *s]: index(c), f: fn;
          w[c] = 1, k: int = -100, on: bool = false, t[m]: learnable = 0,
          eps = 1e-5 > 0, a = 0.5 in [0, 1], need):
    "What it is for."
    z[i, j] = x[i, 0, *s] ** 2   # indexed intermediate
    return z
    reduce mean weighted by w[y]
"""


def test_header_declares_inputs_kinds_and_parameters() -> None:
    (d,) = parse_text(HEADER)
    assert d.name == "full" and d.doc == "What it is for."
    assert [(i.name, i.kind, i.kind_arg) for i in d.inputs] == [
        ("x", "logits", None), ("y", "index", "c"), ("f", "fn", None)]
    assert d.inputs[0].axes == (s.Axis("n"), s.Axis("c"), s.Axis("s", group=True))
    params = {p.name: p for p in d.params}
    assert params["w"].axes == (s.Axis("c"),) and params["w"].default == s.Num(params["w"].span, 1)
    assert params["k"].type == "int" and params["on"].type == "bool" and params["t"].type == "learnable"
    assert params["eps"].constraint.op == ">" and params["a"].constraint.op == "in"
    assert params["need"].default is None
    assert [st.kind for st in d.body] == ["assign", "return", "reduce"]
    assert d.body[2].reduce_mode == "mean" and d.body[2].value is not None


def test_brackets_continue_lines_and_files_hold_several_losses() -> None:
    text = "loss a(x):\n    (x +\n     1) * sum(\n  x)\n\nloss b(y):\n    y\n"
    defs = parse_text(text)
    assert [d.name for d in defs] == ["a", "b"]
    assert isinstance(defs[0].body[0].value, s.Binary)


@pytest.mark.parametrize("text,expected", [
    ("-x^2", s.Unary(None, "-", s.Binary(None, "^", s.Name(None, "x"), s.Num(None, 2)))),
    ("a^b^c", s.Binary(None, "^", s.Name(None, "a"), s.Binary(None, "^", s.Name(None, "b"), s.Name(None, "c")))),
    ("a**-b", s.Binary(None, "^", s.Name(None, "a"), s.Unary(None, "-", s.Name(None, "b")))),
    ("a - b - c", s.Binary(None, "-", s.Binary(None, "-", s.Name(None, "a"), s.Name(None, "b")), s.Name(None, "c"))),
    ("|a - b|", s.Unary(None, "abs", s.Binary(None, "-", s.Name(None, "a"), s.Name(None, "b")))),
    ("[a > 0]", s.Unary(None, "iverson", s.Binary(None, ">", s.Name(None, "a"), s.Num(None, 0)))),
    ("α * τ", s.Binary(None, "*", s.Name(None, "alpha"), s.Name(None, "tau"))),
])
def test_precedence_and_spellings(text: str, expected: s.Expr) -> None:
    (d,) = parse_text(text)
    assert d.body[0].value == expected


def test_sigma_spells_sum_and_braced_reductions_parse() -> None:
    (d,) = parse_text("Σ_c(x) + ∑_{i, *s}(x) + sum_{k != i}(x) + prod_{k <= j}(x)")
    calls = []

    def walk(e) -> None:
        if isinstance(e, s.Call):
            calls.append((e.func, e.red_items))
        for v in getattr(e, "__dict__", {}).values():
            if isinstance(v, s.Node):
                walk(v)

    walk(d.body[0].value)
    names = [c[0] for c in calls]
    assert names == ["sum_c", "sum_", "sum_", "prod_"]
    items = [c[1] for c in calls if c[1]]
    assert [(i.index, i.group) for i in items[0]] == [("i", False), ("s", True)]
    assert (items[1][0].index, items[1][0].op) == ("k", "!=")


@pytest.mark.parametrize("text,line,col", [
    ("loss a(x):\n    x +", 2, 8),
    ("loss a(x:\n    x", 2, 6),
    ("loss a(x):\n    x ? 1", 2, 7),
    ("loss (x):\n    x", 1, 6),
])
def test_syntax_errors_have_position_and_caret(text: str, line: int, col: int) -> None:
    with pytest.raises(LossSyntaxError) as info:
        parse_text(text)
    assert (info.value.line, info.value.column) == (line, col)
    assert "^" in str(info.value)


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_an_empty_text_says_so(text: str) -> None:
    """Not lark's 'unexpected end of input (an unclosed bracket ...?)', which points at nothing wrong."""
    with pytest.raises(LossSyntaxError, match="the text is empty"):
        lossdsl.compile(text)


def test_a_loss_defined_twice_in_a_file_is_an_error() -> None:
    """The second definition silently replaced the first."""
    text = "loss a(x):\n    x^2\n\nloss b(x):\n    x\n\nloss a(x):\n    x^3\n"
    with pytest.raises(lossdsl.ScopeError, match=r"loss 'a' is defined twice \(first at line 1\)") as info:
        lossdsl.load(text)
    assert info.value.line == 7
