"""Text → AST. Wraps the Lark grammar in grammar/ and turns Lark's errors into LossSyntaxError with a caret."""

from __future__ import annotations

import ast as pyast
import functools
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import syntax as s
from .cache import lark_path
from .errors import LossSyntaxError, ScopeError, Span

GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "λ": "lambda",
         "μ": "mu", "σ": "sigma", "τ": "tau"}
SUM_SIGNS = ("Σ", "∑")
_OPEN = {"LPAR", "LSQB", "LBRACE"}
_CLOSE = {"RPAR", "RSQB", "RBRACE"}


def _grammar_path() -> Path:
    packaged = Path(__file__).with_name("lossdsl.lark")
    return packaged if packaged.exists() else Path(__file__).parents[1] / "grammar" / "lossdsl.lark"


class _BracketNewlines:
    """Post-lexer: a newline inside (), [] or {} continues the line."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in _OPEN:
                depth += 1
            elif tok.type in _CLOSE:
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@functools.cache
def _lark() -> Lark:
    """The LALR tables are cached on disk (cache.lark_path): building them costs ~0.2 s a process."""
    grammar = _grammar_path().read_text(encoding="utf-8")
    return Lark(grammar, start=["file", "formula"], parser="lalr", postlex=_BracketNewlines(),
                propagate_positions=True, maybe_placeholders=True, cache=lark_path(grammar) or False)


def normalize_name(name: str) -> str:
    """Greek letters and Σ/∑ are spellings of ASCII names (`α` → `alpha`, `Σ_c` → `sum_c`)."""
    for sign in SUM_SIGNS:
        if name.startswith(sign):
            name = "sum" + name[len(sign):]
    return GREEK.get(name, name)


def _span(meta_or_tok) -> Span:
    m = meta_or_tok
    if isinstance(m, Token):
        return Span(m.line, m.column, m.end_line or m.line, m.end_column or m.column + len(m))
    if getattr(m, "empty", False) or not hasattr(m, "line"):
        return Span(1, 1, 1, 1)
    return Span(m.line, m.column, m.end_line, m.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds syntax nodes bottom-up; spans come from Lark's propagated positions."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    # expressions
    def number(self, meta, c):
        text = str(c[0])
        value = float(text) if any(ch in text for ch in ".eE") else int(text)
        return s.Num(_span(meta), value)

    def name(self, meta, c):
        return s.Name(_span(meta), normalize_name(str(c[0])))

    def add(self, meta, c):
        return s.Binary(_span(meta), "+", c[0], c[1])

    def sub(self, meta, c):
        return s.Binary(_span(meta), "-", c[0], c[1])

    def mul(self, meta, c):
        return s.Binary(_span(meta), "*", c[0], c[1])

    def div(self, meta, c):
        return s.Binary(_span(meta), "/", c[0], c[1])

    def pow(self, meta, c):
        return s.Binary(_span(meta), "^", c[0], c[2])

    def or_(self, meta, c):
        return s.Binary(_span(meta), "or", c[0], c[1])

    def and_(self, meta, c):
        return s.Binary(_span(meta), "and", c[0], c[1])

    def compare(self, meta, c):
        return s.Binary(_span(meta), str(c[1]), c[0], c[2])

    def neg(self, meta, c):
        return s.Unary(_span(meta), "-", c[0])

    def pos(self, meta, c):
        return c[0]

    def not_(self, meta, c):
        return s.Unary(_span(meta), "not", c[0])

    def abs(self, meta, c):
        return s.Unary(_span(meta), "abs", c[0])

    def iverson(self, meta, c):
        return s.Unary(_span(meta), "iverson", c[0])

    def ifelse(self, meta, c):
        return s.IfElse(_span(meta), c[1], c[0], c[2])

    def index(self, meta, c):
        return s.Subscript(_span(meta), c[0], tuple(c[1]))

    def index_list(self, meta, c):
        return tuple(c)

    def index_expr(self, meta, c):
        return s.IndexItem(_span(meta), c[0])

    def index_group(self, meta, c):
        return s.IndexItem(_span(meta), None, group=str(c[0]))

    def call(self, meta, c):
        args, kwargs = c[1] if c[1] is not None else ((), ())
        return s.Call(_span(meta), normalize_name(str(c[0])), args, kwargs)

    def braced_call(self, meta, c):
        args, kwargs = c[2] if c[2] is not None else ((), ())
        return s.Call(_span(meta), normalize_name(str(c[0])), args, kwargs, red_items=tuple(c[1]))

    def args(self, meta, c):
        pos = tuple(a for a in c if not isinstance(a, tuple))
        kw = tuple(a for a in c if isinstance(a, tuple))
        return pos, kw

    def pos_arg(self, meta, c):
        return c[0]

    def kw_arg(self, meta, c):
        return (normalize_name(str(c[0])), c[1])

    def red_items(self, meta, c):
        return c

    def red_index(self, meta, c):
        return s.RedItem(_span(meta), normalize_name(str(c[0])))

    def red_group(self, meta, c):
        return s.RedItem(_span(meta), str(c[0]), group=True)

    def red_cond(self, meta, c):
        return s.RedItem(_span(meta), normalize_name(str(c[0])), op=str(c[1]), bound=c[2])

    # statements
    def ret(self, meta, c):
        return s.Statement(_span(meta), "return", value=c[0])

    def bare(self, meta, c):
        return s.Statement(_span(meta), "bare", value=c[0])

    def assign(self, meta, c):
        return s.Statement(_span(meta), "assign", target=c[0], value=c[1])

    def reduce(self, meta, c):
        return s.Statement(_span(meta), "reduce", value=c[1], reduce_mode=str(c[0]))

    # headers
    def axis_name(self, meta, c):
        return s.Axis(normalize_name(str(c[0])))

    def axis_group(self, meta, c):
        return s.Axis(str(c[0]), group=True)

    def axes(self, meta, c):
        return tuple(c)

    def kind(self, meta, c):
        return (str(c[0]), None if c[1] is None else normalize_name(str(c[1])))

    def input(self, meta, c):
        kind, arg = c[2] if c[2] is not None else ("real", None)
        return s.InputDecl(_span(meta), normalize_name(str(c[0])), c[1], kind, arg)

    def inputs(self, meta, c):
        return tuple(c)

    def bound(self, meta, c):
        return s.Constraint(_span(meta), str(c[0]), (c[1],))

    def interval(self, meta, c):
        return s.Constraint(_span(meta), "in", (c[0], c[1]))

    def param(self, meta, c):
        ptype = None if c[2] is None else str(c[2])
        return s.ParamDecl(_span(meta), normalize_name(str(c[0])), c[1], ptype, c[3], c[4])

    def params(self, meta, c):
        return tuple(c)

    def docstring(self, meta, c):
        return pyast.literal_eval(str(c[0]))

    def loss_def(self, meta, c):
        name, inputs, params, doc, *body = c
        return s.LossDef(_span(meta), str(name), inputs or (), params or (), tuple(body), doc, self.source)

    def file(self, meta, c):
        return list(c)

    def formula(self, meta, c):
        return s.LossDef(_span(meta), "formula", (), (), tuple(c), None, self.source, header=False)


def _syntax_error(err: UnexpectedInput, text: str) -> LossSyntaxError:
    line, col = getattr(err, "line", 1), getattr(err, "column", 1)
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        msg = "unexpected end of input (an unclosed bracket or a missing expression?)"
        lines = text.rstrip("\n").splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    elif isinstance(err, UnexpectedToken):
        tok = err.token
        shown = "end of line" if tok.type == "_NL" else repr(str(tok))
        expected = sorted({_describe_terminal(n) for n in err.expected if not n.startswith("_")})[:8]
        msg = f"unexpected {shown}" + (f"; expected one of {', '.join(expected)}" if expected else "")
    elif isinstance(err, UnexpectedCharacters):
        msg = f"unexpected character {text_at(text, line, col)!r}"
    else:  # pragma: no cover - lark has no other UnexpectedInput kinds today
        msg = str(err)
    return LossSyntaxError(msg, Span(line, col, line, col + 1), text)


def _describe_terminal(name: str) -> str:
    """'(' rather than LPAR: users read symbols, not token names."""
    words = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "CMP": "a comparison", "POW": "'^'"}
    if name in words:
        return words[name]
    term = next((t for t in _lark().terminals if t.name == name), None)
    return repr(term.pattern.value) if term is not None and term.pattern.type == "str" else name.lower()


def text_at(text: str, line: int, col: int) -> str:
    lines = text.splitlines()
    return lines[line - 1][col - 1] if 0 < line <= len(lines) and 0 < col <= len(lines[line - 1]) else ""


def parse_text(text: str) -> list[s.LossDef]:
    """Parse a `.loss` file (or a bare formula) into loss definitions."""
    source = text if text.endswith("\n") else text + "\n"
    is_file = any(line.lstrip().startswith("loss ") for line in source.splitlines())
    if not is_file and not any(line.split("#", 1)[0].strip() for line in source.splitlines()):
        raise LossSyntaxError("the text is empty: no formula and no `loss` definition", Span(1, 1, 1, 1), source)
    try:
        tree = _lark().parse(source, start="file" if is_file else "formula")
    except UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    result = _ToAst(source).transform(tree)
    return _unique(result) if is_file else [result]


def _unique(defs: list[s.LossDef]) -> list[s.LossDef]:
    """A file defines each loss once: a second definition of a name silently replaced the first."""
    first: dict[str, s.LossDef] = {}
    for d in defs:
        if d.name in first:
            raise ScopeError(f"loss '{d.name}' is defined twice (first at line {first[d.name].span.line})",
                             d.span, d.source)
        first[d.name] = d
    return defs
