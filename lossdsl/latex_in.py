"""LaTeX → lossdsl source, so formulas can be pasted from papers (`from_latex`).

A small recursive-descent reader: LaTeX tokens → a formula tree → lossdsl text, which then goes through the
normal pipeline (`lossdsl.parse`), so a LaTeX loss and a hand-written one share one IR. The reader follows
the conventions papers print with: single letters are tensors (implicit multiplication between them), Greek
letters and words (`\\text{margin}`, or four letters or more in a row) are parameters, a subscript made of
summation indices indexes a tensor (`y_{i,c}` → `y[i, c]`) while any other subscript is part of the name
(`p_t`, `\\alpha_t`), `\\sum_{i=1}^{N}` renames `i` to `n` so that `\\frac{1}{N}` is the size of that axis, and
tensors inside `\\|...\\|` (or bold ones) carry a feature axis that the norm or a dot product sums over. A
clause after the formula (`, \\quad p_t = ...`) defines an intermediate; glosses (`y \\in \\{0, 1\\}`,
`\\cosh(x) = ...`) are skipped. The tree → text half lives in latex_emit.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import LossError, Span

GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
         "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "Gamma", "Delta", "Theta",
         "Lambda", "Xi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
VARIANTS = {"varepsilon": "epsilon", "vartheta": "theta", "varphi": "phi", "varrho": "rho", "varsigma": "sigma"}
FUNCS = {"log": "log", "ln": "log", "exp": "exp", "tanh": "tanh", "cosh": "cosh", "sinh": "sinh", "sin": "sin",
         "cos": "cos", "tan": "tan", "max": "max", "min": "min", "sigmoid": "sigmoid", "softplus": "softplus",
         "relu": "relu", "sign": "sign", "sgn": "sign", "erf": "erf", "abs": "abs", "log1p": "log1p"}
BIGOPS = {"sum": "sum", "prod": "prod"}
RELATIONS = {"=": "==", "<": "<", ">": ">", "le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=",
             "geqslant": ">=", "ne": "!=", "neq": "!=", "lt": "<", "gt": ">"}
SPACING = {",", ";", "!", ":", " ", "displaystyle", "textstyle", "left", "right", "big", "Big", "bigg", "Bigg",
           "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr", "limits", "nolimits", "tag", "label"}
WORD_CMDS = {"text", "mathrm", "textrm", "operatorname", "mathit", "textit", "textbf", "mathsf", "texttt"}
ACCENTS = {"hat": "hat", "widehat": "hat", "tilde": "tilde", "widetilde": "tilde", "bar": "bar",
           "overline": "bar", "dot": "dot"}
BOLD = {"mathbf", "boldsymbol", "bm", "vec", "mathbfit"}
SEPARATORS = {"quad", "qquad"}
SKIP_WORDS = {"where", "with", "and", "for", "s.t.", "subject to"}
RESERVED = {"if", "else", "and", "or", "not", "in", "return", "reduce", "loss", "weighted", "by", "true", "false",
            "pi", "inf", "where", "clamp", "xlogy", "grad", "sum", "mean", "prod", "max", "min", "norm",
            "logsumexp", "softmax", "log_softmax", "normalize", *FUNCS.values()}


class LatexError(LossError):
    """A LaTeX formula the reader cannot translate; points at the offending part of the formula."""


@dataclass(frozen=True)
class Tok:
    kind: str  # num letter cmd word sym begin end
    text: str
    pos: int


# ---- tokens
_WORD = re.compile(r"[A-Za-z]{4,}")
_E_VARIABLE = re.compile(r"(?<![\\A-Za-z])e(?![A-Za-z^])")
_TOKEN = re.compile(r"\\\\|\\[a-zA-Z]+|\\.|\d+(?:\.\d+)?|\.\d+|[a-zA-Z]|\S", re.S)


def _tokens(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace() or text[pos] == "$":
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        assert m is not None  # \S always matches a non-space character
        tok, end = m.group(), m.end()
        if tok.startswith("\\") and tok[1:] in WORD_CMDS | {"begin", "end"}:
            arg, end = _braced_raw(text, end, tok)
            kind = {"\\begin": "begin", "\\end": "end"}.get(tok, "word")
            out.append(Tok(kind, arg.strip(), pos))
        elif tok.startswith("\\") and tok[1:] in SPACING:
            if tok in ("\\left", "\\right") and text[end:end + 1] == ".":
                end += 1
            if tok in ("\\tag", "\\label"):
                _, end = _braced_raw(text, end, tok)
        elif tok == "\\\\":
            out.append(Tok("sym", "\\\\", pos))
        elif tok.isalpha() and (word := _WORD.match(text, pos)):
            out.append(Tok("word", word.group(), pos))  # `Prediction_{ij}`: a name, not ten letters
            end = word.end()
        elif tok.startswith("\\") and len(tok) == 2 and not tok[1].isalpha():
            out.append(Tok("sym", tok, pos))
        elif tok.startswith("\\"):
            out.append(Tok("cmd", tok[1:], pos))
        else:
            kind = "num" if tok[0].isdigit() or (tok[0] == "." and len(tok) > 1) else \
                "letter" if tok.isalpha() and tok.isascii() else "sym"
            out.append(Tok(kind, tok, pos))
        pos = end
    return out


def _braced_raw(text: str, pos: int, cmd: str) -> tuple[str, int]:
    """The raw text of `{...}` after commands like \\text, whose argument is not math."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        raise LatexError(f"{cmd} needs a braced argument, as in {cmd}{{...}}", _span(text, pos))
    depth, start = 0, pos
    for i in range(pos, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i], i + 1
    raise LatexError(f"unclosed brace after {cmd}", _span(text, pos))


def _span(text: str, pos: int, width: int = 1) -> Span:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return Span(line, col, line, col + max(1, width))


# ---- formula tree
@dataclass
class Node:
    pos: int


@dataclass
class Num(Node):
    value: str


@dataclass
class Sym(Node):
    base: str
    style: str  # letter, greek, word
    subs: list[list[Tok]] | None = None
    bold: bool = False


@dataclass
class Call(Node):
    fn: str
    args: list[Node]


@dataclass
class Apply(Node):
    """`f(x)` or `P(i)` with `f`, `P` not a known function: a network output or an indexed tensor."""

    base: Sym
    args: list[Node]


@dataclass
class Bin(Node):
    op: str  # + - * / ^ dot
    a: Node
    b: Node


@dataclass
class Unary(Node):
    op: str  # neg abs relu transpose iverson not
    a: Node


@dataclass
class Norm(Node):
    a: Node
    p: str


@dataclass
class Reduce(Node):
    op: str
    indices: list[str] | None
    conds: list[tuple[str, str, Node]]
    body: Node
    bound: str | None = None  # the upper limit when it is one capital letter (N in \\sum_{i=1}^{N})


@dataclass
class Cases(Node):
    rows: list[tuple[Node, Node | None]]


@dataclass
class Cmp(Node):
    op: str
    a: Node
    b: Node


class Reader:
    """Recursive descent over one clause's tokens."""

    def __init__(self, text: str, toks: list[Tok]) -> None:
        self.text, self.toks, self.i = text, toks, 0
        self.abs_depth = self.norm_depth = 0
        self.euler = not _E_VARIABLE.search(text)  # e^x is exp(x) unless the formula uses e as a variable

    # helpers
    def peek(self, k: int = 0) -> Tok | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def at(self, kind: str, text: str | None = None, k: int = 0) -> bool:
        t = self.peek(k)
        return t is not None and t.kind == kind and (text is None or t.text == text)

    def next(self) -> Tok:
        t = self.peek()
        if t is None:
            raise self.error("the formula ends too early", len(self.text))
        self.i += 1
        return t

    def expect(self, kind: str, text: str) -> Tok:
        t = self.peek()
        if t is None or t.kind != kind or t.text != text:
            raise self.error(f"expected '{text}' here", t.pos if t else len(self.text))
        return self.next()

    def error(self, message: str, pos: int) -> LatexError:
        return LatexError(message, _span(self.text, pos))

    def done(self) -> bool:
        return self.i >= len(self.toks)

    # grammar
    def expr(self) -> Node:
        left = self.conj()
        while self.at("cmd", "lor") or self.at("cmd", "vee") or self.at("word", "or"):
            t = self.next()
            left = Cmp(t.pos, "or", left, self.conj())
        return left

    def conj(self) -> Node:
        left = self.relation()
        while self.at("cmd", "land") or self.at("cmd", "wedge") or self.at("word", "and"):
            t = self.next()
            left = Cmp(t.pos, "and", left, self.relation())
        return left

    def relation(self) -> Node:
        left = self.arith()
        parts: list[Node] = []
        while (t := self.peek()) is not None and t.kind in ("sym", "cmd") and t.text in RELATIONS:
            self.next()
            right = self.arith()
            parts.append(Cmp(t.pos, RELATIONS[t.text], left, right))
            left = right
        if not parts:
            return left
        out = parts[0]
        for p in parts[1:]:
            out = Cmp(p.pos, "and", out, p)
        return out

    def arith(self) -> Node:
        if self.at("sym", "-") or self.at("sym", "+"):
            t = self.next()
            term = self.term()
            left = Unary(t.pos, "neg", term) if t.text == "-" else term
        else:
            left = self.term()
        while self.at("sym", "+") or self.at("sym", "-"):
            t = self.next()
            left = Bin(t.pos, t.text, left, self.term())
        return left

    def term(self) -> Node:
        left = self.factor()
        while True:
            t = self.peek()
            if t is None:
                return left
            if (t.kind == "cmd" and t.text in ("cdot", "times")) or (t.kind == "sym" and t.text in ("*", "/")):
                self.next()
                op = "/" if t.text == "/" else "dot"
                left = Bin(t.pos, op, left, self.factor())
            elif self.starts_atom(t):
                left = Bin(t.pos, "dot", left, self.factor())
            else:
                return left

    def starts_atom(self, t: Tok) -> bool:
        """Whether `t` begins an operand of an implicit multiplication."""
        if t.kind in ("num", "letter", "begin"):
            return True
        if t.kind == "word":
            return t.text not in ("if", "otherwise", "else", "and", "or") and not t.text.startswith("if ")
        if t.kind == "cmd":
            return t.text not in RELATIONS and t.text not in ("cdot", "times", "quad", "qquad", "in", "land",
                                                                "lor", "wedge", "vee", "top", "rangle", "notin")
        if t.text == "|":
            return self.abs_depth == 0
        if t.text == "\\|":
            return self.norm_depth == 0
        return t.text in ("(", "[")

    def factor(self) -> Node:
        if self.at("sym", "-"):
            t = self.next()
            return Unary(t.pos, "neg", self.factor())
        return self.power()

    def power(self) -> Node:
        base = self.postfix(self.atom())
        if self.at("sym", "^"):
            t = self.next()
            if self.at("cmd", "top") or self.at("letter", "T") or (self.at("sym", "{") and self.at("cmd", "top", 1)):
                self.group_tokens()
                return Unary(t.pos, "transpose", base)
            base = Bin(t.pos, "^", base, self.script())
        return base

    def postfix(self, node: Node) -> Node:
        while True:
            if self.at("sym", "_") and isinstance(node, Sym) and node.subs is None:
                self.next()
                node.subs = _split_commas(self.group_tokens())
            elif self.at("sym", "'") and isinstance(node, Sym):
                self.next()
                node.base += "_prime"
            elif self.at("sym", "(") and isinstance(node, Sym) and node.style in ("letter", "word") \
                    and self.applies():
                t = self.next()
                node = Apply(t.pos, node, self.arglist(")"))
            else:
                return node

    def applies(self) -> bool:
        """`f(x)`: a letter directly followed by a parenthesised list of plain names is an application."""
        depth, j = 0, self.i
        while j < len(self.toks):
            t = self.toks[j]
            if t.kind == "sym" and t.text in "([{":
                depth += 1
            elif t.kind == "sym" and t.text in ")]}":
                depth -= 1
                if depth == 0:
                    return True
            elif depth == 1 and not (t.kind in ("letter", "cmd", "word") or t.text in (",", "_", "'")):
                return False
            j += 1
        return False

    def script(self) -> Node:
        """The argument of ^ or of \\frac: a braced group or one token."""
        if self.at("sym", "{"):
            return Reader(self.text, self.group_tokens()).whole()
        t = self.next()
        if t.kind == "num" and len(t.text) > 1 and "." not in t.text:
            self.toks.insert(self.i, Tok("num", t.text[1:], t.pos + 1))
            return Num(t.pos, t.text[0])
        self.i -= 1
        return self.postfix(self.atom())

    def group_tokens(self) -> list[Tok]:
        """Tokens of a braced group (without braces), or the single next token."""
        if not self.at("sym", "{"):
            return [self.next()]
        start = self.next()
        depth, out = 1, []
        while True:
            t = self.peek()
            if t is None:
                raise self.error("unclosed '{'", start.pos)
            self.next()
            depth += {"{": 1, "}": -1}.get(t.text, 0) if t.kind == "sym" else 0
            if depth == 0:
                return out
            out.append(t)

    def whole(self) -> Node:
        node = self.expr()
        if not self.done():
            t = self.peek()
            assert t is not None
            raise self.error(f"cannot read '{t.text}' here", t.pos)
        return node

    def arglist(self, close: str) -> list[Node]:
        args = [self.expr()]
        while self.at("sym", ","):
            self.next()
            args.append(self.expr())
        self.expect("sym", close)
        return args

    def atom(self) -> Node:
        t = self.next()
        if t.kind == "num":
            return Num(t.pos, t.text)
        if t.kind == "letter":
            if t.text == "e" and self.euler and self.at("sym", "^"):
                self.next()
                return Call(t.pos, "exp", [self.script()])
            return Sym(t.pos, t.text, "letter")
        if t.kind == "word":
            return self.word(t)
        if t.kind == "begin":
            return self.cases(t)
        if t.kind == "cmd":
            return self.command(t)
        return self.delimited(t)

    def word(self, t: Tok) -> Node:
        name = t.text.strip()
        if name.lower() in FUNCS and (self.at("sym", "(") or self.at("sym", "[")):
            return self.function(t, FUNCS[name.lower()])
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise self.error(f"cannot read the text '{name}' as a name", t.pos)
        return Sym(t.pos, name, "word")

    def delimited(self, t: Tok) -> Node:
        if t.text in ("(", "["):
            inner = self.expr()
            self.expect("sym", ")" if t.text == "(" else "]")
            if t.text == "[" and isinstance(inner, Cmp):
                inner = Unary(t.pos, "iverson", inner)
            return self.positive_part(inner)
        if t.text == "{":
            inner = self.expr()
            self.expect("sym", "}")
            return inner
        if t.text == "\\{":
            inner = self.expr()
            self.expect("sym", "\\}")
            return inner
        if t.text == "|":
            self.abs_depth += 1
            inner = self.expr()
            self.abs_depth -= 1
            self.expect("sym", "|")
            return Unary(t.pos, "abs", inner)
        if t.text == "\\|":
            self.norm_depth += 1
            inner = self.expr()
            self.norm_depth -= 1
            self.expect("sym", "\\|")
            p = "2"
            if self.at("sym", "_"):
                self.next()
                p = "".join(x.text for x in self.group_tokens())
            return Norm(t.pos, inner, p)
        raise self.error(f"cannot read '{t.text}' here", t.pos)

    def positive_part(self, inner: Node) -> Node:
        """`[x]_+` and `(x)_+` are max(x, 0)."""
        if self.at("sym", "_") and (self.at("sym", "+", 1) or (self.at("sym", "{", 1) and self.at("sym", "+", 2))):
            self.next()
            self.group_tokens()
            return Unary(inner.pos, "relu", inner)
        return inner

    def command(self, t: Tok) -> Node:
        c = t.text
        c = VARIANTS.get(c, c)
        if c in ("frac", "dfrac", "tfrac"):
            num = self.script()
            return Bin(t.pos, "/", num, self.script())
        if c == "sqrt":
            root: Node = Num(t.pos, "2")
            if self.at("sym", "["):
                self.next()
                root = self.expr()
                self.expect("sym", "]")
            return Bin(t.pos, "^", self.script(), Bin(t.pos, "/", Num(t.pos, "1"), root))
        if c in BIGOPS or (c in ("max", "min") and self.at("sym", "_")):
            return self.bigop(t, BIGOPS.get(c, c))
        if c == "sigma" and (self.at("sym", "(") or self.at("sym", "[")):
            return self.function(t, "sigmoid")
        if c in FUNCS:
            return self.function(t, FUNCS[c])
        if c == "pi":
            return Sym(t.pos, "pi", "const")
        if c in GREEK:  # `lambda` cannot name a Python argument of the generated module: lambda_ (as the stdlib)
            return Sym(t.pos, "lambda_" if c == "lambda" else c, "greek")
        if c in ACCENTS:
            inner = self.accented()
            inner.base += "_" + ACCENTS[c]
            return inner
        if c in BOLD:
            inner = self.accented()
            if isinstance(inner, Sym) and inner.base in ("1", "I"):
                return self.iverson(t)
            inner.bold = True
            return inner
        if c in ("underbrace", "overbrace"):
            inner = Reader(self.text, self.group_tokens()).whole()
            if self.at("sym", "_") or self.at("sym", "^"):
                self.next()
                self.group_tokens()  # the brace's label
            return inner
        if c in ("mathcal", "mathscr", "mathfrak"):
            return self.accented()
        if c == "mathbb":
            return self.blackboard(t)
        if c == "langle":
            a = self.expr()
            self.expect("sym", ",")
            b = self.expr()
            self.expect("cmd", "rangle")
            return Bin(t.pos, "inner", a, b)
        if c in ("lvert", "rvert", "lVert", "rVert"):
            return self.delimited(Tok("sym", "|" if c in ("lvert", "rvert") else "\\|", t.pos))
        raise self.error(f"cannot read \\{t.text} (not part of the LaTeX subset lossdsl reads)", t.pos)

    def accented(self) -> Sym:
        toks = self.group_tokens()
        node = Reader(self.text, toks).whole()
        if not isinstance(node, Sym):
            raise self.error("an accent or font command takes a single letter or name here", toks[0].pos)
        return node

    def blackboard(self, t: Tok) -> Node:
        letter = "".join(x.text for x in self.group_tokens())
        if letter in ("1", "I"):
            return self.iverson(t)
        if letter == "E":
            return self.expectation(t)
        raise self.error(f"cannot read \\mathbb{{{letter}}}", t.pos)

    def expectation(self, t: Tok) -> Node:
        """\\mathbb{E}_{x \\sim p}[f]: the mean of f over every element (the subscript names the batch)."""
        if self.at("sym", "_"):
            self.next()
            self.group_tokens()
        open_ = self.next()
        close = {"(": ")", "[": "]", "\\{": "\\}", "{": "}"}.get(open_.text)
        if close is None:
            raise self.error("an expectation takes its argument in brackets, as in \\mathbb{E}[f(x)]", open_.pos)
        body = self.expr()
        self.expect("sym", close)
        return Call(t.pos, "mean", [body])

    def iverson(self, t: Tok) -> Node:
        """\\mathbb{1}[c], \\mathbb{I}(c), \\mathbb{1}_{c}: 1 where the condition holds."""
        if self.at("sym", "_"):
            self.next()
            return Unary(t.pos, "iverson", Reader(self.text, self.group_tokens()).whole())
        open_ = self.next()
        close = {"(": ")", "[": "]", "\\{": "\\}", "{": "}"}.get(open_.text)
        if close is None:
            raise self.error("an indicator takes its condition in brackets, as in \\mathbb{1}[y_i = c]", open_.pos)
        cond = self.expr()
        self.expect("sym", close)
        return Unary(t.pos, "iverson", cond)

    def function(self, t: Tok, fn: str) -> Node:
        if self.at("sym", "(") or self.at("sym", "\\{") or (self.at("sym", "[") and fn in ("max", "min")):
            open_ = self.next()
            args = self.arglist({"(": ")", "\\{": "\\}", "[": "]"}[open_.text])
            node: Node = Call(t.pos, fn, args)
            return self.positive_part(node)
        return Call(t.pos, fn, [self.power()])

    def bigop(self, t: Tok, op: str) -> Node:
        indices: list[str] | None = None
        conds: list[tuple[str, str, Node]] = []
        bound = None
        for _ in range(2):
            if self.at("sym", "_"):
                self.next()
                indices, conds = self.range_items(self.group_tokens())
            elif self.at("sym", "^"):
                self.next()
                up = self.group_tokens()
                bound = up[0].text if len(up) == 1 and up[0].kind == "letter" and up[0].text.isupper() else None
        body = self.term()
        return Reduce(t.pos, op, indices, conds, body, bound)

    def range_items(self, toks: list[Tok]) -> tuple[list[str], list[tuple[str, str, Node]]]:
        """`i=1`, `i, j`, `j \\neq i`, `k=1, k \\neq i` under a big operator."""
        indices: list[str] = []
        conds: list[tuple[str, str, Node]] = []
        for item in _split_commas(toks):
            if not item or item[0].kind != "letter":
                raise self.error("a sum's subscript names its index, as in \\sum_{i=1}^{N}",
                                 item[0].pos if item else toks[0].pos)
            name = item[0].text
            if name not in indices:
                indices.append(name)
            if len(item) > 1:
                rel = item[1]
                if rel.text not in RELATIONS:
                    raise self.error(f"cannot read '{rel.text}' in a sum's subscript", rel.pos)
                if rel.text != "=":
                    conds.append((name, RELATIONS[rel.text], Reader(self.text, item[2:]).whole()))
        return indices, conds

    def cases(self, t: Tok) -> Node:
        if t.text not in ("cases", "dcases"):
            raise self.error(f"cannot read \\begin{{{t.text}}}; only cases", t.pos)
        rows: list[tuple[Node, Node | None]] = []
        while not self.at("end"):
            value = self.expr()
            if self.at("sym", ","):
                self.next()
            cond: Node | None = None
            if self.at("sym", "&"):
                self.next()
                cond = self.condition()
            rows.append((value, cond))
            if self.at("sym", "\\\\"):
                self.next()
        self.next()
        if len(rows) < 2:
            raise self.error("a cases block needs at least two rows", t.pos)
        return Cases(t.pos, rows)

    def condition(self) -> Node | None:
        if self.at("word") and self.peek().text.lower() in ("otherwise", "else", "其他", "否则"):  # type: ignore
            self.next()
            return None
        if self.at("word") and self.peek().text.lower().startswith("if"):  # type: ignore[union-attr]
            self.next()
        cond = self.expr()
        while self.at("sym", ",") or self.at("sym", "."):
            self.next()
        return cond


def _split_commas(toks: list[Tok]) -> list[list[Tok]]:
    out: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.kind == "sym" and t.text in ("{", "(", "["):
            depth += 1
        elif t.kind == "sym" and t.text in ("}", ")", "]"):
            depth -= 1
        if t.kind == "sym" and t.text == "," and depth == 0:
            out.append([])
        else:
            out[-1].append(t)
    return out


def _clauses(toks: list[Tok]) -> list[list[Tok]]:
    """Split at top-level `,`, `;`, `\\quad` and words like 'where'."""
    out: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        depth += _nesting(t)
        top = depth == 0 and t.kind != "end"
        if top and ((t.kind == "sym" and t.text in (",", ";", "\\\\")) or (t.kind == "cmd" and t.text in SEPARATORS)
                    or (t.kind == "word" and t.text.lower() in SKIP_WORDS)):
            out.append([])
        else:
            out[-1].append(t)
    return [c for c in out if c and not (len(c) == 1 and c[0].kind == "sym" and c[0].text == ".")]


def _top_level(toks: list[Tok], kind: str, text: str) -> list[int]:
    depth, found = 0, []
    for j, t in enumerate(toks):
        depth += _nesting(t)
        if depth == 0 and t.kind == kind and t.text == text:
            found.append(j)
    return found


def _nesting(t: Tok) -> int:
    """+1 for a token that opens a group, -1 for one that closes it."""
    if t.kind == "begin" or (t.kind == "sym" and t.text in ("{", "(", "[", "\\{")):
        return 1
    if t.kind == "end" or (t.kind == "sym" and t.text in ("}", ")", "]", "\\}")):
        return -1
    return 0


# ---- the translation
@dataclass
class Translation:
    """The lossdsl text a LaTeX formula became, and what the reader assumed on the way."""

    source: str
    name: str
    notes: list[str]


def translate(latex: str, *, name: str | None = None, params: Mapping[str, float | None] | Sequence[str] = (),
              inputs: Sequence[str] = (), vectors: Sequence[str] = ()) -> Translation:
    """LaTeX formula → lossdsl source text (one `loss` definition)."""
    text = latex.strip()
    try:
        return _translate(text, name, params, inputs, vectors)
    except LatexError as err:
        raise err.with_source(text) from None


def _translate(text: str, name: str | None, params: Mapping[str, float | None] | Sequence[str],
               inputs: Sequence[str], vectors: Sequence[str]) -> Translation:
    from .latex_emit import Emitter

    toks = _tokens(text)
    if not toks:
        raise LatexError("the formula is empty")
    notes: list[str] = []
    main: Node | None = None
    lhs: list[Tok] = []
    defs: list[tuple[Sym, Node]] = []
    for clause in _clauses(toks):
        eqs = _top_level(clause, "sym", "=")
        if main is None:
            lhs = clause[:eqs[-1]] if eqs else []
            main = Reader(text, clause[eqs[-1] + 1:] if eqs else clause).whole()
            continue
        defined = _definition(text, clause, eqs, notes)
        if defined is not None:
            defs.append(defined)
    assert main is not None
    loss_name = name or _name_from_lhs(lhs) or "latex_loss"
    emitter = Emitter(text, main, defs, _param_defaults(params), set(inputs), set(vectors), notes)
    return Translation(emitter.source(loss_name, " ".join(text.split())), loss_name, notes)


def _definition(text: str, clause: list[Tok], eqs: list[int], notes: list[str]) -> tuple[Sym, Node] | None:
    """`p_t = ...` defines an intermediate; a gloss (`y \\in \\{0,1\\}`, `\\cosh(x) = ...`) is noted and skipped."""
    snippet = text[clause[0].pos:clause[-1].pos + len(clause[-1].text)]
    if not eqs:
        if any(t.kind == "cmd" and t.text in ("in", "sim", "notin", "to") for t in clause) or \
                all(t.kind in ("word", "sym") for t in clause):
            notes.append(f"skipped the gloss '{snippet}'")
            return None
        raise LatexError("cannot read this clause: after the formula, write definitions as `name = ...`",
                         _span(text, clause[0].pos, len(snippet)))
    left = Reader(text, clause[:eqs[0]]).whole()
    if isinstance(left, Call):
        notes.append(f"skipped the definition of the known function '{snippet}'")
        return None
    if not isinstance(left, Sym):
        raise LatexError("the left side of a definition must be a name, as in p_t = ...",
                         _span(text, clause[0].pos))
    return left, Reader(text, clause[eqs[0] + 1:]).whole()


def _name_from_lhs(lhs: list[Tok]) -> str | None:
    """`\\mathcal{L}_{Dice} = ...` names the loss 'dice'."""
    words = [t.text for t in lhs if t.kind in ("letter", "word")]
    name = "".join(words[1:]).lower()
    if len(name) > 1 and words[0] == "L":
        return name if re.fullmatch(r"[a-z]\w*", name) and name not in RESERVED else None
    return None


def _param_defaults(params: Mapping[str, float | None] | Sequence[str]) -> dict[str, float | None]:
    if isinstance(params, Mapping):
        return dict(params)
    return dict.fromkeys(params)


def from_latex(latex: str, *, name: str | None = None, params: Mapping[str, float | None] | Sequence[str] = (),
               inputs: Sequence[str] = (), vectors: Sequence[str] = ()):
    """Parse a formula as a paper prints it into a `Loss` (the same IR as the lossdsl language gives).

    `params` names (or gives defaults to) parameters beyond the Greek letters and \\text words, `inputs`
    forces names to be tensors, `vectors` names tensors with a feature axis (dot products, norms).
    The lossdsl text is kept as `loss.lossdsl_source`, the reader's assumptions as `loss.latex_notes`.
    """
    from .api import parse

    tr = translate(latex, name=name, params=params, inputs=inputs, vectors=vectors)
    try:
        loss = parse(tr.source)
    except LossError as err:
        raise LatexError(f"the formula reads as lossdsl text that does not check: {err.message}\n"
                         f"{_indent(tr.source)}", _span(latex.strip(), 0, len(latex.strip()))) from None
    loss.lossdsl_source = tr.source
    loss.latex_notes = tr.notes
    return loss


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


def names_in(nodes: Iterable[Node]) -> list[Sym]:
    """Every Sym in the trees, in order (subscripts excluded)."""
    out: list[Sym] = []

    def walk(n) -> None:
        if isinstance(n, Sym):
            out.append(n)
        elif isinstance(n, Node):
            for v in vars(n).values():
                walk(v)
        elif isinstance(n, (list, tuple)):
            for v in n:
                walk(v)

    for node in nodes:
        walk(node)
    return out
