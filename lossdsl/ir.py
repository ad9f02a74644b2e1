"""The IR: SymPy expressions plus a handful of explicit tensor nodes.

Scalar algebra is plain SymPy. What SymPy has no notion of is spelled as Function subclasses that the
passes and the code generator understand structurally:

* tensor inputs and parameters with axes are `Indexed(IndexedBase(name), idx...)`; an index is an integer
  `Symbol`, a group `*s` is the Symbol named `*s`, a gather puts an expression (e.g. `y[n]`) in a slot;
* reductions `Sum_`, `Mean_`, ... hold (body, Tuple(indices), condition);
* `Softmax`, `LogSoftmax`, `Normalize` hold (body, index) and keep that index free;
* `At(body, Tuple(axes), Tuple(values))` evaluates `body` and then reads it at `axes = values` (a diagonal,
  a constant position or a gather of an intermediate);
* `Size(i)` is the size of index i's axis; `FnCall` and `Grad` are the opaque calls.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p  # noqa: F401 - re-exported for the front end


class _Numeric(sp.Function):
    """A function SymPy has no numeric value for: of numbers, it evaluates as the elementary form it stands
    for, so `relu(-1) + x` compiles (the code generator prints numbers with float()) and folds."""

    def _eval_evalf(self, prec: int) -> sp.Expr | None:
        if not all(a.is_number for a in self.args):
            return None
        return self.elementary(*self.args)._eval_evalf(prec)


class sigmoid(sp.Function):  # noqa: N801 - lower-case like sympy's own functions
    def fdiff(self, argindex=1):
        return sigmoid(self.args[0]) * (1 - sigmoid(self.args[0]))


class softplus(_Numeric):  # noqa: N801
    @staticmethod
    def elementary(a: sp.Expr) -> sp.Expr:
        return sp.log(1 + sp.exp(a))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class logsigmoid(_Numeric):  # noqa: N801
    @staticmethod
    def elementary(a: sp.Expr) -> sp.Expr:
        return -sp.log(1 + sp.exp(-a))

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])


class logcosh(_Numeric):  # noqa: N801
    """log(cosh(a)), as the log_cosh rewrite leaves it: a node of its own because its derivative is tanh(a),
    while its stable form (stable.log_cosh_form: a clamp, a sinh and a log1p) differentiates into 25
    times as much text and as many full-size temporaries. Generated code evaluates the form in an
    autograd.Function whose backward is the tanh (emit.NODES)."""

    @classmethod
    def eval(cls, a):
        if a.is_zero:
            return sp.Integer(0)
        if a.could_extract_minus_sign():
            return cls(-a)
        return None

    @staticmethod
    def elementary(a: sp.Expr) -> sp.Expr:
        return sp.log(sp.cosh(a))

    def fdiff(self, argindex=1):
        return sp.tanh(self.args[0])

    def _latex(self, printer, exp=None) -> str:
        return _power(rf"\log\cosh\left({printer._print(self.args[0])}\right)", exp)


class relu(_Numeric):  # noqa: N801
    @staticmethod
    def elementary(a: sp.Expr) -> sp.Expr:
        return sp.Max(a, 0)

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0], 0)


class isfinite(sp.Function):  # noqa: N801
    """1 where x is finite, else 0 (torch.isfinite). A test, not `x != inf`: SymPy folds that to true for reals."""

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class xlogy(_Numeric):  # noqa: N801
    """x*log(y), defined as 0 where x == 0 (torch.xlogy)."""

    @staticmethod
    def elementary(x: sp.Expr, y: sp.Expr) -> sp.Expr:
        return sp.Integer(0) if x.is_zero else x * sp.log(y)

    def fdiff(self, argindex=1):
        x, y = self.args
        return sp.log(y) if argindex == 1 else x / y


class _Tensor(sp.Function):
    """Base of the structural nodes: never auto-evaluated, printed readably."""

    is_commutative = True
    is_real = True


class _Reduction(_Tensor):
    nargs = 3
    op = ""

    @property
    def body(self) -> sp.Expr:
        return self.args[0]

    @property
    def indices(self) -> tuple[sp.Symbol, ...]:
        return tuple(self.args[1])

    @property
    def cond(self) -> sp.Basic:
        return self.args[2]

    def _sympystr(self, printer) -> str:
        idx = ", ".join(str(i) for i in self.indices)
        cond = "" if self.cond == sp.true else f" | {printer.doprint(self.cond)}"
        return f"{self.op}_{{{idx}{cond}}}({printer.doprint(self.body)})"

    def _latex(self, printer, exp=None) -> str:
        idx = ",".join(sp.latex(i).replace("*", "") for i in self.indices)
        if self.cond != sp.true:
            idx += r":\," + printer.doprint(self.cond)
        sym = {"sum": r"\sum", "prod": r"\prod", "mean": r"\operatorname{mean}", "max": r"\max",
               "min": r"\min", "logsumexp": r"\operatorname{logsumexp}", "norm": r"\operatorname{norm}"}[self.op]
        body = printer.doprint(self.body)
        if self.op == "norm":
            return _power(rf"\left\| {body} \right\|_{{{idx}}}", exp)
        return _power(rf"{sym}_{{{idx}}} \left({body}\right)", exp)


def _reduction(name: str, cls: str | None = None) -> type[_Reduction]:
    """cls: the module-level name, which pickle (the disk cache) finds the class by."""
    return type(cls or f"{name.capitalize()}_", (_Reduction,), {"op": name})


Sum_ = _reduction("sum")
Mean_ = _reduction("mean")
Prod_ = _reduction("prod")
Max_ = _reduction("max")
Min_ = _reduction("min")
LogSumExp_ = _reduction("logsumexp", "LogSumExp_")
Norm_ = _reduction("norm")
REDUCTIONS: dict[str, type[_Reduction]] = {c.op: c for c in (Sum_, Mean_, Prod_, Max_, Min_, LogSumExp_, Norm_)}


class _Normaliser(_Tensor):
    nargs = 2
    op = ""

    @property
    def body(self) -> sp.Expr:
        return self.args[0]

    @property
    def index(self) -> sp.Symbol:
        return self.args[1]

    def _sympystr(self, printer) -> str:
        return f"{self.op}_{self.index}({printer.doprint(self.body)})"

    def _latex(self, printer, exp=None) -> str:
        op = self.op.replace("_", "\\_")
        body = printer.doprint(self.body)
        return _power(rf"\operatorname{{{op}}}_{{{sp.latex(self.index)}}}\left({body}\right)", exp)


class Softmax(_Normaliser):
    op = "softmax"


class LogSoftmax(_Normaliser):
    op = "log_softmax"


class Normalize(_Normaliser):
    op = "normalize"


NORMALISERS: dict[str, type[_Normaliser]] = {c.op: c for c in (Softmax, LogSoftmax, Normalize)}


class At(_Tensor):
    """body read at axes = values (diagonal, constant position or gather)."""

    nargs = 3

    def _sympystr(self, printer) -> str:
        body, axes, values = self.args
        pos = ", ".join(f"{a}={printer.doprint(v)}" for a, v in zip(axes, values, strict=True))
        return f"({printer.doprint(body)})[{pos}]"

    def _latex(self, printer, exp=None) -> str:
        """`body` evaluated at axes = values: the evaluation bar, \\left. body \\right|_{c = y_n}."""
        body, axes, values = self.args
        pos = ",\\,".join(f"{sp.latex(a).lstrip('*')} = {printer.doprint(v)}"
                           for a, v in zip(axes, values, strict=True))
        return _power(rf"\left. {printer.doprint(body)} \right|_{{{pos}}}", exp)


class Size(_Tensor):
    """The size of an index's axis (`C` for index `c`)."""

    nargs = 1
    is_integer = True
    is_positive = True

    def _sympystr(self, printer) -> str:
        return str(self.args[0]).lstrip("*").upper()

    def _latex(self, printer, exp=None) -> str:
        size = str(self.args[0]).lstrip("*").upper()
        return f"{size}^{{{exp}}}" if exp else size


class FnCall(_Tensor):
    """f(args...) for an `fn` input; `labels` names the result's axes (empty: unlabeled broadcast)."""

    nargs = 3

    def _sympystr(self, printer) -> str:
        f, args, labels = self.args
        text = f"{f}({', '.join(printer.doprint(a) for a in args)})"
        return text + (f"[{', '.join(map(str, labels))}]" if labels else "")

    def _latex(self, printer, exp=None) -> str:
        f, args, _ = self.args
        return _power(rf"{printer.doprint(f)}\left({', '.join(printer.doprint(a) for a in args)}\right)", exp)


class Grad(_Tensor):
    """d(sum of e)/d(wrt), kept in the autograd graph (create_graph=True)."""

    nargs = 2

    def _sympystr(self, printer) -> str:
        return f"grad({printer.doprint(self.args[0])}, {printer.doprint(self.args[1])})"

    def _latex(self, printer, exp=None) -> str:
        return _power(rf"\nabla_{{{printer.doprint(self.args[1])}}} \left({printer.doprint(self.args[0])}\right)", exp)


def _power(tex: str, exp: str | None) -> str:
    """SymPy's LaTeX printer hands a power's exponent to the base's `_latex` (`exp=`): the node prints both."""
    return tex if exp is None else rf"\left({tex}\right)^{{{exp}}}"


def _fold_outside_tensors(fold):
    """SymPy folds a Piecewise out of any function's arguments when it sits in a condition
    (`[sum_m([l[m] > l[n]]) < k]`); through a reduction that moves a bound index out of its scope and changes
    the meaning. The structural nodes are opaque: a Piecewise inside one stays there."""

    def piecewise_fold(expr, evaluate=True):
        return expr if isinstance(expr, _Tensor) or not _foldable(expr) else fold(expr, evaluate)

    return piecewise_fold


def _foldable(expr: sp.Basic) -> bool:
    """Whether a Piecewise other than expr itself sits outside the opaque tensor nodes. Without one, folding
    changes nothing, and SymPy's fold would call itself again on its result forever: it sees the Piecewise
    inside a tensor (normalize's guarded norm of a where) and cannot move it out."""
    stack = list(expr.args)
    while stack:
        e = stack.pop()
        if isinstance(e, sp.Piecewise):
            return True
        if not isinstance(e, _Tensor):
            stack.extend(e.args)
    return False


_piecewise_module = sys.modules["sympy.functions.elementary.piecewise"]
_piecewise_module.piecewise_fold = _fold_outside_tensors(_piecewise_module.piecewise_fold)


def reads(e: sp.Basic, name: str) -> bool:
    """Whether e reads the input or parameter `name` (x of undeclared shape, or x[...])."""
    return any(is_tensor(x, name) for x in sp.preorder_traversal(e))


def is_tensor(e: sp.Basic, name: str) -> bool:
    """Whether e is the input or parameter `name` itself, as the front end writes it."""
    return ((isinstance(e, sp.Indexed) and e.base.name == name)
            or (isinstance(e, sp.Symbol) and e.name == name and not is_index(e)))


def index_symbol(name: str) -> sp.Symbol:
    """Index symbols are the only non-negative integer symbols (int parameters are plain integers)."""
    return sp.Symbol(name, integer=True, nonnegative=True)


def is_index(e: sp.Basic) -> bool:
    return isinstance(e, sp.Symbol) and e.is_integer is True and e.is_nonnegative is True


def expressions(loss: LossIR) -> list[sp.Basic]:
    """Every SymPy expression the loss holds (its value, the reduction weight, ...)."""
    return [v for f in dataclasses.fields(loss) if isinstance(v := getattr(loss, f.name), sp.Basic)]


def iverson(cond: sp.Basic) -> sp.Expr:
    """[cond]: 1 where it holds, else 0, as a Piecewise (what the emitter turns into masks and scatters)."""
    return sp.Integer(1) if cond == sp.true else sp.Piecewise((1, cond), (0, True))


def host_symbols(loss: LossIR, *extra: sp.Basic) -> set[sp.Basic]:
    """The scalar float parameters worth reading as numbers: those in a power's exponent (pow(x, 2.0) is a
    multiply) and those of comparisons between such parameters and numbers alone (`alpha >= 0` picks a
    branch), in the loss's expressions and `extra` ones (a backward's gradients). Eager code reads them
    through codegen._host, compiled mode writes them in (Specializer)."""
    params = {sp.Symbol(p.name, real=True) for p in loss.params if p.type is None and not p.axes}
    found: set[sp.Basic] = set()
    for node in (n for e in [*expressions(loss), *extra] for n in sp.preorder_traversal(e)):
        if isinstance(node, sp.Pow):
            found |= node.exp.free_symbols & params
        elif isinstance(node, sp.core.relational.Relational) and node.free_symbols <= params:
            found |= node.free_symbols
    return found


def unnegated(rel: sp.Basic) -> sp.Basic:
    """rel with both sides negated (and the order flipped) when its right side carries a minus sign.

    SymPy's canonical form of the argmax mask [b == max(b)] is [-b == -max(b)] when b has more minus signs
    than plus. Emitted as is, -b sums its terms in another order than b, so rounding would miss the tie
    (a 0/0 gradient); printed as is, it hides the mask's meaning. Negation is exact: x == y exactly when
    -x == -y, and x < y when -x > -y."""
    if rel.rhs.is_number or not rel.rhs.could_extract_minus_sign():
        return rel
    return rel.reversed.func(-rel.lhs, -rel.rhs, evaluate=False)


@dataclass
class Input:
    name: str
    axes: tuple[str, ...] | None  # index names ("*s" for a group); None = undeclared broadcast shape
    kind: str = "real"
    kind_arg: str | None = None

    @property
    def is_integral(self) -> bool:
        return self.kind in ("index", "int", "count")


@dataclass
class Param:
    name: str
    axes: tuple[str, ...] | None
    type: str | None  # None (float), "int", "bool", "learnable"
    default: float | int | bool | None
    constraint: tuple[str, tuple[float, ...]] | None = None


@dataclass
class LossIR:
    """A checked loss: the SymPy expression of one element of the loss, over its free (batch) indices."""

    name: str
    inputs: list[Input]
    params: list[Param]
    expr: sp.Expr
    free: tuple[str, ...]  # batch indices, in canonical order
    broadcast: bool  # whether undeclared-shape inputs make a leading broadcast shape
    reduce_mode: str | None = None  # None (the user's reduction), "weighted", "batchmean", "sum", "mean", "none"
    reduce_weight: sp.Expr | None = None
    axis_of: dict[str, str] = field(default_factory=dict)  # index name -> canonical axis name
    sizes_from: dict[str, tuple[str, int]] = field(default_factory=dict)  # axis -> (tensor, position)
    sentinels: dict[str, list[str | int]] = field(default_factory=dict)  # index input -> allowed values
    doc: str | None = None
    source: str = ""
    statements: list[tuple[str, sp.Expr]] = field(default_factory=list)  # for display only
    notes: list[dict] = field(default_factory=list)  # what passes did (rule name, where, before/after)

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)
