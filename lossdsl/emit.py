"""IR expression → lines of PyTorch. Every IR node becomes one named temporary over labelled axes.

A value knows its axis labels (index names); elementwise ops align labels by permute/unsqueeze, reductions
name their dims, `sum` of a product becomes one `torch.einsum` (a matmul, never an [i, j, d] temporary),
gathers use `gather`/indexing, one-hot and off-diagonal masks are scatters and diagonal sets (masks.py).
Identical sub-expressions are emitted once (the memo is the CSE).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from . import ir
from .errors import KindError
from .masks import MaskLowering
from .scope import ELLIPSIS, free_indices, rename
from .stable import canonical, log_cosh_form, log_cosh_kernel_form, tanh_kernel_form
from .values import V, _literal, _paren

FUNCS: dict[type, str] = {
    sp.exp: "torch.exp", sp.log: "torch.log", sp.Abs: "torch.abs", sp.sign: "torch.sign", sp.sin: "torch.sin",
    sp.cos: "torch.cos", sp.tan: "torch.tan", sp.tanh: "torch.tanh", sp.cosh: "torch.cosh",
    sp.sinh: "torch.sinh", sp.acos: "torch.acos", sp.asin: "torch.asin", sp.atan: "torch.atan",
    sp.erf: "torch.erf", ir.sigmoid: "torch.sigmoid", ir.logsigmoid: "torch.nn.functional.logsigmoid",
    ir.softplus: "torch.nn.functional.softplus", ir.relu: "torch.relu", ir.log1p: "torch.log1p",
    ir.expm1: "_expm1", ir.isfinite: "torch.isfinite",
}


@dataclass(frozen=True)
class Node:
    """An elementwise IR node printed as a generated autograd.Function (codegen.node_class): its forward is
    the node's stable form, its backward the node's own derivative, not autograd through the form's ops
    (log-cosh: one tanh instead of autograd through the clamp, sinh and log1p; eager 4M f32 forward + backward
    ~150-190 -> 77-92 ms). Two spellings of each, because the cost models differ: eager runs every op as a
    pass over memory (few, large ops win), while under torch.compile the whole form is one kernel in which
    arithmetic is nearly free and each transcendental is not (polynomials win)."""

    name: str
    form: Callable[[sp.Expr], sp.Expr]
    kernel_form: Callable[[sp.Expr, int], sp.Expr]  # (a, significand bits): the kernel form sized for a dtype
    kernel_derivative: Callable[[sp.Expr, int], sp.Expr]


NODES: dict[type, Node] = {ir.logcosh: Node("_LogCosh", log_cosh_form, log_cosh_kernel_form, tanh_kernel_form)}
MEMOS = ("memo", "calls", "relabelled", "renamable")  # what an emitter remembers of emitted values
_TEMP_LINE = re.compile(r"t\d+ = ")
COMPARE = {sp.Eq: "==", sp.Ne: "!=", sp.Lt: "<", sp.Le: "<=", sp.Gt: ">", sp.Ge: ">="}
FILL = {"sum": "0.0", "mean": "0.0", "norm": "0.0", "prod": "1.0", "max": "-float('inf')",
        "min": "float('inf')", "logsumexp": "-float('inf')"}
IDENTITY = {"sum": "0.0", "norm": "0.0", "prod": "1.0", "mean": "float('nan')", "max": "-float('inf')",
            "min": "float('inf')", "logsumexp": "-float('inf')"}
REDUCE_CALL = {"sum": "{t}.sum(dim={d})", "mean": "{t}.mean(dim={d})", "max": "{t}.amax(dim={d})",
               "min": "{t}.amin(dim={d})", "logsumexp": "torch.logsumexp({t}, dim={d})",
               "norm": "torch.linalg.vector_norm({t}, dim={d})"}
NORMALISE_CALL = {"softmax": "torch.softmax({t}, dim={d})", "log_softmax": "torch.log_softmax({t}, dim={d})",
                  "normalize": "torch.nn.functional.normalize({t}, dim={d})"}


class Emitter(MaskLowering):
    """Emits one loss body; `names` resolves input/parameter symbols to the variables bound in forward()."""

    def __init__(self, order: list[str], size_var: Callable[[str], str],
                 names: dict[str, V], gather_names: dict[str, str], lines: list[str],
                 is_bound: Callable[[str], bool] = lambda label: True) -> None:
        self.order = order
        self.size_var = size_var
        self.names = names
        self.gather_names = gather_names  # index input -> its clamped copy used for gathers
        self.lines = lines
        self.is_bound = is_bound  # whether an axis size is already known (else a call's result fixes it)
        self.memo: dict[sp.Basic, V] = {}
        self.renamable: dict[sp.Basic, tuple[list[sp.Symbol], V]] = {}  # reductions by renaming_key
        self.calls: dict[str, V] = {}  # normaliser calls and diagonal masks by code: the memo misses renamed indices
        self.lone_reads: frozenset[str] = frozenset()  # inputs read at one gathered slot and nowhere else
        self.host_params: dict[str, V] = {}  # parameters read as Python numbers in exponents and conditions
        self.guards: tuple[str, ...] | None = ()  # the Python conditions of the branch emitted (None: eager)
        self.guarded: set[int] = set()  # lines already computed under their branch's guards
        self.branch_memo: dict[tuple[str, ...], dict[sp.Basic, V]] = {}  # the memo of each guarded branch
        self.count = 0

    # ---- helpers
    def tmp(self, code: str, labels: tuple[str, ...], ell: bool = False) -> V:
        self.count += 1
        name = f"t{self.count}"
        self.lines.append(f"{name} = {code}")
        return V(name, labels, "tensor", ell)

    def rank(self, label: str) -> tuple[int, str]:
        return (self.order.index(label), "") if label in self.order else (1 << 30, label)

    def union(self, *vals: V) -> tuple[str, ...]:
        labels = {lab for v in vals for lab in v.labels}
        return tuple(sorted(labels, key=self.rank))

    def align(self, v: V, target: tuple[str, ...], ell: bool = False) -> str:
        """Code for v viewed over `target` labels (permuted, with size-1 dims where v lacks a label)."""
        if not v.is_tensor or v.labels == target:
            return v.code
        present = [lab for lab in target if lab in v.labels]
        code = v.code
        if present != list(v.labels):
            perm = [v.labels.index(lab) for lab in present]
            if v.ell:
                k = len(v.labels)
                code = f"{code}.movedim({tuple(p - k for p in perm)}, {tuple(range(-k, 0))})"
            else:
                code = f"{code}.permute({', '.join(map(str, perm))})"
        slots = [":" if lab in v.labels else "None" for lab in target]
        if not (v.ell or ell):
            while slots and slots[0] == "None":
                slots.pop(0)
        if "None" in slots:
            code = f"{code}[{', '.join(['...', *slots])}]"
        return code

    def dims(self, v: V, labels) -> str:
        k = len(v.labels)
        pos = [v.labels.index(lab) - (k if v.ell else 0) for lab in labels]
        return str(pos[0]) if len(pos) == 1 else str(tuple(pos))

    def sizes(self, labels) -> str:
        return ", ".join(self.size_var(lab) for lab in labels)

    def expand_to(self, v: V, target: tuple[str, ...]) -> V:
        """Materialise missing labels by broadcasting (a view, no copy)."""
        if not v.is_tensor:
            if not target:
                return self.tmp(f"torch.as_tensor({v.code}, dtype=_dt, device=_dev)", ())
            return self.tmp(f"torch.full(({self.sizes(target)},), {v.code}, dtype=_dt, device=_dev)", target)
        if set(target) <= set(v.labels):
            return v
        full = self.union(v, V("", target))
        prefix = f"*t.shape[:-{len(v.labels)}], " if v.ell and v.labels else ("*t.shape, " if v.ell
                                                                                         else "")
        prefix = prefix.replace("t.shape", f"{v.code}.shape")
        return self.tmp(f"{self.align(v, full, v.ell)}.expand({prefix}{self.sizes(full)})", full, v.ell)

    # ---- dispatch
    def emit(self, e: sp.Basic) -> V:
        if e in self.memo:
            return self.memo[e]
        key = renaming_key(e)
        v = self.renamed(key) if key is not None else None
        if v is None:
            v = self._emit(e)
            if key is not None and v.is_tensor:
                self.renamable.setdefault(key[0], (key[1], v))
        self.memo[e] = v
        return v

    def renamed(self, key: tuple[sp.Basic, list[sp.Symbol]]) -> V | None:
        """A reduction already emitted under other names for its free indices, relabelled: CLIP's s[j, i] is
        s[i, j] read transposed, not a second matrix product (and two more in the backward)."""
        hit = self.renamable.get(key[0])
        if hit is None:
            return None
        mapping = {str(old): str(new) for old, new in zip(hit[0], key[1], strict=True)}
        if any(self.size_var(old) != self.size_var(new) for old, new in mapping.items()):
            return None
        v = hit[1]
        return V(v.code, tuple(mapping[lab] for lab in v.labels), v.kind, v.ell)

    def _emit(self, e: sp.Basic) -> V:
        if e is sp.true or e is sp.false:
            return V("True" if e is sp.true else "False", kind="py")
        if e.is_number:
            return V(_literal(e), kind="num")
        if ir.is_index(e):
            return self.tmp(f"torch.arange({self.size_var(str(e))}, device=_dev)", (str(e),))
        if isinstance(e, sp.Symbol):
            if e.name not in self.names:
                raise KindError(f"internal: no value bound for '{e.name}'")
            return self.names[e.name]
        handler = self._handler(e)
        return handler(e)

    def _handler(self, e: sp.Basic) -> Callable[[sp.Basic], V]:
        table: list[tuple[type | tuple, Callable]] = [
            (ir.Size, lambda x: V(self.size_var(str(x.args[0])), kind="py")),
            (sp.Indexed, self.indexed), (sp.Add, self.add), (sp.Mul, self.product), (sp.Pow, self.pow),
            (sp.Piecewise, self.piecewise), (ir._Reduction, self.reduction), (ir._Normaliser, self.normaliser),
            (ir.At, self.at), (ir.FnCall, self.fncall), (ir.Grad, self.grad),
            ((sp.Min, sp.Max), self.minmax), (ir.xlogy, self.xlogy),
            (sp.core.relational.Relational, self.compare), ((sp.And, sp.Or, sp.Not), self.logic),
            (sp.ITE, self.ite),
            (sp.Heaviside, lambda x: self.logic_to_float(self.emit(sp.Gt(x.args[0], 0)))),
        ]
        for types, fn in table:
            if isinstance(e, types):
                return fn
        if type(e) in FUNCS or e.func in FUNCS:
            return self.function
        if e.func in NODES:
            return self.node_call
        raise KindError(f"internal: no code generation rule for {type(e).__name__}")

    # ---- elementwise
    def combine(self, vals: list[V], make: Callable[[list[str]], str]) -> V:
        tensors = [v for v in vals if v.is_tensor]
        if not tensors:
            return V(f"({make([v.code for v in vals])})", kind="py" if any(v.kind == "py" for v in vals)
                     else "num")
        target = self.union(*tensors)
        target = next((v.labels for v in tensors if len(v.labels) == len(target)), target)  # avoid a permute
        ell = any(v.ell for v in tensors)
        return self.tmp(make([self.align(v, target, ell) for v in vals]), target, ell)

    def add(self, e: sp.Add) -> V:
        return self.try_scatter_add(e) or self.sum_of_terms(e)

    def sum_of_terms(self, e: sp.Add) -> V:
        terms = [(sign, self.emit(t)) for sign, t in signed_terms(e)]
        scalar = [not (v.labels or v.ell) for _, v in terms]
        if any(sign == "+" and not sc for (sign, _), sc in zip(terms, scalar, strict=True)):
            # full-size terms first, scalars (eps, constants) last: |a - b + eps| as (a - b) + eps, not
            # (eps + a) - b, which rounds eps into a (pairwise_distance of near-identical float32 rows was 35%
            # off); with no positive full-size term, 1 - g stays as it is
            terms = [t for _, t in sorted(zip(scalar, terms, strict=True), key=lambda st: st[0])]
        signs = [sign for sign, _ in terms]
        vals = [v for _, v in terms]

        def make(codes: list[str]) -> str:
            out = ("-" if signs[0] == "-" else "") + codes[0]
            for sign, c in zip(signs[1:], codes[1:], strict=True):
                out += f" {sign} {c}"
            return out

        return self.combine(vals, make)

    def product(self, e: sp.Mul) -> V:
        return self.try_scatter(e) or self.try_off_diagonal_product(e) or self.mul(e)

    def mul(self, e: sp.Mul) -> V:
        pushed = self.push_scale_into_sum(e)
        if pushed is not None:
            return self.emit(pushed)
        coeff, rest = e.as_coeff_Mul()
        num, den = [], []
        for f in sp.Mul.make_args(rest):
            if isinstance(f, sp.Pow) and f.exp.is_number and f.exp < 0:
                den.append(self.emit(sp.Pow(f.base, -f.exp)))
            else:
                num.append(self.emit(f))
        full = {lab for v in num + den if v.is_tensor for lab in v.labels}
        any_shape = any(v.ell for v in num + den)

        def small(v: V) -> bool:
            return not v.is_tensor or (not v.ell and (set(v.labels) < full or (any_shape and not v.labels)))

        # operands with fewer axes are combined first: beta * t[n, c, s] * u[n, c] / w[n, c] is one multiply
        # over [n, c, s] after two over [n, c], not three over [n, c, s]; 0-d parameters count as fewer axes
        # than an undeclared-shape input (weighted_bce's 0.5 * y * total * logsigmoid(x) / pos_count: two
        # full-size multiplies, not four)
        sn, sd = [v for v in num if small(v)], [v for v in den if small(v)]
        if len(sn) + len(sd) >= 2 and len(sn) + len(sd) < len(num) + len(den) and any(
                v.is_tensor for v in sn + sd):
            scale = self.product_of(coeff, sn, sd)
            return self.product_of(sp.Integer(1), [scale, *(v for v in num if not small(v))],
                                   [v for v in den if not small(v)])
        return self.product_of(coeff, num, den)

    def product_of(self, coeff: sp.Number, num: list[V], den: list[V]) -> V:
        """coeff * prod(num) / prod(den) in one line."""
        lead = [] if coeff in (1, -1) else [V(_literal(coeff), kind="num")]
        # -x * y negates the operand with the fewest axes: -softmax[n, c] * v[n] would negate a dense [n, c]
        negated = min(range(len(num)), key=lambda k: (num[k].is_tensor, len(num[k].labels))) if (
            coeff == -1 and num) else None

        def make(codes: list[str]) -> str:
            ncodes = [("-" if k == negated else "") + _paren(c) for k, c in enumerate(codes[: len(num)])]
            dcodes = [_paren(c) for c in codes[len(num):]]
            top = " * ".join([c.code for c in lead] + ncodes) or "1.0"
            text = f"-{top}" if coeff == -1 and not num else top
            if dcodes:
                text += " / " + (dcodes[0] if len(dcodes) == 1 else f"({' * '.join(dcodes)})")
            return text

        return self.combine(num + den, make)

    def push_scale_into_sum(self, e: sp.Mul) -> sp.Basic | None:
        """`sum_d(a*b) / tau` → `sum_d(a*b/tau)`: the einsum then scales an operand, not the [i, j] result."""
        sums = [f for f in e.args if isinstance(f, ir.Sum_) and f.cond == sp.true and isinstance(f.body, sp.Mul)]
        rest = [f for f in e.args if f not in sums]
        if len(sums) != 1 or not rest or any(self.labels_of(f) for f in rest):
            return None
        s = sums[0]
        return ir.Sum_(sp.Mul(*rest, s.body), s.args[1], s.cond)

    def pow(self, e: sp.Pow) -> V:
        base, exp = e.args
        if exp == sp.Rational(1, 2):
            return self.unary("torch.sqrt", self.emit(base))
        if exp == sp.Rational(-1, 2):
            return self.unary("torch.rsqrt", self.emit(base))
        if exp == -1:
            return self.unary("torch.reciprocal", self.emit(base))
        b = self.emit(base)
        x = self.host_exponent(exp) if b.is_tensor else None
        x = x or self.emit(exp)
        if not b.is_tensor and not x.is_tensor:
            return V(f"({b.code} ** {x.code})", kind="num")
        if not b.is_tensor:
            return self.combine([b, x], lambda c: f"torch.pow(torch.as_tensor({c[0]}, dtype=_dt, device=_dev), "
                                                  f"{c[1]})")
        return self.combine([b, x], lambda c: f"{_paren(c[0])} ** {_paren(c[1])}")

    def host_exponent(self, exp: sp.Basic) -> V | None:
        """An exponent of host parameters (gamma, gamma - 1 in a gradient) as a Python expression of their
        run-time numbers: pow(x, 1.0) is a multiply's cost, pow(x, a 0-dim tensor) a generic pow's."""
        code = self.host_code(exp) if exp.free_symbols else None
        return V(code, kind="num") if code else None

    def host_code(self, e: sp.Basic) -> str | None:
        """e as Python code over the run-time numbers of host parameters (codegen._host), when it holds only
        those and numbers joined by arithmetic; else None."""
        if e.is_number:
            return _literal(e)
        if not {x.name for x in e.free_symbols} <= set(self.host_params) or any(
                not isinstance(n, (sp.Add, sp.Mul, sp.Pow, sp.Symbol, sp.Number)) for n in sp.preorder_traversal(e)):
            return None
        if isinstance(e, sp.Symbol):
            return self.host_params[e.name].code
        for divisor in _divisors(e):
            self.nonzero_host(divisor)
        return f"({sp.sstr(e.xreplace({x: sp.Symbol(self.host_params[x.name].code) for x in e.free_symbols}))})"

    def nonzero_host(self, param: sp.Symbol) -> None:
        """A host parameter the host code divides by is checked first: Python's 1 / 0.0 raised a bare
        ZeroDivisionError from inside the generated forward (pairwise_distance with p = 0). Not while
        compiling, where the parameter is a tensor (codegen._host) and its division IEEE's."""
        code = self.host_params[param.name].code
        check = f"if not _compiling() and {code} == 0:"
        if check not in self.lines:
            self.lines.append(check)
            message = f"parameter '{param.name}' is 0, and this loss divides by it"
            self.lines.append(f"    raise self.param_error({message!r})")

    def unary(self, fn: str, v: V) -> V:
        if not v.is_tensor:
            v = self.tmp(f"torch.as_tensor({v.code}, dtype=_dt, device=_dev)", ())
        return self.tmp(f"{fn}({v.code})", v.labels, v.ell)

    def function(self, e: sp.Function) -> V:
        return self.unary(FUNCS[e.func], self.emit(e.args[0]))

    def node_call(self, e: sp.Function) -> V:
        return self.unary(f"{NODES[e.func].name}.apply", self.emit(e.args[0]))

    def minmax(self, e: sp.Basic) -> V:
        fn = "torch.minimum" if isinstance(e, sp.Min) else "torch.maximum"
        vals = [self.emit(a) for a in e.args]
        tensors = [v for v in vals if v.is_tensor]
        scalars = [v for v in vals if not v.is_tensor]
        if not tensors:
            return V(f"{'min' if fn.endswith('minimum') else 'max'}({', '.join(v.code for v in vals)})", kind="num")
        acc = tensors[0]
        for v in tensors[1:]:
            acc = self.combine([acc, v], lambda c: f"{fn}({c[0]}, {c[1]})")
        for v in scalars:
            bound = "max" if fn.endswith("minimum") else "min"
            acc = self.tmp(f"{acc.code}.clamp({bound}={v.code})", acc.labels, acc.ell)
        return acc

    def xlogy(self, e: sp.Basic) -> V:
        vals = [self.emit(a) for a in e.args]
        if not vals[0].is_tensor and not vals[1].is_tensor:
            vals[0] = self.tmp(f"torch.as_tensor({vals[0].code}, dtype=_dt, device=_dev)", ())
        return self.combine(vals, lambda c: f"torch.xlogy({c[0]}, {c[1]})")

    # ---- conditions
    def compare(self, e: sp.Basic) -> V:
        e = ir.unnegated(e)  # exact ties for argmax masks
        op = COMPARE[type(e)]
        return self.combine([self.emit(e.lhs), self.emit(e.rhs)], lambda c: f"{_paren(c[0])} {op} {_paren(c[1])}")

    def logic(self, e: sp.Basic) -> V:
        vals = [self.emit(a) for a in e.args]
        if all(not v.is_tensor for v in vals):
            word = {sp.And: " and ", sp.Or: " or "}.get(type(e))
            code = f"(not {vals[0].code})" if isinstance(e, sp.Not) else f"({word.join(v.code for v in vals)})"
            return V(code, kind="py")
        if isinstance(e, sp.Not):
            return self.tmp(f"~{_paren(vals[0].code)}", vals[0].labels, vals[0].ell)
        op = " & " if isinstance(e, sp.And) else " | "
        vals = [v if v.is_tensor else self.tmp(f"torch.as_tensor({v.code}, device=_dev)", ()) for v in vals]
        return self.combine(vals, lambda c: op.join(_paren(x) for x in c))

    def ite(self, e: sp.ITE) -> V:
        """SymPy's boolean if-then-else (it folds Piecewise conditions into these)."""
        cond, a, b = (self.emit(x) for x in e.args)
        if not any(v.is_tensor for v in (cond, a, b)):
            return V(f"({a.code} if {cond.code} else {b.code})", kind="py")
        a, b = (v if v.is_tensor else self.tmp(f"torch.as_tensor({v.code}, device=_dev)", ()) for v in (a, b))
        return self.where(cond, a, b)

    def logic_to_float(self, cond: V) -> V:
        if not cond.is_tensor:
            return V(f"(1.0 if {cond.code} else 0.0)", kind="num")
        return self.tmp(f"{cond.code}.to(_dt)", cond.labels, cond.ell)

    def piecewise(self, e: sp.Piecewise) -> V:
        pieces = list(e.args)
        diagonal = self.try_diagonal_piecewise(pieces)
        if diagonal is not None:
            return diagonal
        if len(pieces) == 2 and pieces[0].expr == 1 and pieces[1].expr == 0 and pieces[1].cond == sp.true:
            return self.logic_to_float(self.emit(pieces[0].cond))
        host = self.host_condition(pieces[0].cond) if len(pieces) == 2 else None
        if host is not None:
            a, b = self.emit(pieces[0].expr), self.emit(pieces[1].expr)
            return self.combine([a, b], lambda c: f"_where({host}, {c[0]}, {c[1]}, _dt, _dev)")
        conds = [self.emit(piece.cond) for piece in pieces[:-1]]
        if conds and not any(c.is_tensor for c in conds):
            return self.python_branches(pieces, [c.code for c in conds])
        acc = self.emit(pieces[-1].expr)
        for piece in reversed(pieces[:-1]):
            cond, then = self.emit(piece.cond), self.emit(piece.expr)
            acc = self.where(cond, then, acc)
        return acc

    def host_condition(self, cond: sp.Basic) -> str | None:
        """Code for a comparison of parameters read as Python numbers (self.host_params) with numbers, else
        None: a Python bool at run time, or a tensor when a parameter is given per element (codegen._host)."""
        if not isinstance(cond, sp.core.relational.Relational) or not cond.free_symbols:
            return None
        sides = [self.host_code(side) for side in (cond.lhs, cond.rhs)]
        return None if None in sides else f"({sides[0]} {COMPARE[type(cond)]} {sides[1]})"

    def python_branches(self, pieces: list, conds: list[str]) -> V:
        """A choice made by Python values (a bool or int parameter, a size): only the branch taken runs.
        Each branch's temporaries are guarded by the conditions that select it (`t5 = ... if c else None`),
        so `use_sigmoid=False` costs no sigmoid, nor its backward (Dice 4M f32, eager: 45 -> 18 ms)."""
        vals = []
        for k, piece in enumerate(pieces):
            guard = [f"not {_paren(c)}" for c in conds[:k]] + ([_paren(conds[k])] if k < len(conds) else [])
            vals.append(self.lazily(piece.expr, tuple(guard)))
        acc = vals[-1]
        for cond, then in zip(reversed(conds), reversed(vals[:-1]), strict=True):
            acc = self.where(V(cond, kind="py"), then, acc)
        return acc

    def lazily(self, e: sp.Basic, guard: tuple[str, ...]) -> V:
        """e's value, with the temporaries it adds computed only where the guards (and those of enclosing
        branches) hold, else None. The memo keeps them for later branches under the same guards only, so
        no expression reads one unguarded. A branch that emits other lines (a call's shape check) is
        emitted again eagerly, as every branch was before."""
        if self.guards is None:
            return self.emit(e)
        chain = self.guards + guard
        start, saved = len(self.lines), self.snapshot()
        self.memo.update(self.branch_memo.get(chain, {}))
        self.guards = chain
        try:
            v = self.emit(e)
        finally:
            self.guards = saved["guards"]
        if not all(_TEMP_LINE.match(line) for line in self.lines[start:]):
            del self.lines[start:]
            self.restore(saved)
            return self.eagerly(e)
        self.guard_lines(start, chain)
        added = {k: val for k, val in self.memo.items() if k not in saved["memo"]}
        self.branch_memo.setdefault(chain, {}).update(added)
        self.restore({k: saved[k] for k in MEMOS if k in saved})
        return v

    def eagerly(self, e: sp.Basic) -> V:
        guards, self.guards = self.guards, None
        try:
            return self.emit(e)
        finally:
            self.guards = guards

    def guard_lines(self, start: int, chain: tuple[str, ...]) -> None:
        """`tN = code` from line `start` on becomes `tN = code if <chain> else None` (once per line)."""
        for n in range(start, len(self.lines)):
            if n not in self.guarded:
                name, code = self.lines[n].split(" = ", 1)
                self.lines[n] = f"{name} = {_paren(code)} if {' and '.join(chain)} else None"
                self.guarded.add(n)

    def snapshot(self) -> dict:
        saved = {k: dict(getattr(self, k)) for k in MEMOS if hasattr(self, k)}
        saved["branch_memo"] = {k: dict(m) for k, m in self.branch_memo.items()}
        return {**saved, "guards": self.guards, "guarded": set(self.guarded)}

    def restore(self, saved: dict) -> None:
        for k, value in saved.items():
            setattr(self, k, value)

    def where(self, cond: V, a: V, b: V) -> V:
        if not cond.is_tensor:
            return self.combine([a, b], lambda c: f"({c[0]} if {cond.code} else {c[1]})") if (
                a.is_tensor or b.is_tensor) else V(f"({a.code} if {cond.code} else {b.code})", kind="num")
        if not a.is_tensor and not b.is_tensor:
            a = self.tmp(f"torch.as_tensor({a.code}, dtype=_dt, device=_dev)", ())
        return self.combine([cond, a, b], lambda c: f"torch.where({c[0]}, {c[1]}, {c[2]})")

    # ---- reductions
    def reduction(self, e: ir._Reduction) -> V:
        op, idx = e.op, [str(i) for i in e.indices]
        if e.cond == sp.false:  # SymPy decided the condition never holds (k < 0): the reduction's identity
            return V(IDENTITY[op], kind="num")
        if ELLIPSIS in e.indices or not idx:
            return self.reduce_all(op, self.emit(e.body))
        scan = self.try_scan(e)
        if scan is not None:
            return scan
        if op == "sum" and e.cond == sp.true:
            fused = (self.try_pick(e.body, idx) or self.try_rank(e.body, e.indices)
                     or self.try_scatter_sum(e.body, idx) or self.try_einsum(e.body, idx))
            if fused is not None:
                return fused
        body = self.emit(e.body)
        pair = self.off_diagonal(e.cond) if op != "mean" else None
        if pair:
            body = self.diagonal_set(body, *pair, FILL[op])
        elif e.cond != sp.true:
            cond = self.emit(e.cond)
            target = self.union(body, cond, V("", tuple(idx)))
            body = self.expand_to(body, target)
            masked = self.where(cond, body, V(FILL[op], kind="num"))
            if op == "mean":
                total = self.tmp(REDUCE_CALL["sum"].format(t=masked.code, d=self.dims(masked, idx)),
                                 tuple(x for x in masked.labels if x not in idx), masked.ell)
                cnt = self.expand_to(cond, target)
                count = self.tmp(f"{cnt.code}.sum(dim={self.dims(cnt, idx)})",
                                 tuple(x for x in cnt.labels if x not in idx))
                return self.combine([total, count], lambda c: f"{c[0]} / {c[1]}")
            body = masked
        body = self.expand_to(body, tuple(idx))
        call = "torch.prod({t}, dim={d})" if op == "prod" else REDUCE_CALL[op]
        if op == "prod" and len(idx) > 1:
            for lab in idx:
                body = self.tmp(call.format(t=body.code, d=self.dims(body, [lab])),
                                tuple(x for x in body.labels if x != lab), body.ell)
            return body
        code = self.call_along(op, body, idx) if op == "logsumexp" else call.format(t=body.code, d=self.dims(body, idx))
        return self.tmp(code, tuple(x for x in body.labels if x not in idx), body.ell)

    def call_along(self, op: str, v: V, labels: list[str]) -> str:
        """The torch call of a softmax-like op over one axis; through codegen._along when axes may follow it."""
        template = NORMALISE_CALL.get(op) or REDUCE_CALL[op]
        d = self.dims(v, labels)
        if op == "normalize" or len(labels) != 1 or (v.labels[-1] == labels[0] and not v.ell):
            return template.format(t=v.code, d=d)
        return f"_along({template.split('(')[0]}, {v.code}, {d})"

    def reduce_all(self, op: str, v: V) -> V:
        if not v.is_tensor:
            return v
        call = {"sum": "{t}.sum()", "mean": "{t}.mean()", "prod": "{t}.prod()", "max": "{t}.amax()",
                "min": "{t}.amin()", "logsumexp": "torch.logsumexp({t}.flatten(), dim=0)",
                "norm": "torch.linalg.vector_norm({t})"}[op]
        return self.tmp(call.format(t=v.code), ())

    def try_einsum(self, body: sp.Basic, idx: list[str]) -> V | None:
        """sum_k of a product whose factors share k → one einsum (matmul), never the outer product."""
        if not isinstance(body, sp.Mul):
            return None
        coeff, rest = body.as_coeff_Mul()
        factors = sp.Mul.make_args(rest)
        mask, carrier = self.off_diagonal_factor(body), None
        if mask is not None:  # [i != j] sets the diagonal of the operand holding i and j (an [i, j] matrix)
            pair = self.off_diagonal(mask.args[0].cond)
            carrier = next((f for f in factors if f is not mask and set(pair) <= {str(x) for x in free_indices(f)}
                            and any(str(x) in idx for x in f.free_symbols)), None)
            if carrier is None:
                return None
            factors = tuple(f for f in factors if f is not mask)
        inner = [f for f in factors if any(str(s) in idx for s in f.free_symbols)]
        outer = [f for f in factors if f not in inner]
        if len(inner) < 2:
            return None
        vals = [self.diagonal_set(self.emit(f), *pair, "0.0") if f is carrier else self.emit(f) for f in inner]
        vals = [self.tmp(f"{v.code}.to(_dt)", v.labels, v.ell) if _positional(f) and v.is_tensor else v
                for f, v in zip(inner, vals, strict=True)]  # einsum takes one dtype, an arange is int64
        if any(not v.is_tensor or v.ell for v in vals) or any(
                lab not in {x for v in vals for x in v.labels} for lab in idx):
            return None
        vals = self.merge_operands(vals)
        extra = sp.Mul(coeff, *outer)
        if len(vals) == 2 and set(vals[0].labels) == set(vals[1].labels):
            # no axis to contract against: einsum would run a batch of dot products through bmm, 2x slower
            # on CPU than the product and its sum (Dice's sum_s(p g) over [4, 4, 512^2]: 11.5 -> 5.7 ms);
            # a scalar factor then scales the (smaller) sum below, not an operand
            vals = [self.combine(vals, lambda c: f"{_paren(c[0])} * {_paren(c[1])}")]
        elif extra != 1 and not self.labels_of(extra):  # scale an operand, not the (larger) product
            scale = self.emit(extra)
            vals[0] = self.combine([vals[0], scale], lambda c: f"{c[0]} * {_paren(c[1])}")
            extra = sp.Integer(1)
        labels = self.union(*vals)
        letters = _letters(labels)
        out = tuple(lab for lab in labels if lab not in idx)
        if len(vals) == 1:
            result = self.tmp(f"{vals[0].code}.sum(dim={self.dims(vals[0], idx)})", out)
            return result if extra == 1 else self.combine([self.emit(extra), result],
                                                          lambda c: f"{_paren(c[0])} * {c[1]}")
        nested = self.nested_operands(vals)
        if nested:
            out = tuple(lab for lab in nested[1].labels if lab not in idx)
        spec = ",".join("".join(letters[x] for x in v.labels) for v in vals) + "->" + "".join(letters[x] for x in out)
        einsum = f"torch.einsum({spec!r}, {', '.join(v.code for v in vals)})"
        result = self.tmp(self.batched_dot(nested, idx, einsum) if nested else einsum, out)
        if extra == 1:
            return result
        ev = self.emit(extra)
        return self.combine([ev, result], lambda c: f"{_paren(c[0])} * {c[1]}")

    @staticmethod
    def nested_operands(vals: list[V]) -> tuple[V, V] | None:
        """(small, large) when two operands' labels nest strictly: a batch of dot products, each element
        of the larger read once, so no matmul reuse for einsum to find."""
        if len(vals) != 2:
            return None
        small, large = sorted(vals, key=lambda v: len(v.labels))
        return (small, large) if set(small.labels) < set(large.labels) else None

    def batched_dot(self, nested: tuple[V, V], idx: list[str], einsum: str) -> str:
        """The einsum eagerly, the product and its sum while torch.compile traces. torch.einsum first sums
        the larger operand over the axes only it has, a small temporary eagerly; Inductor writes that
        partial sum to memory and reduces it again (multilabel_margin_loss, 524288 x 8: a 16 MB
        [n, c] buffer, peak memory above torch's own), where it fuses product and sum into one
        reduction."""
        small, large = nested
        product = f"({self.align(small, large.labels)} * {large.code})"
        return f"{product}.sum(dim={self.dims(large, idx)}) if _compiling() else {einsum}"

    def merge_operands(self, vals: list[V]) -> list[V]:
        """With three or more operands, multiply each one elementwise into another whose labels hold its
        own: torch.einsum without opt_einsum contracts left to right, so 'jd,ij,ij->id' builds [i, j, d]."""
        vals = list(vals)
        while len(vals) >= 3:
            pairs = [(len(v.labels), n, h) for n, v in enumerate(vals) for h, w in enumerate(vals)
                     if h != n and set(v.labels) <= set(w.labels)]
            if not pairs:
                break
            _, n, h = min(pairs)
            vals[h] = self.combine([vals[h], vals[n]], lambda c: f"{c[0]} * {c[1]}")
            del vals[n]
        return vals

    def labels_of(self, e: sp.Basic) -> bool:
        """Whether an expression varies along any axis (free indices or undeclared-shape inputs)."""
        return bool(free_indices(e)) or any(getattr(self.names.get(s.name), "is_tensor", False)
                                             and self.names[s.name].ell for s in e.free_symbols)

    def normaliser(self, e: ir._Normaliser) -> V:
        """One call per distinct (op, tensor, dim): normalize_d(z) read as z[i, d], z[j, d] and z[k, d] is one
        F.normalize, relabelled; besides the time, autograd then sums a single path into z, so terms that
        cancel in the loss (supcon's s[i, j] - logsumexp_k s[i, k]) cancel exactly in the gradient too."""
        lab = str(e.index)
        body = self.expand_to(self.emit(e.body), (lab,))
        code = self.call_along(e.op, body, [lab])
        seen = self.calls.get(code)
        if seen is None:
            seen = self.calls[code] = self.normalised(e.op, code, body, lab)
        return V(seen.code, body.labels, seen.kind, seen.ell)

    def normalised(self, op: str, code: str, body: V, lab: str) -> V:
        """normalize is x / max(|x|, 1e-12) as torch computes it (one rounding), except that an all-zero
        vector is divided by 1: the same value 0, and a gradient that passes the incoming one through
        instead of multiplying it by 1/eps = 1e12 (inf once returned in float16)."""
        if op != "normalize":
            return self.tmp(code, body.labels, body.ell)
        n = self.tmp(f"torch.linalg.vector_norm({body.code}, dim={self.dims(body, [lab])}, keepdim=True)",
                     body.labels, body.ell)
        return self.tmp(f"{body.code} / torch.where({n.code} > 0, {n.code}.clamp_min(1e-12), 1.0)",
                        body.labels, body.ell)

    # ---- indexing
    def indexed(self, e: sp.Indexed) -> V:
        src = self.names[e.base.name]
        return self.access(src, list(e.indices), dense=e.base.name not in self.lone_reads)

    def at(self, e: ir.At) -> V:
        body, axes, values = e.args
        if isinstance(body, ir.Sum_) and body not in self.memo and all(ir.is_index(v) for v in values):
            # s[i, i] of a sum not otherwise computed: the sum over the renamed body (a row-wise dot product),
            # not the whole matrix then its diagonal (a fused info_nce backward ran a GEMM for it)
            return self.emit(rename(body, dict(zip(axes, values, strict=True))))
        src = self.emit(body)
        lookup = dict(zip((str(a) for a in axes), values, strict=True))
        slots = [lookup.get(lab, ir.index_symbol(lab)) for lab in src.labels]
        return self.access(src, slots)

    def access(self, src: V, slots: list[sp.Basic], dense: bool = True) -> V:
        """src read at one slot per axis: a distinct index renames; constants, repeats and gathers index.
        dense: a gather's gradient is a select that fuses with src's other gradient terms (see try_gather)."""
        if all(ir.is_index(s) for s in slots) and len(set(slots)) == len(slots):
            return V(src.code, tuple(str(s) for s in slots), src.kind, src.ell)
        diagonal = self.try_diagonal(src, slots)
        if diagonal is not None:
            return diagonal
        gathers = {k: self.gather_index(s) for k, s in enumerate(slots) if not ir.is_index(s) and not s.is_Integer}
        fast = self.try_select(src, slots, gathers) or self.try_gather(src, slots, gathers, dense)
        if fast is not None:
            return fast
        names = [str(s) for s in slots if ir.is_index(s)]
        shared = {lab for v in gathers.values() for lab in v.labels}
        plain = [k for k, s in enumerate(slots) if ir.is_index(s) and names.count(str(s)) == 1
                 and str(s) not in shared]
        adv = [k for k in range(len(slots)) if k not in plain]
        if adv and adv != list(range(adv[0], adv[-1] + 1)):
            plain, adv = [], list(range(len(slots)))
        if not gathers and len(set(names)) == len(names):
            parts = [str(int(s)) if not ir.is_index(s) else ":" for s in slots]
            return self.tmp(f"{src.code}[{', '.join((['...'] if src.ell else []) + parts)}]",
                            tuple(str(s) for s in slots if ir.is_index(s)), src.ell)
        adv_vals = [gathers.get(k) or (V(str(int(slots[k])), kind="num") if slots[k].is_Integer
                                       else self.emit(slots[k])) for k in adv]
        r_adv = self.union(*adv_vals)
        parts = [":" if k in plain else self.align(adv_vals[adv.index(k)], r_adv) for k in range(len(slots))]
        labels = ([str(slots[k]) for k in plain if k < adv[0]] + list(r_adv)
                  + [str(slots[k]) for k in plain if k > adv[-1]])
        return self.tmp(f"{src.code}[{', '.join((['...'] if src.ell else []) + parts)}]", tuple(labels), src.ell)

    def gather_index(self, s: sp.Basic) -> V:
        if isinstance(s, sp.Indexed) and s.base.name in self.gather_names:
            v = self.emit(s)
            return V(self.gather_names[s.base.name] if v.code == s.base.name else v.code, v.labels)
        v = self.emit(s)
        if v.ell:
            raise KindError(f"gathering with {s} needs its axes declared")
        return v

    def try_diagonal(self, src: V, slots: list[sp.Basic]) -> V | None:
        """One index read on two axes (`s[i, i]`) → `_diagonal`: no arange to gather with, and a compiled
        backward that adds into s's gradient rather than a zero matrix of its own (see codegen._diagonal)."""
        names = [str(s) for s in slots]
        if src.ell or not all(ir.is_index(s) for s in slots) or len(set(names)) != len(names) - 1:
            return None
        twice = next(n for n in names if names.count(n) == 2)
        d1, d2 = (k for k, n in enumerate(names) if n == twice)
        kept = tuple(n for k, n in enumerate(names) if k not in (d1, d2))
        return self.tmp(f"_diagonal({src.code}, {d1}, {d2})", (*kept, twice))

    def try_select(self, src: V, slots: list[sp.Basic], gathers: dict[int, V]) -> V | None:
        """A vector read at an index tensor (weight[y]) → `index_select`: 3 us where advanced indexing
        takes 11 (4096 indices), and its backward is an index_add rather than an index_put."""
        if len(slots) != 1 or len(gathers) != 1 or src.ell or not src.is_tensor or not gathers[0].is_tensor:
            return None
        g = gathers[0]
        if len(g.labels) == 1:
            return self.tmp(f"{src.code}.index_select(0, {g.code})", g.labels)
        return self.tmp(f"{src.code}.index_select(0, {g.code}.reshape(-1)).reshape({g.code}.shape)", g.labels)

    def try_gather(self, src: V, slots: list[sp.Basic], gathers: dict[int, V], dense: bool = True) -> V | None:
        """One gathered axis whose index is laid over the other axes → `Tensor.gather` (cheap backward: a
        scatter_add where advanced indexing is an index_put, and no arange of positions to keep for it). An
        index with one axis of its own (`x[n, target[n, k]]`) gathers along the source's axis, which then
        becomes that axis. `dense` picks `_gather`, whose compiled backward is a select that Inductor fuses
        with src's other gradient terms; an input read by this gather alone (nll's) keeps the scatter, since
        a memset and a scatter beat a select over every element (compiled nll, 4096 x 1024: 1.6 -> 2.3 ms)."""
        if len(gathers) != 1 or src.ell or any(s.is_Integer for s in slots):
            return None
        (p, g), = gathers.items()
        others = [str(s) for k, s in enumerate(slots) if k != p]
        extra = [x for x in g.labels if x not in others]
        if not others or len(set(others)) != len(others) or len(extra) > 1:
            return None
        order = list(others)
        order.insert(p, extra[0] if extra else None)
        perm = [g.labels.index(x) for x in order if x in g.labels]
        base = g.code if perm == sorted(perm) else f"{g.code}.permute({', '.join(map(str, perm))})"
        idx = base if None not in order and len(g.labels) == len(order) else \
            f"{base}[{', '.join(':' if x in g.labels else 'None' for x in order)}]"
        if set(g.labels) != set(order) - {None}:  # a contiguous index gathers faster than a stride-0 view (nll)
            idx += f".expand({', '.join('-1' if x is None or x in g.labels else self.size_var(x) for x in order)})"
        if extra:
            return self.tmp(f"{src.code}.gather({p}, {idx})", tuple(order))
        gather = f"_gather({src.code}, {p}, {idx})" if dense else f"{src.code}.gather({p}, {idx})"
        return self.tmp(f"{gather}.squeeze({p})", tuple(others))

    # ---- calls
    def fncall(self, e: ir.FnCall) -> V:
        f, args, labels = e.args
        vals = [self.user_layout(self.emit(a)) for a in args]
        fn = self.callee(str(f))
        call = f"{fn}({', '.join(vals)})"
        if str(f) in self.names:  # a user's module: handed its own dtype (codegen._fn_dtype), result in ours
            given = self.tmp(f"_fn_dtype({fn}, _odt)", ()).code
            call = f"_as_dtype({fn}({', '.join(f'_as_dtype({v}, {given})' for v in vals)}), _dt)"
        out = self.tmp(call, tuple(str(x) for x in labels), ell=not labels)
        if any(str(x).startswith("*") for x in labels):
            return self.grouped_result(out, fn)
        if labels:
            self.lines.append(f"if {out.code}.dim() != {len(labels)}:")
            self.lines.append(f"    raise self.error(f\"{fn}(...) returned shape {{tuple({out.code}.shape)}}, "
                              f"labelled with {len(labels)} axes ({', '.join(map(str, labels))})\")")
        for pos, lab in enumerate(labels):
            var = self.size_var(str(lab))
            if self.is_bound(str(lab)):
                self.lines.append(f"if {out.code}.shape[{pos}] != {var}:")
                self.lines.append(f"    raise self.error(f\"{fn}(...) axis {pos} ({lab}) has size "
                                  f"{{{out.code}.shape[{pos}]}}, expected {{{var}}}\")")
            else:
                self.lines.append(f"{var} = {out.code}.shape[{pos}]")
        return out

    def grouped_result(self, out: V, fn: str) -> V:
        """A result labelled with a `*group` comes back in the user's layout: check its shape, then flatten."""
        shape = ", ".join(f"*G_{lab.lstrip('*')}" if lab.startswith("*") else self.size_var(lab) for lab in out.labels)
        flat = ", ".join(self.size_var(lab) for lab in out.labels)
        self.lines.append(f"if tuple({out.code}.shape) != ({shape},):")
        self.lines.append(f"    raise self.error(f\"{fn}(...) returned shape {{tuple({out.code}.shape)}}, expected "
                          f"{{({shape},)}} ({', '.join(out.labels)})\")")
        return self.tmp(f"{out.code}.reshape(({flat},))", out.labels)

    def callee(self, name: str) -> str:
        """An `fn` input's variable, or a builtin imported from lossdsl.builtins (docs/builtins.md)."""
        if name in self.names:
            return self.names[name].code
        self.lines.append(f"from lossdsl.builtins import {name} as _builtin_{name}")
        return f"_builtin_{name}"

    def user_layout(self, v: V) -> str:
        """A tensor as its user sees it: axes in declaration order, `*group` axes restored to their shape."""
        if not v.is_tensor or not v.labels:
            return v.code
        labels = tuple(sorted(v.labels, key=self.rank))
        code = self.align(v, labels, v.ell)
        if any(lab.startswith("*") for lab in labels):
            lead = f"*{code}.shape[:{code}.dim() - {len(labels)}], " if v.ell else ""
            dims = ", ".join(f"*G_{lab.lstrip('*')}" if lab.startswith("*") else self.size_var(lab)
                             for lab in labels)
            code = self.tmp(f"{_paren(code)}.reshape({lead}{dims})", ()).code
        return code

    def grad(self, e: ir.Grad) -> V:
        wrt = self.emit(e.args[1])
        if not wrt.is_tensor or not wrt.code.isidentifier():
            raise KindError("grad(e, x) differentiates with respect to an input or intermediate tensor")
        mode = f"_grad_mode_{wrt.code}"  # under no_grad (a validation pass) the penalty is still computed:
        self.lines.append(f"{mode} = torch.is_grad_enabled()")  # grad mode on for it, no graph kept after
        start = len(self.lines)
        self.lines.append(f"if not {wrt.code}.requires_grad:")
        self.lines.append(f"    {wrt.code} = {wrt.code}.detach().requires_grad_(True)")
        out = self.emit(e.args[0])
        total = out.code if not out.is_tensor else f"{out.code}.sum()"
        g = self.tmp(f"torch.autograd.grad({total}, {wrt.code}, create_graph={mode})[0]", wrt.labels, wrt.ell)
        # a block, so that an error inside (the critic's) leaves grad mode as it found it
        self.lines[start:] = ["with torch.enable_grad():", *(f"    {line}" for line in self.lines[start:])]
        return g


def _divisors(e: sp.Basic) -> set[sp.Symbol]:
    """The symbols e divides by: bases of its powers with a negative exponent (SymPy writes 1/p as p**-1)."""
    powers = (x.as_base_exp() for x in sp.preorder_traversal(e) if isinstance(x, sp.Pow))
    return {base for base, exp in powers if exp.is_negative and isinstance(base, sp.Symbol)}


def renaming_key(e: sp.Basic) -> tuple[sp.Basic, list[sp.Symbol]] | None:
    """(e with its free indices numbered in order of first occurrence, those indices) for a reduction, the
    only values worth finding again under other index names; equal keys mean e is the other with its free
    indices renamed. Relations are put in stable.canonical's form, as SymPy puts them inside a Piecewise
    condition: multilabel_margin_loss's `[is_target[j] == 0]` turned the `m <= k` nested in is_target into
    `k >= m`, and is_target, read at c and at j, was computed twice."""
    if not isinstance(e, ir._Reduction):
        return None
    free = free_indices(e)
    if not free or ELLIPSIS in free:
        return None
    numbered = e.xreplace({f: sp.Symbol(f"@{k}") for k, f in enumerate(free)})
    return canonical(numbered), free


def signed_terms(e: sp.Add) -> list[tuple[str, sp.Expr]]:
    """The terms of a sum as (sign, term without its minus sign), positive ones first."""
    terms = sorted(e.args, key=lambda t: t.could_extract_minus_sign())
    return [("-", -t) if t.could_extract_minus_sign() else ("+", t) for t in terms]


def _letters(labels: tuple[str, ...]) -> dict[str, str]:
    """einsum letters that echo the index names where possible (i, j, d rather than a, b, c)."""
    out: dict[str, str] = {}
    for lab in labels:
        first = lab.lstrip("*")[:1]
        pick = first if first.isascii() and first.isalpha() and first not in out.values() else None
        out[lab] = pick or next(c for c in string.ascii_letters if c not in out.values())
    return out


def _positional(e: sp.Basic) -> bool:
    """Whether e reads an index as a number (`k`, `1 + k`): its arange is int64, and with a float the default
    dtype, neither of which einsum mixes with the compute dtype's operands."""
    if isinstance(e, sp.Indexed):
        return False
    if ir.is_index(e):
        return True
    return any(_positional(a) for a in e.args)
