"""A loss as LaTeX, the way its author wrote it: the definition's statements, printed from the syntax tree.

The IR (`Loss.expr`) has been through the stability passes — a gathered `log_softmax` is a max-shifted
log-sum-exp, `(1 - p)^gamma` carries its `0^0` guard — and its intermediates are inlined, so printing it shows
what runs, not what the paper says. Printing the syntax tree keeps the author's names, intermediates and
branches: one aligned row per statement, the loss last. `Loss.latex()` and Jupyter's `_repr_latex_` use this;
`sympy.latex(loss.expr)` prints the compiled expression.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import syntax as s
from .parser import parse_text

if TYPE_CHECKING:
    from .api import Loss

# Greek names print as letters; not `nu` or `xi`, which read as "normalised u" or "x_i" as often as Greek.
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "eta", "theta", "kappa", "lambda", "mu", "pi", "rho",
         "sigma", "tau", "phi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Sigma", "Phi", "Psi", "Omega"}
SUFFIX = {"pos": "+", "neg": "-", "star": "*", "prime": "'"}
ACCENT = {"hat": r"\hat", "bar": r"\bar", "tilde": r"\tilde"}
FUNCS = {"exp": r"\exp", "log": r"\log", "sin": r"\sin", "cos": r"\cos", "tan": r"\tan", "tanh": r"\tanh",
         "cosh": r"\cosh", "sinh": r"\sinh", "acos": r"\arccos", "asin": r"\arcsin", "atan": r"\arctan",
         "min": r"\min", "max": r"\max"}
BIG = {"sum": r"\sum", "prod": r"\prod"}
OPERATOR = {"mean": r"\operatorname{mean}", "max": r"\max", "min": r"\min", "logsumexp": r"\operatorname{logsumexp}",
            "softmax": r"\operatorname{softmax}", "log_softmax": r"\log\operatorname{softmax}",
            "normalize": r"\operatorname{normalize}"}
SUBSCRIPTED = re.compile(r"^(log_softmax|logsumexp|normalize|softmax|sum|mean|prod|max|min|norm)_(\w*)$")
WHOLE = ("sum", "mean", "prod", "max", "min", "logsumexp", "norm")
COMPARE = {"==": "=", "!=": r"\neq", "<": "<", "<=": r"\leq", ">": ">", ">=": r"\geq"}

# Binding strength of what an expression prints as; an operand weaker than its context is parenthesised.
OR, AND, NOT, CMP, CASES, ADD, NEG, MUL, FRAC, CALL, ATOM = 1, 2, 3, 4, 4.5, 5, 5.5, 6, 7, 8.5, 9


def written(loss: Loss) -> str:
    """LaTeX of `loss` as its definition reads; the compiled IR's LaTeX when no source is kept."""
    import sympy as sp

    d = definition(loss.ir.source, loss.name)
    return sp.latex(loss.expr) if d is None else definition_latex(d)


def definition_text(loss: Loss) -> str:
    """The lines of the loss's own definition (a stdlib file holds many), or the formula; '' when not kept."""
    source = loss.ir.source
    d = definition(source, loss.name)
    if d is None or not d.header:
        return source.strip()
    last = max(st.span.end_line for st in d.body)  # the span of a definition runs on to the next one
    return "\n".join(source.splitlines()[d.span.line - 1:last]).rstrip()


def definition(source: str, name: str) -> s.LossDef | None:
    """The syntax tree of definition `name` in `source` (the only one, for a formula)."""
    try:
        defs = parse_text(source) if source else []
    except Exception:  # a source that no longer parses on its own: show the IR instead
        return None
    return next((d for d in reversed(defs) if d.name == name), defs[-1] if len(defs) == 1 else None)


def definition_latex(d: s.LossDef) -> str:
    """One row per statement; a single expression is printed on its own, `\\mathcal{L} = ...`."""
    head = r"\mathcal{L}" if not d.header else rf"\mathcal{{L}}_{{\text{{{_escape(d.name)}}}}}"
    rows = []
    for st in d.body:
        if st.kind == "assign":
            rows.append((Printer().tex(st.target), Printer().tex(st.value)))
        elif st.kind == "reduce":
            rows.append(("", _reduce_note(st)))
        else:
            rows.append((head, Printer().tex(st.value)))
    if len(rows) == 1:
        return f"{rows[0][0]} = {rows[0][1]}"
    lines = [f"{left} &= {right}" if left else rf"& {right}" for left, right in rows]
    return r"\begin{aligned} " + r" \\ ".join(lines) + r" \end{aligned}"


def _reduce_note(st: s.Statement) -> str:
    if st.value is None:
        return rf"\text{{reduced by {st.reduce_mode}}}"
    return rf"\text{{reduced by a {st.reduce_mode} weighted by }} {Printer().tex(st.value)}"


def _negated(e: s.Expr) -> s.Expr | None:
    """`-a * b` (parsed `(-a) * b`) without its leading minus, so products print `-a b`; None if not negated."""
    if isinstance(e, s.Unary) and e.op == "-":
        return e.operand
    if isinstance(e, s.Binary) and e.op == "*":
        inner = _negated(e.left)
        return None if inner is None else s.Binary(e.span, "*", inner, e.right)
    return None


def _escape(text: str) -> str:
    return text.replace("_", r"\_")


def name_tex(name: str) -> str:
    """`alpha` → `\\alpha`, `y_hat` → `\\hat{y}`, `k_pos` → `k_{+}`, `p_t` → `p_{t}`, `margin` → `\\mathrm{margin}`."""
    name = name.lstrip("*")
    if name.rstrip("_") in GREEK and name.endswith("_"):  # lambda_: the keyword-safe spelling
        name = name.rstrip("_")
    if name in GREEK:
        return "\\" + name
    head, sep, tail = name.partition("_")
    if sep and tail and (len(head) == 1 or head in GREEK):
        if tail in ACCENT:
            return f"{ACCENT[tail]}{{{name_tex(head)}}}"
        return f"{name_tex(head)}_{{{SUFFIX.get(tail, name_tex(tail))}}}"
    if len(name) == 1 or name.isdigit():
        return name
    if m := re.fullmatch(r"([A-Za-z])(\d+)", name):  # a1 → a_{1}
        return f"{m.group(1)}_{{{m.group(2)}}}"
    return rf"\mathrm{{{_escape(name)}}}"


def number_tex(value: float | int) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    text = f"{value:g}" if isinstance(value, float) else str(value)
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa == "1" else rf"{mantissa} \cdot {power}"


class Printer:
    """Syntax tree → LaTeX. `node` returns (tex, strength); `wrap` parenthesises a weaker operand."""

    def tex(self, e: s.Expr) -> str:
        return self.node(e)[0]

    def wrap(self, e: s.Expr, need: float) -> str:
        text, strength = self.node(e)
        return text if strength >= need else rf"\left({text}\right)"

    def node(self, e: s.Expr) -> tuple[str, float]:
        if isinstance(e, s.Num):
            return number_tex(e.value), ATOM
        if isinstance(e, s.Name):
            return {"pi": r"\pi", "inf": r"\infty"}.get(e.name, name_tex(e.name)), ATOM
        if isinstance(e, s.Unary):
            return self.unary(e)
        if isinstance(e, s.Binary):
            return self.binary(e)
        if isinstance(e, s.IfElse):
            return self.cases([(e.then, e.cond)], e.other), CASES
        if isinstance(e, s.Subscript):
            return self.subscript(e), ATOM
        if isinstance(e, s.Call):
            return self.call(e)
        raise TypeError(f"cannot print {type(e).__name__}")

    def unary(self, e: s.Unary) -> tuple[str, float]:
        if e.op == "-":
            return f"-{self.wrap(e.operand, MUL)}", NEG
        if e.op == "+":
            return self.node(e.operand)
        if e.op == "not":
            return rf"\lnot {self.wrap(e.operand, CMP)}", NOT
        if e.op == "abs":
            return rf"\left|{self.tex(e.operand)}\right|", ATOM
        return rf"\left[{self.tex(e.operand)}\right]", ATOM  # iverson

    def binary(self, e: s.Binary) -> tuple[str, float]:
        op = e.op
        if op == "/":
            return rf"\frac{{{self.tex(e.left)}}}{{{self.tex(e.right)}}}", FRAC
        if op in ("^", "**"):
            return f"{self.wrap(e.left, ATOM)}^{{{self.tex(e.right)}}}", ATOM - 0.5
        if op == "*":
            return self.product(e.left, e.right)
        if op in ("+", "-"):
            return f"{self.wrap(e.left, ADD)} {op} {self.wrap(e.right, MUL)}", ADD
        if op in COMPARE:
            return f"{self.wrap(e.left, ADD)} {COMPARE[op]} {self.wrap(e.right, ADD)}", CMP
        strength = AND if op == "and" else OR
        word = r"\land" if op == "and" else r"\lor"
        return f"{self.wrap(e.left, strength)} {word} {self.wrap(e.right, strength + 0.5)}", strength

    def product(self, left: s.Expr, right: s.Expr) -> tuple[str, float]:
        """Juxtaposition, `\\cdot` before a number; `-a b` for a negated first factor; a sum first is bracketed."""
        positive = _negated(left)
        if positive is not None:
            return f"-{self.product(positive, right)[0]}", NEG
        a = self.wrap(left, MUL) if not self.is_big(left) else rf"\left({self.tex(left)}\right)"
        b = self.wrap(right, MUL)
        sep = r" \cdot " if b[:1].isdigit() or b.startswith("-") else " "
        return f"{a}{sep}{b}", MUL

    @staticmethod
    def is_big(e: s.Expr) -> bool:
        if not isinstance(e, s.Call):
            return False
        m = SUBSCRIPTED.match(e.func)
        op = e.func.rstrip("_") if e.red_items is not None else (m.group(1) if m else e.func)
        return op in BIG and (e.red_items is not None or m is not None or e.func in WHOLE)

    def cases(self, rows: list[tuple[s.Expr, s.Expr]], other: s.Expr) -> str:
        while isinstance(other, s.IfElse):
            rows.append((other.then, other.cond))
            other = other.other
        body = [rf"{self.tex(v)} & \text{{if }} {self.tex(c)}" for v, c in rows]
        body.append(rf"{self.tex(other)} & \text{{otherwise}}")
        return r"\begin{cases} " + r" \\ ".join(body) + r" \end{cases}"

    def subscript(self, e: s.Subscript) -> str:
        items = ",".join(name_tex(it.group) if it.group else self.tex(it.expr) for it in e.items)
        if isinstance(e.base, s.Name):
            base = name_tex(e.base.name)
            return f"{{{base}}}_{{{items}}}" if "_" in base else f"{base}_{{{items}}}"
        return rf"\left[{self.tex(e.base)}\right]_{{{items}}}"

    # ---- calls
    def call(self, e: s.Call) -> tuple[str, float]:
        f, args = e.func, e.args
        if e.red_items is not None:
            items = [self.red_item(it) for it in e.red_items]
            return self.reduction(f.rstrip("_"), items, args[0])
        m = SUBSCRIPTED.match(f)
        if m and len(args) == 1 and not e.kwargs:
            return self.reduction(m.group(1), [name_tex(m.group(2))], args[0])
        if f in WHOLE and len(args) == 1 and not e.kwargs:
            return self.reduction(f, [], args[0])
        if f == "where" and len(args) == 3:
            return self.cases([(args[1], args[0])], args[2]), CASES
        if f == "not" and len(args) == 1:
            return rf"\lnot {self.wrap(args[0], CMP)}", NOT
        return self.function(e)

    def red_item(self, it: s.RedItem) -> str:
        index = name_tex(it.index)
        return index if it.op is None else f"{index} {COMPARE[it.op]} {self.tex(it.bound)}"

    def reduction(self, op: str, items: list[str], body: s.Expr) -> tuple[str, float]:
        sub = f"_{{{', '.join(items)}}}" if items else ""
        if op == "norm":
            return rf"\left\|{self.tex(body)}\right\|{sub}", ATOM
        if op in BIG:
            return f"{BIG[op]}{sub} {self.wrap(body, MUL)}", MUL
        return rf"{OPERATOR[op]}{sub}\left({self.tex(body)}\right)", CALL

    def function(self, e: s.Call) -> tuple[str, float]:
        f, args = e.func, [self.tex(a) for a in e.args]
        if f == "sqrt" and len(args) == 1:
            return rf"\sqrt{{{args[0]}}}", ATOM
        if f == "abs" and len(args) == 1:
            return rf"\left|{args[0]}\right|", ATOM
        if f == "xlogy" and len(args) == 2:
            return rf"{self.wrap(e.args[0], MUL)} \log\left({args[1]}\right)", MUL
        if f == "log1p" and len(args) == 1:
            return rf"\log\left(1 + {args[0]}\right)", CALL
        if f == "grad" and len(args) == 2:
            return rf"\nabla_{{{args[1]}}} \left({args[0]}\right)", CALL
        head = FUNCS.get(f) or (name_tex(f) if len(f) == 1 else rf"\operatorname{{{_escape(f)}}}")
        args += [f"{name_tex(k)} = {self.tex(v)}" for k, v in e.kwargs]
        return rf"{head}\left({', '.join(args)}\right)", CALL
