"""Formula tree (from latex_in) → lossdsl source text.

Decides what every symbol is — an index, a tensor input (with which axes), a parameter, an intermediate, the
size of an axis — and writes the loss in the lossdsl language, rewriting `\\log` of quotients, exponentials,
sums of exponentials and sigmoids into their stable forms (log-sum-exp, logsigmoid) on the way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .latex_in import (
    RESERVED,
    Apply,
    Bin,
    Call,
    Cases,
    Cmp,
    LatexError,
    Node,
    Norm,
    Num,
    Reader,
    Reduce,
    Sym,
    Tok,
    Unary,
    _span,
    names_in,
)

VECTOR_AXES = "dehruvw"
GATHER_AXES = "kmlqcz"
SIGNS = {"+": "pos", "-": "neg", "*": "star", "'": "prime"}


@dataclass
class InputDecl:
    axes: list[str]
    vector: bool = False
    index_of: str | None = None


@dataclass
class Emitter:
    text: str
    main: Node
    defs: list[tuple[Sym, Node]]
    param_defaults: dict[str, float | None]
    forced_inputs: set[str]
    vector_names: set[str]
    notes: list[str]
    indices: set[str] = field(default_factory=set)
    rename: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, InputDecl] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)
    defined: dict[str, tuple[list[str], Node]] = field(default_factory=dict)
    param_axes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        trees = [self.main, *(body for _, body in self.defs)]
        self.find_indices(trees)
        self.letters = {s.base for s in names_in(trees) if len(s.base) == 1} | self.indices
        self.find_renames(trees)
        for lhs, body in self.defs:
            name, slots = self.split(lhs)
            if any(kind != "index" for kind, _ in slots):
                raise LatexError("a definition's subscripts must be indices", _span(self.text, lhs.pos))
            self.defined[name] = ([self.idx(v) for _, v in slots], body)
        self.find_vectors(trees)
        used = self.letters | set(self.rename.values())
        self.vec_axis = next((a for a in VECTOR_AXES if a not in used), "dd")
        self.fresh = [a for a in GATHER_AXES if a not in used and a != self.vec_axis]

    # ---- analysis
    def find_indices(self, trees: list[Node]) -> None:
        """Explicit `\\sum_{i}` indices, then a bare `\\sum` sums over the index letters of its body."""
        reduces = [n for n in _walk(trees) if isinstance(n, Reduce)]
        for r in reduces:
            self.indices.update(r.indices or ())
        for r in reduces:
            if r.indices is None:
                found = [it[0].text for s in names_in([r.body]) for it in (s.subs or [])
                         if len(it) == 1 and it[0].kind == "letter" and it[0].text.islower()]
                if not found:
                    raise LatexError("a \\sum without a subscript must sum over subscripted tensors, as in "
                                     "\\sum_i p_i g_i", _span(self.text, r.pos))
                r.indices = list(dict.fromkeys(found))
                self.indices.update(found)

    def find_renames(self, trees: list[Node]) -> None:
        """`\\sum_{i=1}^{N}` names its axis `n`, so `N` elsewhere is that axis' size (as lossdsl reads `N`)."""
        for r in (n for n in _walk(trees) if isinstance(n, Reduce)):
            if r.bound and r.indices and len(r.indices) == 1:
                old, new = r.indices[0], r.bound.lower()
                if old != new and new not in self.letters and old not in self.rename:
                    self.rename[old] = new
                    self.letters.add(new)

    def find_vectors(self, trees: list[Node]) -> None:
        for n in _walk(trees):
            if isinstance(n, Norm) or (isinstance(n, Bin) and n.op == "inner") or \
                    (isinstance(n, Unary) and n.op == "transpose"):
                for sub in _walk([n]):
                    if isinstance(sub, (Sym, Apply)):
                        name = self.value_name(sub)
                        if name and name not in self.param_defaults and \
                                self.kind(name, sub, True) in ("input", "param"):
                            self.vector_names.add(name)
            if isinstance(n, Sym) and n.bold:
                self.vector_names.add(self.split(n)[0])

    def idx(self, letter: str) -> str:
        return self.rename.get(letter, letter)

    def split(self, s: Sym) -> tuple[str, list[tuple[str, object]]]:
        """A subscripted symbol → its name and its index/gather slots (`c_{y_i}` → 'c', [gather y_i])."""
        slots: list[tuple[str, object]] = []
        suffix: list[str] = []
        for item in s.subs or []:
            if all(t.kind == "letter" and t.text in self.indices for t in item) and item:
                slots.extend(("index", t.text) for t in item)
                continue
            gather = self.gather(item)
            if gather is not None:
                slots.append(("gather", gather))
            else:
                suffix.append(_suffix(item))
        base = s.base if not suffix else s.base.rstrip("_") + "_" + "_".join(suffix)
        return base, slots

    def gather(self, item: list[Tok]) -> Sym | None:
        if len(item) < 3 or item[0].kind != "letter" or item[1].text != "_":
            return None
        node = Reader(self.text, list(item)).whole()
        if isinstance(node, Sym) and node.subs and all(k == "index" for k, _ in self.split(node)[1]):
            return node
        return None

    def value_name(self, n: Sym | Apply) -> str | None:
        if isinstance(n, Sym):
            return self.split(n)[0]
        if self.index_args(n):
            return self.split(n.base)[0]
        return self.applied_name(n)

    def is_vector_name(self, name: str | None) -> bool:
        """Named a vector, or a variant of one (`k_+` of the vector `k`)."""
        return name is not None and (name in self.vector_names or name.split("_")[0] in self.vector_names)

    def kind(self, name: str, s: Sym | Apply, indexed: bool = False) -> str:
        """What a name is. Greek letters and words are parameters, but an indexed word is a tensor."""
        style = s.style if isinstance(s, Sym) else "letter"
        if name in self.defined:
            return "inter"
        if style == "const":
            return "const"
        if name in self.forced_inputs or (name in self.vector_names and name not in self.param_defaults):
            return "input"  # what a norm or a dot product reads is a tensor, Greek or not (\\phi_l, \\mu)
        if name in self.param_defaults or style == "greek" or (style == "word" and not indexed):
            return "param"
        if len(name) == 1 and name.isupper() and name.lower() in {self.idx(i) for i in self.indices}:
            return "size"
        return "input"

    # ---- emission
    def source(self, loss_name: str, latex_line: str) -> str:
        ret = self.emit(self.main)
        lines = [f"{name}{'[' + ', '.join(axes) + ']' if axes else ''} = {self.emit(body)}"
                 for name, (axes, body) in self.ordered_defs()]
        ins = [self.input_decl(name, d) for name, d in self.inputs.items()]
        ps = [self.param_decl(p) for p in self.params]
        header = f"loss {loss_name}({', '.join(ins)}{'; ' + ', '.join(ps) if ps else ''}):"
        notes = "".join(f"# note: {n}\n" for n in self.notes)
        body = "".join(f"    {line}\n" for line in [*lines, f"return {ret}"])
        return f"# from LaTeX: {latex_line}\n{notes}{header}\n{body}"

    def ordered_defs(self) -> list[tuple[str, tuple[list[str], Node]]]:
        """Definitions in dependency order (a paper states them after the formula that uses them)."""
        done: list[str] = []

        def visit(name: str, stack: tuple[str, ...]) -> None:
            if name in done:
                return
            if name in stack:
                raise LatexError(f"the definition of '{name}' refers to itself", _span(self.text, 0))
            for s in names_in([self.defined[name][1]]):
                dep = self.split(s)[0]
                if dep in self.defined:
                    visit(dep, (*stack, name))
            done.append(name)

        for name in self.defined:
            visit(name, ())
        return [(n, self.defined[n]) for n in done]

    def param_decl(self, name: str) -> str:
        axes = f"[{', '.join(self.param_axes[name])}]" if name in self.param_axes else ""
        default = self.param_defaults.get(name)
        return f"{name}{axes}" + ("" if default is None else f" = {default!r}")

    def input_decl(self, name: str, d: InputDecl) -> str:
        axes = [*d.axes, *([self.vec_axis] if d.vector else [])]
        text = name + (f"[{', '.join(axes)}]" if axes else "")
        return text + (f": index({d.index_of})" if d.index_of else "")

    def emit(self, n: Node) -> str:
        method = getattr(self, "emit_" + type(n).__name__.lower())
        return method(n)

    def emit_num(self, n: Num) -> str:
        return n.value

    def emit_sym(self, s: Sym) -> str:
        if s.subs is None and s.style == "letter" and s.base in self.indices:
            return self.idx(s.base)  # an index used as a value is its position, as in the language
        name, slots = self.split(s)
        return self.reference(name, slots, s)

    def reference(self, name: str, slots: list[tuple[str, object]], s: Sym | Apply) -> str:
        kind = self.kind(name, s, bool(slots))
        if kind == "const":
            return "pi"
        if kind == "param" and slots:
            return self.shaped_param(name, slots, s)
        if kind in ("size", "param"):
            if slots:
                raise LatexError(f"'{name}' is the size of an axis and cannot take an index", _span(self.text, s.pos))
            if kind == "param" and name not in self.params:
                self.params.append(_check_name(name, self.text, s.pos))
            return name
        if kind == "inter":
            axes = self.defined[name][0]
            if len(slots) != len(axes) and slots:
                raise LatexError(f"'{name}' is defined with {len(axes)} indices but used with {len(slots)}",
                                 _span(self.text, s.pos))
            return name + (f"[{', '.join(self.slot(k, v, name) for k, v in slots)}]" if slots else "")
        return self.input_reference(name, slots, s)

    def shaped_param(self, name: str, slots: list[tuple[str, object]], s: Sym | Apply) -> str:
        """`\\lambda_l` under `\\sum_l`: a per-index parameter, declared `lambda[l]`."""
        if any(k != "index" for k, _ in slots):
            raise LatexError(f"the parameter '{name}' can be indexed by summation indices only",
                             _span(self.text, s.pos))
        letters = [self.idx(str(v)) for _, v in slots]
        if name not in self.params:
            self.params.append(_check_name(name, self.text, s.pos))
            self.param_axes[name] = letters
        elif len(self.param_axes.get(name, [])) != len(letters):
            raise LatexError(f"'{name}' is used with {len(letters)} indices here but not elsewhere",
                             _span(self.text, s.pos))
        return f"{name}[{', '.join(letters)}]"

    def input_reference(self, name: str, slots: list[tuple[str, object]], s: Sym | Apply) -> str:
        _check_name(name, self.text, s.pos)
        decl = self.inputs.get(name)
        if decl is None:
            decl = self.inputs[name] = InputDecl(self.axes_for(name, slots), self.is_vector_name(name))
        elif len(decl.axes) != len(slots):
            raise LatexError(f"'{name}' is used with {len(slots)} indices here but {len(decl.axes)} elsewhere",
                             _span(self.text, s.pos))
        parts = [self.slot(k, v, name, pos) for pos, (k, v) in enumerate(slots)]
        if decl.vector:
            parts.append(self.vec_axis)
        return name + (f"[{', '.join(parts)}]" if parts else "")

    def axes_for(self, name: str, slots: list[tuple[str, object]]) -> list[str]:
        axes: list[str] = []
        for kind, value in slots:
            letter = self.idx(str(value)) if kind == "index" else None
            if letter is None or letter in axes:
                if not self.fresh:
                    raise LatexError(f"too many axes on '{name}'", _span(self.text, 0))
                letter = self.fresh.pop(0)
            axes.append(letter)
        return axes

    def slot(self, kind: str, value: object, owner: str, pos: int | None = None) -> str:
        if kind == "index":
            return self.idx(str(value))
        assert isinstance(value, Sym)
        text = self.emit_sym(value)
        gname = self.split(value)[0]
        if pos is not None and gname in self.inputs:
            self.inputs[gname].index_of = self.inputs[owner].axes[pos]
        return text

    def emit_apply(self, a: Apply) -> str:
        if self.index_args(a):
            name = self.split(a.base)[0]
            return self.reference(name, [("index", x.base) for x in a.args if isinstance(x, Sym)], a)
        name = self.applied_name(a)
        if name is None:
            raise LatexError("a function applied to an expression cannot be read; lossdsl reads f(x) as the "
                             "tensor f_x (the network's output for x)", _span(self.text, a.pos))
        self.note(f"read {a.base.base}(...) as the input tensor {name} (the network's output)")
        slots = [sl for x in a.args if isinstance(x, Sym) for sl in self.split(x)[1]]
        return self.reference(name, slots, a)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def index_args(self, a: Apply) -> bool:
        return all(isinstance(x, Sym) and x.subs is None and x.base in self.indices for x in a.args)

    def applied_name(self, a: Apply) -> str | None:
        """`f(x)` → 'f_x', `D(G(z))` → 'D_G_z'; None for an argument that is not a name."""
        parts = [self.split(a.base)[0]]
        for x in a.args:
            inner = self.split(x)[0] if isinstance(x, Sym) else self.applied_name(x) if isinstance(x, Apply) else None
            if inner is None:
                return None
            parts.append(inner)
        return "_".join(parts)

    def emit_bin(self, b: Bin) -> str:
        if b.op == "^":
            if isinstance(b.a, Norm) and b.a.p in ("2", "F", "") and isinstance(b.b, Num) and b.b.value == "2":
                return f"sum_{self.vec_axis}(({self.emit(b.a.a)})^2)"
            return f"({self.emit(b.a)})^({self.emit(b.b)})"
        if b.op == "inner" or (b.op == "dot" and self.is_vec(b.a) and self.is_vec(b.b)):
            return f"sum_{self.vec_axis}({self.emit(b.a)} * {self.emit(b.b)})"
        if b.op == "dot" and _is_log(b.b):
            return self.times_log(b.a, b.b.args[0])
        op = "*" if b.op == "dot" else b.op
        return f"({self.emit(b.a)} {op} {self.emit(b.b)})"

    def times_log(self, coef: Node, arg: Node) -> str:
        """`y \\log p` as `xlogy(y, p)`: the textbook's 0 log 0 = 0 (KL and cross-entropy over one-hot or sparse
        distributions), where a plain product gives nan. Only a tensor weight can be 0 where the log is -inf
        (`w \\log(1 + e)` stays a product); a quotient distributes; stable forms stay products."""
        if isinstance(arg, Bin) and arg.op == "/" and self.has_tensor(coef):
            return f"({self.times_log(coef, arg.a)} - {self.times_log(coef, arg.b)})"
        left = self.emit(coef)  # first: inputs are declared in order of appearance
        stable = self.emit_log(arg)
        if self.has_tensor(coef) and stable == f"log({self.emit(arg)})":
            return f"xlogy({left}, {self.emit(arg)})"
        return f"({left} * {stable})"

    def has_tensor(self, n: Node) -> bool:
        """Whether `n` reads an input or an intermediate (emitting it declares what it reads)."""
        names = set(re.findall(r"[A-Za-z_]\w*", self.emit(n)))
        return bool(names & (set(self.inputs) | set(self.defined)))

    def is_vec(self, n: Node) -> bool:
        if isinstance(n, (Sym, Apply)):
            return self.is_vector_name(self.value_name(n))
        if isinstance(n, Norm) or (isinstance(n, Bin) and n.op == "inner"):
            return False
        if isinstance(n, Bin) and n.op == "dot":
            return self.is_vec(n.a) != self.is_vec(n.b)
        return any(self.is_vec(c) for c in _children(n))

    def emit_unary(self, u: Unary) -> str:
        inner = self.emit(u.a)
        return {"neg": f"(-{inner})", "abs": f"abs({inner})", "relu": f"relu({inner})", "iverson": f"[{inner}]",
                "transpose": inner, "not": f"(not {inner})"}[u.op]

    def emit_norm(self, n: Norm) -> str:
        if n.p in ("2", "F", ""):
            return f"norm_{self.vec_axis}({self.emit(n.a)})"
        if n.p == "1":
            return f"sum_{self.vec_axis}(abs({self.emit(n.a)}))"
        raise LatexError(f"cannot read the {n.p}-norm; lossdsl reads \\|x\\|_1 and \\|x\\|_2", _span(self.text, n.pos))

    def emit_reduce(self, r: Reduce) -> str:
        idx = [self.idx(i) for i in r.indices or []]
        conds = [f"{self.idx(i)} {op} {self.emit(rhs)}" for i, op, rhs in r.conds]
        return f"{self.reduction(r.op, idx, conds)}({self.emit(r.body)})"

    @staticmethod
    def reduction(op: str, idx: list[str], conds: list[str]) -> str:
        if len(idx) == 1 and not conds:
            return f"{op}_{idx[0]}"
        cond_idx = {c.split()[0] for c in conds}
        items = [i for i in idx if i not in cond_idx] + conds
        return f"{op}_{{{', '.join(items)}}}"

    def emit_cases(self, c: Cases) -> str:
        *rows, (last, last_cond) = c.rows
        if last_cond is not None:
            self.notes.append("read the last row of a cases block as 'otherwise'")
        for value, cond in rows:
            if cond is None:
                raise LatexError("only the last row of a cases block may be 'otherwise'", _span(self.text, value.pos))
        emitted = [(self.emit(value), self.emit(cond)) for value, cond in rows]  # in reading order: the header's
        out = self.emit(last)
        for value, cond in reversed(emitted):
            out = f"({value} if {cond} else {out})"
        return out

    def emit_cmp(self, c: Cmp) -> str:
        return f"({self.emit(c.a)} {c.op} {self.emit(c.b)})"

    def emit_call(self, c: Call) -> str:
        if c.fn == "log" and len(c.args) == 1:
            return self.emit_log(c.args[0])
        if c.fn in ("max", "min") and len(c.args) > 2:
            return self.emit_call(Call(c.pos, c.fn, [c.args[0], Call(c.pos, c.fn, c.args[1:])]))
        if c.fn == "mean":
            self.note("read \\mathbb{E}[...] as the mean over every element of its argument")
        if c.fn not in ("max", "min") and len(c.args) != 1:
            raise LatexError(f"\\{c.fn} takes one argument", _span(self.text, c.pos))
        return f"{c.fn}({', '.join(self.emit(a) for a in c.args)})"

    def emit_log(self, arg: Node) -> str:
        """log of a quotient, an exp, a sum of exps or a sigmoid, written in its numerically stable form."""
        if isinstance(arg, Bin) and arg.op == "/":
            return f"({self.emit_log(arg.a)} - {self.emit_log(arg.b)})"
        if isinstance(arg, Call) and arg.fn == "exp":
            return self.emit(arg.args[0])
        if isinstance(arg, Call) and arg.fn == "sigmoid":
            return f"logsigmoid({self.emit(arg.args[0])})"
        if isinstance(arg, Bin) and arg.op == "-" and isinstance(arg.a, Num) and arg.a.value == "1" \
                and isinstance(arg.b, Call) and arg.b.fn == "sigmoid":
            return f"logsigmoid(-({self.emit(arg.b.args[0])}))"
        if isinstance(arg, Reduce) and arg.op == "sum" and isinstance(arg.body, Call) and arg.body.fn == "exp":
            idx = [self.idx(i) for i in arg.indices or []]
            conds = [f"{self.idx(i)} {op} {self.emit(rhs)}" for i, op, rhs in arg.conds]
            return f"{self.reduction('logsumexp', idx, conds)}({self.emit(arg.body.args[0])})"
        return f"log({self.emit(arg)})"


def _is_log(n: Node) -> bool:
    return isinstance(n, Call) and n.fn == "log" and len(n.args) == 1


def _check_name(name: str, text: str, pos: int) -> str:
    if name in RESERVED:
        raise LatexError(f"'{name}' is a reserved word in lossdsl and cannot name a tensor or parameter",
                         _span(text, pos))
    return name


def _suffix(item: list[Tok]) -> str:
    parts = [SIGNS.get(t.text, t.text) for t in item if t.text not in ("{", "}")]
    text = "".join(p for p in parts if p.replace("_", "").isalnum())
    return text or "sub"


def _children(n: Node) -> list[Node]:
    out: list[Node] = []
    for v in vars(n).values():
        if isinstance(v, Node):
            out.append(v)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, Node):
                    out.append(x)
                elif isinstance(x, tuple):
                    out.extend(y for y in x if isinstance(y, Node))
    return out


def _walk(trees: list[Node]):
    stack = list(trees)
    while stack:
        n = stack.pop()
        yield n
        stack.extend(_children(n))
