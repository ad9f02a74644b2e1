"""AST → checked IR. Resolves names, binds indices to axes, inlines intermediates and loss calls.

Every rejection raises a LossError subclass pointing at the node's span; nothing user-written is evaluated
by Python: defaults and constraint bounds go through `constant()`, a tiny evaluator over the AST.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable

import sympy as sp

from . import ir
from . import syntax as s
from .builtins import REGISTRY as BUILTINS
from .errors import KindError, LossError, ParameterError, ScopeError, ShapeError, UnknownNameError, did_you_mean
from .scope import ELLIPSIS, Axes, free_indices, fresh, rename

KINDS = ("real", "logits", "prob", "binary", "sign", "int", "index", "count", "positive", "fn")
PARAM_TYPES = ("int", "bool", "learnable")
ELEMENTWISE: dict[str, Callable[..., sp.Expr]] = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "sign": sp.sign, "sin": sp.sin,
    "cos": sp.cos, "tan": sp.tan, "tanh": sp.tanh, "cosh": sp.cosh, "sinh": sp.sinh, "acos": sp.acos,
    "asin": sp.asin, "atan": sp.atan, "sigmoid": ir.sigmoid, "logsigmoid": ir.logsigmoid,
    "softplus": ir.softplus, "relu": ir.relu, "log1p": ir.log1p, "expm1": ir.expm1, "erf": sp.erf,
    "isfinite": ir.isfinite,
}
BINARY: dict[str, Callable[..., sp.Expr]] = {"min": sp.Min, "max": sp.Max, "xlogy": ir.xlogy}
WHOLE = ("sum", "mean", "prod", "max", "min", "logsumexp", "norm")
SUBSCRIPTED_OPS = ("log_softmax", "logsumexp", "normalize", "softmax", "sum", "mean", "prod", "max", "min", "norm")
SUBSCRIPTED = re.compile(rf"^({'|'.join(SUBSCRIPTED_OPS)})_(\w*)$")
FUNCTIONS = (*ELEMENTWISE, *BINARY, *WHOLE, "where", "clamp")  # called by name, without a subscript
CONSTANTS = {"pi": sp.pi, "true": sp.Integer(1), "false": sp.Integer(0)}
ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "^": operator.pow}
CONSTRAINTS = (">", ">=", "<", "<=", "in")
COMPARE = {"==": sp.Eq, "!=": sp.Ne, "<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge}
LossLookup = Callable[[str], "s.LossDef | None"]


def constant(e: s.Expr, what: str) -> float | int | bool:
    """Evaluate a default or a bound: numbers, true/false, inf, and arithmetic on them."""
    if isinstance(e, s.Num):
        return e.value
    if isinstance(e, s.Name) and e.name in ("true", "false", "inf"):
        return {"true": True, "false": False, "inf": math.inf}[e.name]
    if isinstance(e, s.Unary) and e.op == "-":
        return -constant(e.operand, what)
    if isinstance(e, s.Binary) and e.op in ARITHMETIC:
        a, b = constant(e.left, what), constant(e.right, what)
        try:
            value = ARITHMETIC[e.op](a, b)
            float(value)  # an int power beyond float's range (10^400) overflows here
        except ZeroDivisionError:
            raise ParameterError(f"{what} divides by zero", e.span) from None
        except OverflowError:
            raise ParameterError(f"{what} overflows a float", e.span) from None
        except TypeError:  # float() of a complex number: a negative base to a fractional power
            raise ParameterError(f"{what} is not a real number (({a})^{b} is complex)", e.span) from None
        return value
    raise ParameterError(f"{what} must be a constant number", e.span)


class Lowerer:
    """Lowers one loss definition. A child Lowerer inlines a called loss into its caller's IR."""

    def __init__(self, d: s.LossDef, lookup: LossLookup, prefix: str = "", callers: tuple[str, ...] = ()) -> None:
        self.d, self.lookup, self.prefix = d, lookup, prefix
        self.callers = (*callers, d.name)  # the losses being inlined into one another, outermost first
        self.calls = 0  # loss calls inlined so far: each call site's indices get a prefix of their own
        self.axes = Axes()
        self.inputs: dict[str, ir.Input] = {}
        self.params: dict[str, ir.Param] = {}
        self.values: dict[str, tuple[sp.Expr, tuple[sp.Symbol, ...]]] = {}  # intermediates and overrides
        self.sizes_from: dict[str, tuple[str, int]] = {}
        self.broadcast = False
        self.statements: list[tuple[str, sp.Expr]] = []
        self.alias: dict[str, str] = {}  # reduction-local index names → fresh names (bound variables are local)
        self.declare()

    # ---- header
    def idx(self, name: str, group: bool = False) -> sp.Symbol:
        name = self.alias.get(name, name) if not group else name
        return ir.index_symbol(("*" if group else "") + self.prefix + name)

    def declare(self) -> None:
        for decl in self.d.inputs:
            self.declare_input(decl)
        for decl in self.d.params:
            self.declare_param(decl)

    def declare_axes(self, owner: str, axes: tuple[s.Axis, ...] | None) -> tuple[str, ...] | None:
        if axes is None:
            return None
        names = tuple(str(self.idx(a.name, a.group)) for a in axes)
        for pos, name in enumerate(names):
            self.axes.add(name)
            self.sizes_from.setdefault(self.axes.find(name), (owner, pos))
        return names

    def declare_input(self, decl: s.InputDecl) -> None:
        self.unique(decl.name, decl.span)
        if decl.kind not in KINDS:
            raise KindError(f"unknown kind '{decl.kind}' for input '{decl.name}'" + did_you_mean(decl.kind, KINDS),
                            decl.span)
        if decl.kind != "index" and decl.kind_arg is not None:
            raise KindError(f"only the kind `index` takes an axis (`index({decl.kind_arg})`); "
                            f"`{decl.kind}` stands alone, as in `{decl.name}: {decl.kind}`", decl.span)
        if decl.kind == "index" and decl.kind_arg is None:
            raise KindError("the kind `index` takes the axis it indexes, as in `y[n]: index(c)`", decl.span)
        if decl.kind == "fn" and decl.axes is not None:
            raise KindError(f"the `fn` input '{decl.name}' cannot have axes", decl.span)
        axes = self.declare_axes(decl.name, decl.axes)
        arg = str(self.idx(decl.kind_arg)) if decl.kind_arg else None
        if arg:
            self.axes.add(arg)
        self.inputs[decl.name] = ir.Input(decl.name, axes, decl.kind, arg)

    def declare_param(self, decl: s.ParamDecl) -> None:
        self.unique(decl.name, decl.span)
        if decl.type is not None and decl.type not in PARAM_TYPES:
            raise KindError(f"unknown parameter type '{decl.type}'" + did_you_mean(decl.type, PARAM_TYPES),
                            decl.span)
        default = None if decl.default is None else constant(decl.default, f"the default of '{decl.name}'")
        cons = None
        if decl.constraint is not None:
            if decl.constraint.op not in CONSTRAINTS:
                raise ParameterError(f"'{decl.name} {decl.constraint.op} ...' is not a constraint: use "
                                     f"{', '.join(CONSTRAINTS[:-1])} or in [a, b]", decl.constraint.span)
            bounds = tuple(constant(b, f"the bound of '{decl.name}'") for b in decl.constraint.bounds)
            cons = (decl.constraint.op, bounds)
        axes = None
        if decl.axes is not None:
            axes = tuple(str(self.idx(a.name, a.group)) for a in decl.axes)
            for name in axes:
                self.axes.add(name)
        param = ir.Param(decl.name, axes, decl.type, default, cons)
        if default is not None:
            check_default_type(param, default, decl.span)
            check_param_value(param, default, decl.span)
        self.params[decl.name] = param

    def unique(self, name: str, span) -> None:
        if name in self.inputs or name in self.params:
            raise ScopeError(f"'{name}' is declared twice", span)

    # ---- body
    def lower(self) -> ir.LossIR:
        result, reduce_stmt = None, None
        body = list(self.d.body)
        for k, st in enumerate(body):
            if st.kind == "reduce":
                if k != len(body) - 1:
                    raise ScopeError("`reduce` must be the last line of a loss", st.span)
                reduce_stmt = st
            elif st.kind == "assign":
                if result is not None:
                    raise ScopeError("nothing may follow the loss expression except `reduce`", st.span)
                self.assign(st)
            else:
                if result is not None:
                    raise ScopeError("a loss has one result; this line follows it", st.span)
                if st.kind == "bare" and k < len(body) - 1 and body[k + 1].kind != "reduce":
                    raise ScopeError("an expression statement must be the loss's last line "
                                     "(did you mean an assignment?)", st.span)
                result = self.expr(st.value)
        if result is None:
            raise ScopeError(f"loss '{self.d.name}' has no result line", self.d.span)
        return self.finish(result, reduce_stmt)

    def finish(self, result: sp.Expr, reduce_stmt: s.Statement | None) -> ir.LossIR:
        free = self.canonical([str(i) for i in free_indices(result) if i != ELLIPSIS])
        mode, weight = None, None
        if reduce_stmt is not None:
            mode = reduce_stmt.reduce_mode
            if mode not in ("mean", "sum", "none", "batchmean"):
                raise ScopeError(f"unknown reduction '{mode}'" + did_you_mean(mode, ("mean", "sum", "none",
                                 "batchmean")), reduce_stmt.span)
            if reduce_stmt.value is not None:
                if mode != "mean":
                    raise ScopeError("only `reduce mean` can be `weighted by`", reduce_stmt.span)
                mode, weight = "weighted", self.expr(reduce_stmt.value)
        self.broadcast = self.broadcast or _has_unlabeled(result)
        if not self.prefix:  # an inlined callee's indices are checked by its caller
            self.check_tied(result)
        return ir.LossIR(
            name=self.d.name, inputs=list(self.inputs.values()), params=list(self.params.values()),
            expr=result, free=tuple(free), broadcast=self.broadcast, reduce_mode=mode, reduce_weight=weight,
            axis_of={n: self.axes.find(n) for n in self.axes.order}, sizes_from=self.sizes_from,
            sentinels=find_sentinels(result, self.inputs), doc=self.d.doc, source=self.d.source,
            statements=self.statements)

    def check_tied(self, result: sp.Expr) -> None:
        """Every index must range over some tensor's axis, or its size is unknowable."""
        tied = {self.axes.find(a) for d in (*self.inputs.values(), *self.params.values()) for a in d.axes or ()}
        tied |= {self.axes.find(str(lab)) for call in result.atoms(ir.FnCall) for lab in call.args[2]}
        for sym in sorted(result.atoms(sp.Symbol), key=str):
            if ir.is_index(sym) and sym != ELLIPSIS and self.axes.find(str(sym)) not in tied:
                raise ScopeError(f"index '{sym}' does not range over any input's axis: index a tensor with it, "
                                 f"as in x[{sym}]", self.d.span)

    def canonical(self, names: list[str]) -> list[str]:
        return sorted(names, key=lambda n: self.axes.order.index(n) if n in self.axes.order else 1 << 30)

    def assign(self, st: s.Statement) -> None:
        target = st.target
        value = self.expr(st.value)
        free = free_indices(value)
        if isinstance(target, s.Name):
            name, axes = target.name, tuple(i for i in free if i != ELLIPSIS)
        elif isinstance(target, s.Subscript) and isinstance(target.base, s.Name):
            name = target.base.name
            axes = tuple(self.target_index(it) for it in target.items)
            extra = [str(i) for i in free if i not in axes and i != ELLIPSIS]
            if extra:
                raise ScopeError(f"index '{extra[0]}' is free on the right but not bound by {name}[...]", st.span)
        else:
            raise KindError("the left side of `=` must be a name or name[indices]", target.span)
        if name in self.inputs or name in self.params:
            raise ScopeError(f"'{name}' is an input or parameter and cannot be reassigned", target.span)
        self.values[name] = (value, axes)
        self.statements.append((name if isinstance(target, s.Name) else
                                f"{name}[{', '.join(map(str, axes))}]", value))

    def target_index(self, item: s.IndexItem) -> sp.Symbol:
        if item.group is not None:
            return self.idx(item.group, True)
        if isinstance(item.expr, s.Name):
            sym = self.idx(item.expr.name)
            self.axes.add(str(sym))
            return sym
        raise KindError("an intermediate is declared with index names, as in s[i, j] = ...", item.span)

    # ---- expressions
    def expr(self, e: s.Expr) -> sp.Expr:
        try:
            return self._expr(e)
        except LossError as err:
            if err.span is None:
                err.span = e.span
            raise

    def _expr(self, e: s.Expr) -> sp.Expr:
        if isinstance(e, s.Num):
            return sp.Integer(e.value) if isinstance(e.value, int) else sp.Float(e.value)
        if isinstance(e, s.Name):
            return self.name(e)
        if isinstance(e, s.Unary):
            return self.unary(e)
        if isinstance(e, s.Binary):
            return self.binary(e)
        if isinstance(e, s.IfElse):
            return sp.Piecewise((self.expr(e.then), self.cond(e.cond)), (self.expr(e.other), True))
        if isinstance(e, s.Subscript):
            return self.subscript(e)
        if isinstance(e, s.Call):
            return self.call(e)
        raise KindError(f"unsupported expression {type(e).__name__}", e.span)  # pragma: no cover

    def cond(self, e: s.Expr) -> sp.Basic:
        c = self.expr(e)
        if isinstance(c, sp.logic.boolalg.Boolean) and not isinstance(c, sp.Expr):  # a Symbol is both
            return c
        if isinstance(c, sp.Symbol) and c.name in self.params and self.params[c.name].type == "bool":
            return c  # `p if use_sigmoid else q`: a Python choice once the module's value is known
        return sp.Ne(c, 0)

    def unary(self, e: s.Unary) -> sp.Basic:
        if e.op == "-":
            return -self.expr(e.operand)
        if e.op == "abs":
            return sp.Abs(self.expr(e.operand))
        if e.op == "not":
            return sp.Not(self.cond(e.operand))
        return sp.Piecewise((1, self.cond(e.operand)), (0, True))  # iverson

    def binary(self, e: s.Binary) -> sp.Basic:
        if e.op in ("and", "or"):
            a, b = self.cond(e.left), self.cond(e.right)
            return sp.And(a, b) if e.op == "and" else sp.Or(a, b)
        a, b = self.expr(e.left), self.expr(e.right)
        if e.op in COMPARE:
            return COMPARE[e.op](a, b)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                "^": lambda: a**b}[e.op]()

    def known_names(self) -> list[str]:
        return [*self.inputs, *self.params, *self.values, *FUNCTIONS,
                *(n.removeprefix("*").removeprefix(self.prefix) for n in self.axes.order)]

    def known_functions(self, f: str) -> list[str]:
        """What a call could have meant: the known names, and each subscripted op with f's own subscript
        (`log_sofmax_c` → `log_softmax_c`)."""
        subscripted = [f"{op}_{f.rsplit('_', 1)[1]}" for op in SUBSCRIPTED_OPS] if "_" in f else []
        return [*self.known_names(), *subscripted]

    def name(self, e: s.Name) -> sp.Expr:
        n = e.name
        if n in self.values:
            return self.own_axes(*self.values[n])
        if n in self.inputs:
            inp = self.inputs[n]
            if inp.kind == "fn":
                raise KindError(f"'{n}' is a function (kind fn); call it, as in {n}(x)", e.span)
            if inp.axes is None:
                self.broadcast = True
                return sp.Symbol(n, integer=True) if inp.is_integral else sp.Symbol(n, real=True)
            return sp.Indexed(sp.IndexedBase(n), *(ir.index_symbol(a) for a in inp.axes))
        if n in self.params:
            p = self.params[n]
            if p.axes is None:
                return sp.Symbol(n, integer=True) if p.type in ("int", "bool") else sp.Symbol(n, real=True)
            return sp.Indexed(sp.IndexedBase(n), *(ir.index_symbol(a) for a in p.axes))
        if self.axes.known(str(self.idx(n))):
            return self.idx(n)
        if n.isupper() and self.axes.known(str(self.idx(n.lower()))):
            return ir.Size(self.idx(n.lower()))
        if n.isupper() and self.axes.known(str(self.idx(n.lower(), True))):
            return ir.Size(self.idx(n.lower(), True))
        if n in CONSTANTS:
            return CONSTANTS[n]
        if n in FUNCTIONS:
            raise KindError(f"'{n}' is a function; call it, as in {n}(x)", e.span)
        raise UnknownNameError(f"unknown name '{n}'" + did_you_mean(n, self.known_names()), e.span)

    def own_axes(self, value: sp.Expr, axes: tuple[sp.Symbol, ...]) -> sp.Expr:
        """An intermediate used without brackets, indexed by its axis names as this scope reads them: inside
        `sum_{c, j}(hinge)` the j of hinge[*n, c, j] is the reduction's own (renamed) j."""
        mapping = {}
        for a in axes:
            name = str(a).removeprefix(self.prefix)
            if str(a).startswith(self.prefix) and name in self.alias:
                mapping[a] = self.idx(name)
                self.bind(mapping[a], str(a))
        return self.rename(value, mapping)

    def rename(self, value: sp.Expr, mapping: dict[sp.Symbol, sp.Basic]) -> sp.Expr:
        """scope.rename, with each bound index it renames to avoid a capture kept on its axis: reading
        s[i, d] of `s[i, j] = sum_d(...)` renames the sum's d, which must still range over d's axis."""
        renamed: dict[sp.Symbol, sp.Symbol] = {}
        out = rename(value, mapping, renamed)
        for new, old in renamed.items():
            self.axes.union(str(old), str(new))
        return out

    # ---- indexing
    def subscript(self, e: s.Subscript) -> sp.Expr:
        base = e.base
        if isinstance(base, s.Name) and base.name not in self.values:
            decl = self.inputs.get(base.name) or self.params.get(base.name)
            if decl is not None:
                return self.access_declared(base.name, decl, e)
        if isinstance(base, s.Name):
            value, axes = self.values.get(base.name) or (self.name(base), ())
        else:
            value = self.expr(base)
            axes = tuple(i for i in free_indices(value) if i != ELLIPSIS)
        if isinstance(value, ir.FnCall) and not value.args[2]:
            labels = [self.slot(it, None, e) for it in e.items]
            if not all(ir.is_index(x) for x in labels):
                raise KindError("a function's result is labelled with index names, as in f(x)[n]", e.span)
            return ir.FnCall(value.args[0], value.args[1], sp.Tuple(*labels))
        if len(e.items) != len(axes):
            raise ShapeError(f"{_describe(base)} has {len(axes)} ax{'i' if len(axes) == 1 else 'e'}s "
                             f"({', '.join(map(str, axes)) or 'none'}) but is indexed with {len(e.items)}", e.span)
        slots = [self.slot(it, str(ax), e) for it, ax in zip(e.items, axes, strict=True)]
        return self.reindex(value, tuple(axes), slots)

    def reindex(self, value: sp.Expr, axes: tuple[sp.Symbol, ...], slots: list[sp.Expr]) -> sp.Expr:
        """Rename when every slot is a distinct index; otherwise read the value at the given positions."""
        if all(ir.is_index(v) for v in slots) and len(set(slots)) == len(slots):
            return self.rename(value, dict(zip(axes, slots, strict=True)))
        keep = [(a, v) for a, v in zip(axes, slots, strict=True) if not (ir.is_index(v) and v == a)]
        mapping = {a: v for a, v in keep if ir.is_index(v) and sum(1 for _, w in keep if w == v) == 1
                   and v not in axes}
        rest = [(a, v) for a, v in keep if a not in mapping]
        inner = self.rename(value, mapping)
        if not rest:
            return inner
        return ir.At(inner, sp.Tuple(*(a for a, _ in rest)), sp.Tuple(*(v for _, v in rest)))

    def access_declared(self, name: str, decl: ir.Input | ir.Param, e: s.Subscript) -> sp.Expr:
        axes = decl.axes
        if axes is None:
            raise ShapeError(f"'{name}' was declared without axes; declare them, as in {name}[n, c], to index it",
                             e.span)
        if len(e.items) != len(axes):
            raise ShapeError(f"'{name}' has {len(axes)} axes ({', '.join(axes)}) but is indexed with "
                             f"{len(e.items)}", e.span)
        slots = [self.slot(it, ax, e) for it, ax in zip(e.items, axes, strict=True)]
        return sp.Indexed(sp.IndexedBase(name), *slots)

    def slot(self, item: s.IndexItem, axis: str | None, e: s.Subscript) -> sp.Expr:
        """One position of x[...]: an index (bound to `axis`), a constant, or a gather by an index input."""
        if item.group is not None:
            sym = self.idx(item.group, True)
            if axis is not None and not axis.startswith("*"):
                raise ShapeError(f"the group *{item.group} stands where axis '{axis}' is declared", item.span)
            self.bind(sym, axis)
            return sym
        if axis is not None and axis.startswith("*"):
            group = axis.removeprefix("*").removeprefix(self.prefix)
            raise ShapeError(f"the group *{group} (any number of axes) is indexed with a group, as in *{group}; "
                             f"got '{item.expr.name if isinstance(item.expr, s.Name) else 'a value'}'", item.span)
        ex = item.expr
        if isinstance(ex, s.Name) and ex.name not in self.inputs and ex.name not in self.params \
                and ex.name not in self.values:
            sym = self.idx(ex.name)
            self.bind(sym, axis)
            return sym
        if isinstance(ex, s.Num) and isinstance(ex.value, int):
            return sp.Integer(ex.value)
        value = self.expr(ex)
        self.check_gather(value, axis, item)
        return value

    def bind(self, sym: sp.Symbol, axis: str | None) -> None:
        self.axes.add(str(sym))
        if axis is not None:
            self.axes.union(axis, str(sym))

    def check_gather(self, value: sp.Expr, axis: str | None, item: s.IndexItem) -> None:
        base = value.base.name if isinstance(value, sp.Indexed) else getattr(value, "name", None)
        inp = self.inputs.get(base) if base else None
        if inp is not None and inp.kind == "index" and inp.axes is not None:
            if axis is not None:
                self.axes.union(axis, inp.kind_arg)
            return
        if inp is not None and inp.kind == "index":
            raise ShapeError(f"declare the axes of the index input '{base}' to gather with it", item.span)
        raise KindError("a position inside [...] takes an index name, an integer, or an input of kind "
                        f"index(axis); got {value}", item.span)

    # ---- calls
    def call(self, e: s.Call) -> sp.Expr:
        f = e.func
        if f in self.inputs and self.inputs[f].kind == "fn":
            self.broadcast = True
            return ir.FnCall(sp.Symbol(f), sp.Tuple(*(self.expr(a) for a in e.args)), sp.Tuple())
        if f in self.inputs or f in self.params or f in self.values:
            raise KindError(f"'{f}' is not a function (only inputs of kind fn can be called)", e.span)
        if e.red_items is not None:
            return self.reduction_braced(e)
        m = SUBSCRIPTED.match(f)
        if m and not self.lookup(f):
            return self.reduction(e, m.group(1), [s.RedItem(e.span, m.group(2))])
        if f in ELEMENTWISE:
            return ELEMENTWISE[f](*self.args(e, 1))
        if f == "clamp":
            x, lo, hi = self.args(e, 3)
            return sp.Min(sp.Max(x, lo), hi)
        if f == "where":
            self.arity(e, 3)
            c, a, b = e.args
            return sp.Piecewise((self.expr(a), self.cond(c)), (self.expr(b), True))
        if f == "grad":
            out, wrt = self.args(e, 2)
            return ir.Grad(out, wrt)
        if f in WHOLE and not (f in BINARY and len(e.args) == 2):
            if len(e.args) != 1 or e.kwargs:
                raise KindError(f"{f}() reduces one expression over all its indices, as in {f}(x); got "
                                f"{len(e.args)} arguments" + (" (min and max of two take exactly two)"
                                                              if f in BINARY else ""), e.span)
            body = self.expr(e.args[0])
            return ir.REDUCTIONS[f](body, sp.Tuple(*free_indices(body)), sp.true)
        if f in BINARY:
            return BINARY[f](*self.args(e, 2))
        callee = self.lookup(f)
        if callee is not None:
            return self.inline(callee, e)
        if f in BUILTINS:
            return self.builtin(e)
        raise UnknownNameError(f"unknown function '{f}'" + did_you_mean(f, self.known_functions(f)), e.span)

    def builtin(self, e: s.Call) -> sp.Expr:
        """An opaque primitive of lossdsl.builtins: a call on whole tensors whose result is labelled like f(x)[n]."""
        spec = BUILTINS[e.func]
        if len(e.args) != spec.arity or e.kwargs:
            raise KindError(f"{e.func}() takes {spec.arity} arguments: {spec.signature}", e.span)
        return ir.FnCall(sp.Symbol(e.func), sp.Tuple(*(self.expr(a) for a in e.args)), sp.Tuple())

    def args(self, e: s.Call, n: int) -> list[sp.Expr]:
        self.arity(e, n)
        return [self.expr(a) for a in e.args]

    def arity(self, e: s.Call, n: int) -> None:
        """Built-in functions take positional arguments only: a keyword is a typo, not an option."""
        if len(e.args) != n or e.kwargs:
            got = f"{len(e.args)}" + (f" and the keyword '{e.kwargs[0][0]}'" if e.kwargs else "")
            raise KindError(f"{e.func}() takes {n} argument{'s' if n > 1 else ''}, got {got}", e.span)

    def reduction_braced(self, e: s.Call) -> sp.Expr:
        op = e.func.rstrip("_")
        if op not in ir.REDUCTIONS and op not in ir.NORMALISERS:
            raise UnknownNameError(f"unknown reduction '{op}'" + did_you_mean(op, [*ir.REDUCTIONS, *ir.NORMALISERS]),
                                   e.span)
        return self.reduction(e, op, list(e.red_items or ()))

    def reduction(self, e: s.Call, op: str, items: list[s.RedItem]) -> sp.Expr:
        """A reduction binds its indices locally: `k` in two sums may range over two different axes. A
        normaliser's index stays free (softmax_k(x[n, k]) is indexed by k), so it is not made local."""
        declared = {a for d in (*self.inputs.values(), *self.params.values()) for a in d.axes or ()}
        saved = dict(self.alias)
        for it in [] if op in ir.NORMALISERS else items:
            if not it.group and str(self.idx(it.index)) not in declared and it.index not in self.values:
                self.alias[it.index] = fresh(ir.index_symbol(it.index)).name
        try:
            return self.bound_reduction(e, op, items)
        finally:
            self.alias = saved

    def bound_reduction(self, e: s.Call, op: str, items: list[s.RedItem]) -> sp.Expr:
        if any(not it.index for it in items):
            more = "" if op in ir.NORMALISERS else f", {op}_{{c, k}}(x) for several, or {op}(x) for all"
            raise ScopeError(f"{op}_ names no index: write {op}_c(x) for one axis{more}", e.span)
        if len(e.args) != 1 or e.kwargs:
            raise KindError(f"{op}_{{...}}() takes one expression, got {len(e.args)}", e.span)
        was_known = {it.index: self.axes.known(str(self.idx(it.index, it.group))) for it in items}
        for it in items:  # bound names may be used as values inside the body: [c != k]
            self.axes.add(str(self.idx(it.index, it.group)))
        body = self.expr(e.args[0])
        free = free_indices(body)
        indices, conds = [], []
        for it in items:
            sym = self.idx(it.index, it.group)
            if sym in indices:
                raise ScopeError(f"index '{it.index}' is listed twice in one reduction", it.span)
            if sym not in free and not was_known[it.index]:
                known = [str(i).removeprefix(self.prefix) for i in free]
                raise ScopeError(f"index '{it.index}' does not occur in the reduced expression"
                                 + did_you_mean(it.index, known), it.span)
            indices.append(sym)
            if it.op is not None:
                conds.append(COMPARE[it.op](sym, self.expr(it.bound)))
        if op in ir.NORMALISERS:
            if len(indices) != 1 or conds:
                raise KindError(f"{op} normalises over exactly one index, as in {op}_c(x)", e.span)
            return ir.NORMALISERS[op](body, indices[0])
        return ir.REDUCTIONS[op](body, sp.Tuple(*indices), sp.And(*conds) if conds else sp.true)

    def inline(self, callee: s.LossDef, e: s.Call) -> sp.Expr:
        """Inline another loss per element: its inputs become intermediates bound to the arguments."""
        if callee.name in self.callers:
            cycle = " -> ".join((*self.callers[self.callers.index(callee.name):], callee.name))
            raise KindError(f"loss '{callee.name}' calls itself ({cycle}): a loss is inlined, so it cannot recurse",
                            e.span)
        self.calls += 1
        prefix = f"{self.prefix}{callee.name}{self.calls}__"  # rowsum(x) + rowsum(y): two axes apart, not one
        child = Lowerer(callee, self.lookup, prefix=prefix, callers=self.callers)
        if len(e.args) != len(callee.inputs):
            raise KindError(f"loss '{callee.name}' takes {len(callee.inputs)} inputs, got {len(e.args)}", e.span)
        back: dict[sp.Symbol, sp.Symbol] = {}
        for decl, arg in zip(callee.inputs, e.args, strict=True):
            value = self.expr(arg)
            own = [i for i in free_indices(value) if i != ELLIPSIS]
            axes = child.inputs[decl.name].axes
            if axes is None:
                child.values[decl.name] = (value, ())
                continue
            if len(own) != len(axes):
                raise ShapeError(f"argument {decl.name} of '{callee.name}' needs {len(axes)} free indices, "
                                 f"got {len(own)}", arg.span)
            inner = [ir.index_symbol(a) for a in axes]
            for a, o in zip(inner, own, strict=True):
                if back.setdefault(a, o) != o:  # pair(p, q) with u[e], v[e]: p's axis and q's are one
                    self.axes.union(str(back[a]), str(o))
            child.values[decl.name] = (self.rename(value, dict(zip(own, inner, strict=True))), tuple(inner))
        for key, val in e.kwargs:
            if key not in child.params:
                raise UnknownNameError(f"loss '{callee.name}' has no parameter '{key}'"
                                       + did_you_mean(key, child.params), val.span)
            value = self.expr(val)
            if value.is_number and value.is_real:  # a constant is checked now; an expression varies per element
                check_param_value(child.params[key], float(value), val.span)
            child.values[key] = (value, ())
        for name, p in child.params.items():
            if name not in child.values:
                if p.default is None:
                    raise ParameterError(f"loss '{callee.name}' needs a value for '{name}'", e.span)
                child.values[name] = (sp.sympify(p.default), ())
        sub = child.lower()
        self.broadcast = self.broadcast or sub.broadcast
        self.adopt_axes(child.axes, back)
        return self.rename(sub.expr, back)

    def adopt_axes(self, other: Axes, back: dict[sp.Symbol, sp.Symbol]) -> None:
        """Carry an inlined callee's axis equalities over to this loss, in this loss's index names."""
        names = {str(k): str(v) for k, v in back.items()}
        for name in other.order:
            mine, root = names.get(name, name), names.get(other.find(name), other.find(name))
            for label in (name, mine, root):  # `name` itself survives as a bound index of the callee's reductions
                self.axes.add(label)
                self.axes.union(root, label)


def check_default_type(p: ir.Param, value: float | int | bool, span: s.Span) -> None:
    """An int parameter's default is an integer and a bool's is true or false: what a value given by keyword
    must be (api._check_type), so the default is not the one value of the wrong type that gets through."""
    shown = str(value).lower() if isinstance(value, bool) else value  # as the language spells it
    if p.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ParameterError(f"parameter '{p.name}' is an int, but its default is {shown}", span)
    if p.type == "bool" and not isinstance(value, bool):
        raise ParameterError(f"parameter '{p.name}' is a bool: its default is true or false, not {shown}", span)


def check_param_value(p: ir.Param, value, span=None) -> None:
    """Constraint check shared by defaults (compile time) and user-given values (module build time)."""
    if p.constraint is None or value is None:
        return
    op, bounds = p.constraint
    try:
        import torch

        values = value.detach().flatten().tolist() if isinstance(value, torch.Tensor) else [value]
    except ImportError:  # pragma: no cover
        values = [value]
    for v in values:
        if not _satisfies(v, op, bounds):
            text = f"in [{bounds[0]}, {bounds[1]}]" if op == "in" else f"{op} {bounds[0]}"
            raise ParameterError(f"parameter '{p.name}' = {v} violates its constraint {p.name} {text}", span)


def _satisfies(v: float, op: str, bounds: tuple[float, ...]) -> bool:
    if op == "in":
        return bounds[0] <= v <= bounds[1]
    return {">": v > bounds[0], ">=": v >= bounds[0], "<": v < bounds[0], "<=": v <= bounds[0]}[op]


def find_sentinels(expr: sp.Basic, inputs: dict[str, ir.Input]) -> dict[str, list]:
    """Values an index input may hold besides a valid position: what it is compared against (ignore_index)."""
    out: dict[str, list] = {}
    for rel in expr.atoms(sp.Eq, sp.Ne):
        for a, b in ((rel.lhs, rel.rhs), (rel.rhs, rel.lhs)):
            base = a.base.name if isinstance(a, sp.Indexed) else getattr(a, "name", None)
            inp = inputs.get(base) if base else None
            if inp is not None and inp.kind == "index" and (b.is_Integer or (b.is_Symbol and not ir.is_index(b))):
                out.setdefault(base, []).append(int(b) if b.is_Integer else str(b))
    return out


def _has_unlabeled(expr: sp.Basic) -> bool:
    return any(not f.args[2] for f in expr.atoms(ir.FnCall))


def _describe(e: s.Expr) -> str:
    return f"'{e.name}'" if isinstance(e, s.Name) else "the expression"


def lower(d: s.LossDef, lookup: LossLookup) -> ir.LossIR:
    return Lowerer(d, lookup).lower()
