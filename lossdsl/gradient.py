"""Symbolic gradients of a reduced loss, as expressions of the same IR.

Reverse accumulation over the *tensor atoms* of the IR (inputs, reductions, normalisers, reads `At`):
everything between atoms is elementwise SymPy algebra, differentiated by SymPy itself with the atoms
standing in as real symbols (so `where`, Iverson brackets and the IR's functions differentiate readably).
Each atom type has one reverse rule in `RULES` (a table, so a rule can be inspected or replaced): it turns
the adjoint of the atom into the adjoint of its body. An input read `x[n, y[n]]` scatters its adjoint back
to `x[n, c]` through an Iverson one-hot `[c == y[n]]`, which the code generator evaluates as a comparison
with an index range (no scatter). Atoms are visited parents-first, so shared sub-expressions are
differentiated once. Calls of `fn` inputs and `grad(...)` have no symbolic form: a loss holding one that
depends on the input is differentiated by autograd (`Gradient.via_autograd` says so).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from . import ir
from .errors import UnknownNameError, did_you_mean
from .scope import ELLIPSIS, free_indices, fresh, rename

# Symbols standing for run-time quantities of the reduction; the gradient code generator binds them.
NUMEL = sp.Symbol("numel(out)", positive=True)  # elements of a broadcast output
BATCH = sp.Symbol("batch(out)", positive=True)  # leading size of the output: undeclared shape or *group
WSUM = sp.Symbol("sum(weight)", positive=True)  # a broadcast weighted mean's denominator
LSUM = sp.Symbol("sum(loss)", real=True)  # ... and its numerator
GRAD_OUT = "grad_out"  # the incoming gradient (vector-Jacobian product seed)
ONE = sp.Integer(1)
MAX_NODES = 400  # above this many nodes a gradient is not expanded/factored (keeps derivation well < 2 s)


class NeedsAutogradError(Exception):
    """A construct with no symbolic derivative here (fn calls, grad, mean over a broadcast shape)."""


@dataclass
class Gradient:
    """d(reduced loss)/d wrt[axes]: an IR expression whose free indices are wrt's own axes."""

    loss: ir.LossIR
    wrt: str
    expr: sp.Expr
    axes: tuple[str, ...]
    reduction: str
    via_autograd: bool = False
    axis_of: dict[str, str] = field(default_factory=dict)  # the loss's axes plus fresh summation indices

    def head(self) -> str:
        at = f"[{', '.join(self.axes)}]" if self.axes else ""
        return f"d {self.loss.name}/d {self.wrt}{at}"

    def __str__(self) -> str:
        note = "   (through autograd: no symbolic form)" if self.via_autograd else ""
        return f"{self.head()} = {show(self.expr)}{note}"

    def __repr__(self) -> str:
        return f"<Gradient {self.head()}>"

    def latex(self) -> str:
        at = f"_{{{','.join(a.lstrip('*') for a in self.axes)}}}" if self.axes else ""
        return rf"\frac{{\partial L}}{{\partial {self.wrt}{at}}} = {_LatexIR().doprint(self.expr)}"

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex()}$"

    def to_source(self) -> str:
        """Standalone PyTorch source: a module whose forward(inputs...) returns this gradient."""
        from .fused import gradient_source

        return gradient_source(self.loss, [self], self.reduction, vjp=False)


# ---- shifts: m + log(sum exp(b - m)) does not depend on m
class Frozen(sp.Function):
    """A value the gradient treats as a constant (its derivative is 0); `thaw` removes the marker."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.Integer(0)


def freeze_shifts(loss: ir.LossIR) -> ir.LossIR:
    """The loss with the max shift of each spelled-out logsumexp (`stable.logsumexp`) frozen.

    m + log(sum_j exp(b[j] - m)) is logsumexp_j(b) for every m: its derivative in m is 1 - 1 = 0, but only
    after cancellation. Differentiated as written, the shift adds a tie mask [b == m], its count and two
    more [i, j] products to the backward for a sum that is 0 up to rounding (3x slower on info_nce)."""
    expr = loss.expr.replace(lambda e: isinstance(e, sp.Add) and _shift_of(e) is not None,
                             lambda e: e.xreplace({_shift_of(e): Frozen(_shift_of(e))}))
    return loss if expr == loss.expr else dataclasses.replace(loss, expr=expr)


def _shift_of(add: sp.Add) -> sp.Basic | None:
    """The m of `m + log(S)` where every sum in S that holds m is sum(exp(b - m)) (masked or not)."""
    for m in (a for a in add.args if isinstance(a, (ir.Max_, ir.Min_))):
        rest = [a for a in add.args if a is not m]
        logs = [a for a in rest if isinstance(a, sp.log) and a.has(m)]
        if len(logs) == 1 and all(a is logs[0] or not a.has(m) for a in rest) and _shifted_sums(logs[0], m):
            return m
    return None


def _shifted_sums(log: sp.log, m: sp.Basic) -> bool:
    sums = [t for t in log.args[0].atoms(ir.Sum_) if t.has(m)]
    if not sums or not all(_shifted_exp(t.body, m) for t in sums):
        return False
    return not log.args[0].xreplace({t: sp.Dummy() for t in sums}).has(m)


def _shifted_exp(body: sp.Basic, m: sp.Basic) -> bool:
    if not isinstance(body, sp.exp):
        return False
    u = body.args[0]
    pieces = [p.expr for p in u.args] if isinstance(u, sp.Piecewise) else [u]
    return all(p == -sp.oo or not (p + m).has(m) for p in pieces)


def thaw(e: sp.Expr) -> sp.Expr:
    return e.replace(lambda x: isinstance(x, Frozen), lambda x: x.args[0]) if e.has(Frozen) else e


# ---- display
class _StrIR(StrPrinter):
    """SymPy's printer with Iverson brackets, `where` and plain comparisons: how the language spells them."""

    def _print_Piecewise(self, e):
        if len(e.args) == 2 and e.args[0].expr == 1 and e.args[1].expr == 0:
            return f"[{self._print(e.args[0].cond)}]"
        *pieces, last = e.args
        out = self._print(last.expr)
        for p in reversed(pieces):
            out = f"where({self._print(p.cond)}, {self._print(p.expr)}, {out})"
        return out

    def _print_Relational(self, e):
        e = ir.unnegated(e)
        return f"{self._print(e.lhs)} {e.rel_op} {self._print(e.rhs)}"


class _LatexIR(LatexPrinter):
    def _print_Relational(self, e):
        return super()._print_Relational(ir.unnegated(e))

    def _print_Piecewise(self, e):
        if len(e.args) == 2 and e.args[0].expr == 1 and e.args[1].expr == 0:
            return rf"\left[{self._print(e.args[0].cond)}\right]"
        return super()._print_Piecewise(e)


def show(e: sp.Basic) -> str:
    return _StrIR().doprint(e)


# ---- the derivation
class Deriver:
    """Reverse accumulation for one target (an input or a parameter) over a set of seeded roots."""

    def __init__(self, loss: ir.LossIR, wrt: str) -> None:
        self.loss = loss
        self.axis_of = dict(loss.axis_of)
        decl = loss.input(wrt) or loss.param(wrt)
        self.wrt = wrt
        self.axes = tuple(decl.axes) if decl.axes is not None else None
        self.targets = tuple(ir.index_symbol(a) for a in self.axes or ())
        self.adj: dict[sp.Basic, list[sp.Expr]] = {}
        self.out: list[sp.Expr] = []
        self._dep: dict[sp.Basic, bool] = {}

    # -- structure
    def depends(self, e: sp.Basic) -> bool:
        if e not in self._dep:
            if isinstance(e, (sp.Indexed, sp.Symbol)):
                hit = ir.is_tensor(e, self.wrt)
            elif isinstance(e, Frozen):
                hit = False
            else:
                hit = any(self.depends(a) for a in e.args)
            self._dep[e] = hit
        return self._dep[e]

    def atoms(self, e: sp.Basic) -> list[sp.Basic]:
        """The outermost tensor atoms of `e` that depend on the target (elementwise algebra in between)."""
        if not self.depends(e):
            return []
        if is_atom(e):
            return [e]
        found: list[sp.Basic] = []
        for a in e.args:
            for t in self.atoms(a):
                if t not in found:
                    found.append(t)
        return found

    def fresh(self, sym: sp.Symbol) -> sp.Symbol:
        new = fresh(sym)
        self.axis_of[str(new)] = self.axis_of.get(str(sym), str(sym))
        return new

    # -- accumulation
    def push(self, e: sp.Expr, adj: sp.Expr) -> None:
        """Hand the adjoint of elementwise expression `e` to each atom it holds (summing broadcast axes)."""
        atoms = self.atoms(e)
        if not atoms:
            return
        # every tensor value is real: SymPy must not see an opaque x[n] (|u - x[n]| would bring in re(x[n]))
        dummies = {a: sp.Dummy(f"a{k}", real=True) for k, a in enumerate(tensor_atoms(e))}
        flat = e.xreplace(dummies).replace(sp.Abs, RealAbs)
        back = {d: a for a, d in dummies.items()}
        outer = free_indices(e)
        for a in atoms:
            d = dummies[a]
            part = _clean(sp.diff(flat, d)).replace(RealAbs, sp.Abs).xreplace(back)
            if part == 0:
                continue
            # summed: every index the atom lacks, of e (broadcast) and of the adjoint (k of sum_{m <= k}(x[m])
            # is in the reduction's mask only)
            own = set(free_indices(a))
            extra = [i for i in dict.fromkeys([*outer, *free_indices(adj * part)]) if i not in own and i != ELLIPSIS]
            self.add(a, _sum(adj * part, extra))

    def add(self, atom: sp.Basic, contribution: sp.Expr) -> None:
        self.adj.setdefault(atom, []).append(contribution)

    def run(self, roots: list[tuple[sp.Expr, sp.Expr]]) -> sp.Expr:
        for e, seed in roots:
            self.push(e, seed)
        for atom in self.order([a for e, _ in roots for a in self.atoms(e)]):
            adj = sp.Add(*self.adj.pop(atom, []))
            if adj != 0:
                rule_for(atom)(self, atom, adj)
        return sp.Add(*self.out)

    def order(self, starts: list[sp.Basic]) -> list[sp.Basic]:
        """Atoms parents-first: every contribution to an atom arrives before its rule runs."""
        post: list[sp.Basic] = []
        seen: set = set()

        def visit(a: sp.Basic) -> None:
            if a in seen:
                return
            seen.add(a)
            for child in children(self, a):
                visit(child)
            post.append(a)

        for a in starts:
            visit(a)
        return post[::-1]

    # -- scatter: the reverse of reading a tensor at positions
    def scatter(self, adj: sp.Expr, movable: list[sp.Symbol], slots: list[sp.Basic],
                targets: tuple[sp.Symbol, ...]) -> sp.Expr:
        """Adjoint of `t[slots]` (free `movable`) as a function of t's own axes `targets`.

        A slot holding a distinct free index is renamed to its target; any other slot (a gather, a
        constant, a repeated index) becomes the Iverson factor [slot == target]; free indices left over
        are summed.
        """
        mapping: dict[sp.Symbol, sp.Basic] = {}
        conds: list[tuple[sp.Basic, sp.Symbol]] = []
        for s, t in zip(slots, targets, strict=True):
            if ir.is_index(s) and s in movable and s not in mapping and slots.count(s) == 1:
                mapping[s] = t
            else:
                conds.append((s, t))
        rest = [i for i in movable if i not in mapping]
        for i in rest:
            if i in targets:
                mapping[i] = self.fresh(i)
        rest = [mapping.get(i, i) for i in rest]
        mapping = {k: v for k, v in mapping.items() if k != v}
        body = rename(adj, mapping) if mapping else adj
        for s, t in conds:
            body = body * ir.iverson(sp.Eq(t, rename(s, mapping)))
        return _sum(body, rest)


def is_atom(e: sp.Basic) -> bool:
    return isinstance(e, (sp.Indexed, ir._Tensor)) or (isinstance(e, sp.Symbol) and not ir.is_index(e))


def tensor_atoms(e: sp.Basic) -> list[sp.Basic]:
    """The outermost tensor atoms of `e`, whatever they depend on."""
    if is_atom(e):
        return [e]
    return list(dict.fromkeys(t for a in e.args for t in tensor_atoms(a)))


def children(d: Deriver, atom: sp.Basic) -> list[sp.Basic]:
    if isinstance(atom, (ir._Reduction, ir._Normaliser, ir.At)):
        return d.atoms(atom.args[0])
    return []


class RealAbs(sp.Function):
    """|u| differentiated as torch does, sign(u) u', whatever SymPy can prove about u: for |z^1.5| it cannot
    prove z^1.5 real and its d|f| brings in re(f), im(f), which no tensor has."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.sign(self.args[0])


def _sum(body: sp.Expr, indices: list[sp.Symbol]) -> sp.Expr:
    return ir.Sum_(body, sp.Tuple(*indices), sp.true) if indices and body != 0 else body


def _clean(e: sp.Expr) -> sp.Expr:
    """As autograd: steps (sign, Heaviside) have derivative 0; max/min split a tie evenly (torch.maximum).

    SymPy's d max(a, b)/da is Heaviside(a - b) (1/2 at 0, which the emitter would not honour): spelled
    (1 + sign(a - b))/2, which is. relu's own derivative is Heaviside(x, 0), kept."""
    e = e.replace(lambda x: isinstance(x, sp.DiracDelta) or _step_derivative(x), lambda x: sp.Integer(0))
    return e.replace(lambda x: isinstance(x, sp.Heaviside) and x.args[1:] in ((), (sp.S.Half,)),
                     lambda x: (1 + sp.sign(x.args[0])) / 2)


def _step_derivative(e: sp.Basic) -> bool:
    """d sign(u)/dx that SymPy leaves unevaluated (it evaluates it only where it can prove u real: not for
    sign(|v|), whose RealAbs it cannot), which no rule emits: 0, as a step's derivative is everywhere else."""
    return isinstance(e, sp.Derivative) and isinstance(e.expr, (sp.sign, sp.Heaviside))


# ---- reverse rules, one per atom type: (deriver, atom, adjoint of atom) -> pushes to the body
def _leaf(d: Deriver, a: sp.Basic, adj: sp.Expr) -> None:
    if isinstance(a, sp.Indexed):
        d.out.append(d.scatter(adj, free_indices(a), list(a.indices), d.targets))
    else:
        d.out.append(adj)


def _mask(a: ir._Reduction) -> sp.Expr:
    return ir.iverson(a.cond)


def _count(a: ir._Reduction) -> sp.Expr:
    if ELLIPSIS in a.indices:
        raise NeedsAutogradError("mean over a broadcast shape")
    if a.cond == sp.true:
        return sp.Mul(*(ir.Size(i) for i in a.indices))
    return ir.Sum_(_mask(a), a.args[1], sp.true)


def _extreme(d: Deriver, a: ir._Reduction, adj: sp.Expr) -> None:
    """max/min: the adjoint goes to the arg-extremum, split evenly between ties (as torch.amax does)."""
    if a.body.has(sp.Piecewise):  # SymPy would fold the `where` out of [body == max] without end
        hit = (1 + (1 if isinstance(a, ir.Max_) else -1) * sp.sign(a.body - a)) * _mask(a)
    else:
        hit = ir.iverson(sp.And(sp.Eq(a.body, a), a.cond))
    d.push(a.body, adj * hit / ir.Sum_(hit, a.args[1], sp.true))


def _softmax_weights(a: ir._Reduction) -> sp.Expr:
    """d logsumexp_k(b)/d b[k] = softmax_k(b) (spelled as such when it is one plain index)."""
    if a.cond == sp.true and len(a.indices) == 1 and a.indices[0] != ELLIPSIS:
        return ir.Softmax(a.body, a.indices[0])
    return _mask(a) * sp.exp(a.body - a)


def _softmax(d: Deriver, a: ir.Softmax, adj: sp.Expr) -> None:
    d.push(a.body, a * (adj - ir.Sum_(adj * a, sp.Tuple(a.index), sp.true)))


def _log_softmax(d: Deriver, a: ir.LogSoftmax, adj: sp.Expr) -> None:
    soft = ir.Softmax(a.body, a.index)
    d.push(a.body, adj - soft * ir.Sum_(adj, sp.Tuple(a.index), sp.true))


def _norm(d: Deriver, a: ir.Norm_, adj: sp.Expr) -> None:
    """x / |x|, and 0 at a zero vector as torch's vector_norm has it (contrastive and triplet losses of
    identical embeddings: 0/0 otherwise)."""
    d.push(a.body, adj * _mask(a) * a.body / sp.Piecewise((a, a > 0), (1, True)))


def _normalize(d: Deriver, a: ir.Normalize, adj: sp.Expr) -> None:
    """As emitted (emit.normalised): an all-zero vector is divided by 1, so its gradient is the incoming one,
    not 0/0; the rest is the usual (adj - a <adj, a>) / |x|."""
    norm = ir.Norm_(a.body, sp.Tuple(a.index), sp.true)
    guarded = sp.Piecewise((norm, norm > 0), (1, True))
    d.push(a.body, (adj - a * ir.Sum_(adj * a, sp.Tuple(a.index), sp.true)) / guarded)


def _at(d: Deriver, a: ir.At, adj: sp.Expr) -> None:
    body, axes, values = a.args
    kept = [i for i in free_indices(body) if i not in axes]
    movable = [i for i in free_indices(a) if i not in kept]
    d.push(body, d.scatter(adj, movable, list(values), tuple(axes)))


def _autograd(d: Deriver, a: sp.Basic, adj: sp.Expr) -> None:
    raise NeedsAutogradError(type(a).__name__)


Rule = Callable[[Deriver, sp.Basic, sp.Expr], None]
RULES: dict[type, Rule] = {
    ir.Sum_: lambda d, a, adj: d.push(a.body, adj * _mask(a)),
    ir.Mean_: lambda d, a, adj: d.push(a.body, adj * _mask(a) / _count(a)),
    ir.Prod_: lambda d, a, adj: d.push(a.body, adj * _mask(a) * a / a.body),
    ir.Max_: _extreme,
    ir.Min_: _extreme,
    ir.LogSumExp_: lambda d, a, adj: d.push(a.body, adj * _softmax_weights(a)),
    ir.Norm_: _norm,
    ir.Softmax: _softmax,
    ir.LogSoftmax: _log_softmax,
    ir.Normalize: _normalize,
    ir.At: _at,
    ir.FnCall: _autograd,
    ir.Grad: _autograd,
    sp.Indexed: _leaf,
    sp.Symbol: _leaf,
}


def rule_for(atom: sp.Basic) -> Rule:
    for t in type(atom).__mro__:
        if t in RULES:
            return RULES[t]
    raise NeedsAutogradError(type(atom).__name__)


# ---- the reduced loss: which roots, with which seeds
def effective_reduction(loss: ir.LossIR, reduction: str | None) -> str:
    default = loss.reduce_mode if loss.reduce_mode in ("sum", "none", "batchmean") else "mean"
    red = default if reduction is None else reduction
    return "weighted" if red == "mean" and loss.reduce_weight is not None else red


def roots(loss: ir.LossIR, reduction: str, wrt_depends: Callable[[sp.Basic], bool],
          seed: sp.Expr = ONE) -> list[tuple[sp.Expr, sp.Expr]]:
    """The reduced loss as seeded roots: L = scale * sum over the batch of the loss element."""
    free = [ir.index_symbol(f) for f in loss.free]
    if reduction == "none":
        return [(loss.expr, seed)]
    if reduction == "sum":
        return [(loss.expr, seed)]
    if reduction == "batchmean":
        first = next((i for i in loss.inputs if i.kind != "fn"), None)
        lead = first.axes[0] if first is not None and first.axes else None
        size = ir.Size(ir.index_symbol(lead)) if lead and not lead.startswith("*") else (
            BATCH if first is not None else sp.Integer(1))  # a leading *group's first dimension, or the shape's
        return [(loss.expr, seed / size)]
    if reduction == "mean":
        count = NUMEL if loss.broadcast else sp.Mul(*(ir.Size(f) for f in free))
        return [(loss.expr, seed / count)]
    w = loss.reduce_weight
    if loss.broadcast:
        if loss.free:
            raise NeedsAutogradError("a weighted mean over batch axes and a broadcast shape")
        out = [(loss.expr, seed / WSUM)]
        return [*out, (w, -seed * LSUM / WSUM**2)] if wrt_depends(w) else out
    total_w = _sum(w, [f for f in free if f in free_indices(w)]) * sp.Mul(
        *(ir.Size(f) for f in free if f not in free_indices(w)))
    out = [(loss.expr, seed / total_w)]
    if wrt_depends(w):
        total = _sum(loss.expr, [f for f in free if f in free_indices(loss.expr)])
        out.append((w, -seed * total / total_w**2))
    return out


def autograd_total(loss: ir.LossIR, reduction: str, seed: sp.Expr) -> sp.Expr:
    """The reduced loss as one IR scalar, for `grad(...)` when no symbolic form exists."""
    free = [ir.index_symbol(f) for f in loss.free]
    scale = sp.Integer(1)
    if reduction == "mean":
        scale = 1 / (NUMEL if loss.broadcast else sp.Mul(*(ir.Size(f) for f in free)))
    elif reduction == "batchmean":
        scale = 1 / BATCH
    elif reduction == "weighted":
        scale = 1 / ir.Sum_(loss.reduce_weight, sp.Tuple(*free), sp.true)
    idx = [*free, ELLIPSIS] if loss.broadcast else free
    return _sum(loss.expr * seed * scale, idx) if idx else loss.expr * seed * scale


def derive(loss: ir.LossIR, wrt: str, reduction: str | None = None, seed: sp.Expr = ONE,
           simplify_result: bool = True) -> Gradient:
    """d(reduced loss)/d wrt. reduction="none" differentiates the sum (a VJP with `seed`)."""
    _ = loss.expr  # a LossIR from the disk cache decodes its SymPy fields on this first access
    decl = loss.input(wrt) or loss.param(wrt)
    names = [i.name for i in loss.inputs if not i.is_integral and i.kind != "fn"] + [
        p.name for p in loss.params if p.type not in ("int", "bool")]
    if decl is None or wrt not in names:
        raise UnknownNameError(f"loss '{loss.name}' has no real-valued input or parameter '{wrt}'"
                               + did_you_mean(wrt, names))
    red = effective_reduction(loss, reduction)
    d = Deriver(loss, wrt)
    try:
        expr = thaw(canonical_binders(d.run(roots(freeze_shifts(loss), red, d.depends, seed)), d.axis_of))
        expr = canonical_binders(simplify(expr, loss, d.axis_of), d.axis_of) if simplify_result else expr
        via = False
    except NeedsAutogradError:
        target = sp.Indexed(sp.IndexedBase(wrt), *d.targets) if d.axes is not None else sp.Symbol(wrt, real=True)
        expr, via = ir.Grad(autograd_total(loss, red, seed), target), True
    return Gradient(loss, wrt, expr, d.axes or (), red, via, _register_fresh(expr, d.axis_of))


def canonical_binders(e: sp.Expr, axis_of: dict[str, str]) -> sp.Expr:
    """Rename each fresh summation index (`i__7`) after its axis and the binder's height in the tree.

    Each scatter makes fresh indices, so one forward quantity reached along several paths shows up under
    several bound names, and neither SymPy (collecting terms) nor the emitter's memo (CSE) sees that they
    are one: info_nce's backward recomputed its similarity matmul 46 times. Named by height (1 + the
    height of the binders inside), equal sub-expressions get equal names wherever they sit, and a name
    can never capture: binders inside are lower, binders outside higher."""
    memo: dict[sp.Basic, tuple[sp.Basic, int]] = {}

    def walk(node: sp.Basic) -> tuple[sp.Basic, int]:
        if node in memo:
            return memo[node]
        if not node.args or isinstance(node, (sp.Indexed, ir.Size)) or ir.is_index(node):
            return node, 0
        pairs = [walk(a) for a in node.args]
        height = max(h for _, h in pairs)
        args = [a for a, _ in pairs]
        out = node.func(*args) if any(a is not b for a, b in zip(args, node.args, strict=True)) else node
        if isinstance(out, ir._Reduction):
            height += 1
            out = _rename_bound(out, height, axis_of)
        memo[node] = (out, height)
        return memo[node]

    return walk(e)[0]


def _rename_bound(r: ir._Reduction, height: int, axis_of: dict[str, str]) -> ir._Reduction:
    mapping: dict[sp.Symbol, sp.Symbol] = {}
    for pos, b in enumerate(r.indices):
        if b != ELLIPSIS and "__" in b.name:
            base = b.name.split("__")[0]
            axis = axis_of.get(b.name, axis_of.get(base, base))
            new = ir.index_symbol(f"{axis}__g{height}_{pos}")
            axis_of[new.name] = axis
            mapping[b] = new
    if not mapping:
        return r
    idx = sp.Tuple(*(mapping.get(b, b) for b in r.indices))
    return type(r)(rename(r.body, mapping), idx, rename(r.cond, mapping))


def _register_fresh(expr: sp.Expr, axis_of: dict[str, str]) -> dict[str, str]:
    """Indices renamed to avoid capture (`i__3`) range over the axis of the index they were made from."""
    for sym in expr.atoms(sp.Symbol):
        if ir.is_index(sym) and str(sym) not in axis_of and "__" in str(sym):
            base = str(sym).split("__")[0]
            axis_of[str(sym)] = axis_of.get(base, base)
    return axis_of


# ---- simplification: cheap local rules, then keep an expanded/factored form only when it is shorter
def _is_iverson(e: sp.Basic) -> bool:
    return isinstance(e, sp.Piecewise) and len(e.args) == 2 and e.args[0].expr == 1 and e.args[1].expr == 0


def _delta_index(e: sp.Basic, k: sp.Symbol) -> sp.Basic | None:
    """If e is [k == v] (v free of k), return v."""
    if _is_iverson(e) and isinstance(e.args[0].cond, sp.Eq):
        lhs, rhs = e.args[0].cond.args
        for a, b in ((lhs, rhs), (rhs, lhs)):
            if a == k and k not in b.free_symbols:
                return b
    return None


def _sum_delta(loss: ir.LossIR, axis_of: dict[str, str]) -> Callable[[sp.Basic], sp.Basic]:
    """sum_k([k == v] * f) = f[k := v]: v an index of k's axis, or a validated index input (f free of k)."""

    def fold_term(t: sp.Expr, k: sp.Symbol) -> sp.Expr | None:
        factors = sp.Mul.make_args(t)
        for j, f in enumerate(factors):
            v = _delta_index(f, k)
            rest = sp.Mul(*factors[:j], *factors[j + 1:])
            if v is None:
                continue
            if ir.is_index(v) and axis_of.get(str(v), str(v)) == axis_of.get(str(k), str(k)):
                return rename(rest, {k: v})
            if _valid_index(loss, v, k) and k not in free_indices(rest):
                return rest
        return None

    def fold(e: sp.Basic) -> sp.Basic:
        if not (isinstance(e, ir.Sum_) and e.cond == sp.true and len(e.indices) == 1):
            return e
        k = e.indices[0]
        if not _has_delta(e.body, k):
            return e
        done, rest = [], []
        for t in sp.Add.make_args(sp.expand_mul(e.body)):
            r = fold_term(t, k)
            done.append(r) if r is not None else rest.append(t)
        return sp.Add(*done) + _sum(sp.Add(*rest), [k])

    return fold


def _has_delta(body: sp.Expr, k: sp.Symbol) -> bool:
    """A factor [k == v] in the body or in one of its sums' terms (what expanding the body would expose)."""
    factors = sp.Mul.make_args(body)
    inner = [g for f in factors if isinstance(f, sp.Add) for t in f.args for g in sp.Mul.make_args(t)]
    return any(_delta_index(f, k) is not None for f in (*factors, *inner))


def _valid_index(loss: ir.LossIR, v: sp.Basic, k: sp.Symbol) -> bool:
    if not isinstance(v, sp.Indexed):
        return False
    inp = loss.input(v.base.name)
    return (inp is not None and inp.kind == "index" and v.base.name not in loss.sentinels
            and loss.axis_of.get(inp.kind_arg) == loss.axis_of.get(str(k), str(k)))


def _integral_coeff(e: sp.Mul) -> sp.Expr | None:
    """1.0*u -> u, 2.0*u -> 2*u (built as u*2: SymPy's cache treats 1.0 and 1 as the same key)."""
    coeff, rest = e.as_coeff_Mul()
    if not isinstance(coeff, sp.Float) or not float(coeff).is_integer() or abs(coeff) > 2**53:
        return None
    return rest if coeff == 1 else rest * sp.Integer(int(coeff))


def _abs_sign(e: sp.Mul) -> sp.Expr | None:
    """|u| * sign(u) = u."""
    args = list(e.args)
    for s in (a for a in args if isinstance(a, sp.sign)):
        if sp.Abs(s.args[0]) in args:
            args.remove(s)
            args.remove(sp.Abs(s.args[0]))
            return sp.Mul(*args, s.args[0])
    return None


def _same_base(e: sp.Mul) -> sp.Expr | None:
    """b**p / b → b**(p - 1): SymPy's d(b**p)/db is p*b**p/b, which is 0/0 at b = 0 for p = 1 (a relu
    hinge, multi_margin_loss); b**(p - 1) is what torch computes there (0**0 = 1)."""
    bases = [f.as_base_exp()[0] for f in e.args if not f.is_number]
    if len(bases) == len(set(bases)):
        return None
    out = sp.powsimp(e, deep=False, combine="exp")
    return out if out != e else None


def _neg_sigmoid(e: ir.sigmoid) -> sp.Expr | None:
    """sigmoid(-u) = 1 - sigmoid(u): lets the terms of a logistic loss cancel (BCE → sigmoid(x) - y)."""
    return 1 - ir.sigmoid(-e.args[0]) if e.args[0].could_extract_minus_sign() else None


def _sign_squared(e: sp.Pow) -> sp.Expr | None:
    return sp.Integer(1) if isinstance(e.base, sp.sign) and e.exp == 2 else None


Rewrite = Callable[[sp.Basic], "sp.Basic | None"]
LOCAL_RULES: dict[type, list[Rewrite]] = {
    sp.Mul: [_integral_coeff, _abs_sign, _same_base],
    ir.sigmoid: [_neg_sigmoid],
    sp.Pow: [_sign_squared],
}


def rewrite(e: sp.Basic, rules: dict[type, list[Rewrite]]) -> sp.Basic:
    """One bottom-up pass applying `rules` by node type; memoised, so shared sub-expressions cost once."""
    memo: dict[sp.Basic, sp.Basic] = {}

    def walk(node: sp.Basic) -> sp.Basic:
        if node in memo:
            return memo[node]
        out = node
        if node.args and not isinstance(node, (sp.Indexed, ir.Size)):
            args = [walk(a) for a in node.args]
            if any(a is not b for a, b in zip(args, node.args, strict=True)):
                out = node.func(*args)
        for rule in rules.get(type(out), ()):
            new = rule(out)
            if new is not None:
                out = walk(new) if new != out else new
                break
        memo[node] = out
        return out

    return walk(e)


def simplify(e: sp.Expr, loss: ir.LossIR, axis_of: dict[str, str]) -> sp.Expr:
    e = rewrite(e, {**LOCAL_RULES, ir.Sum_: [_sum_delta(loss, axis_of)]})
    return rewrite(_shortest(e), {**LOCAL_RULES, ir.Sum_: [_narrow_sum(_Widths())]})


class _Widths:
    """Number of free indices of IR sub-expressions, memoised (free_indices walks the whole tree)."""

    def __init__(self) -> None:
        self.memo: dict[sp.Basic, int] = {}

    def __call__(self, e: sp.Basic) -> int:
        if e not in self.memo:
            self.memo[e] = len(free_indices(e))
        return self.memo[e]

    def widest_factor(self, terms: tuple[sp.Basic, ...]) -> int:
        return max((self(f) for t in terms for f in sp.Mul.make_args(t)), default=0)


def _common_factors(terms: tuple[sp.Basic, ...]) -> tuple[list[sp.Basic], list[sp.Expr]]:
    """The factors (numbers aside) that every term holds, with multiplicity, and what is left of each term
    (by removing factors, not dividing: SymPy would re-evaluate, and fold Piecewise factors)."""
    common = list(sp.Mul.make_args(terms[0].as_coeff_Mul()[1]))
    for t in terms[1:]:
        mine = list(sp.Mul.make_args(t.as_coeff_Mul()[1]))
        common = [f for f in common if f in mine and not mine.remove(f)]
    rests = []
    for t in terms:
        coeff, mine = t.as_coeff_Mul()
        left = list(sp.Mul.make_args(mine))
        for f in common:
            left.remove(f)
        rests.append(sp.Mul(coeff, *left))
    return common, rests


def _narrow_sum(width: _Widths) -> Rewrite:
    """sum_j(a[i, j]*k[j, d] + b[i, j]*k[j, d]) → sum_j((a + b)*k): one einsum ('ij,jd->id').

    The emitter lowers the sum of one product to an einsum, but evaluates a sum of several products
    elementwise over every index of its terms: an [i, j, d] temporary in info_nce's backward (4 GB and
    30x the time at 2k x 2k x 128). So: factor out what all terms share when the rest stays as narrow as
    its widest factor; else, when the terms together are wider than any factor, one sum per term."""

    def rule(e: sp.Basic) -> sp.Basic | None:
        if not (isinstance(e, ir.Sum_) and e.cond == sp.true and isinstance(e.body, sp.Add)):
            return None
        terms, summed = e.body.args, set(e.indices)
        common, rests = _common_factors(terms)
        if any(summed & set(free_indices(f)) for f in common):
            rest = sp.Add(*rests)
            if width(rest) <= width.widest_factor(sp.Add.make_args(rest)):
                return ir.Sum_(sp.Mul(*common, rest), e.args[1], e.cond)
        if width(e.body) > width.widest_factor(terms):
            return sp.Add(*(ir.Sum_(t, e.args[1], e.cond) for t in terms))
        return None

    return rule


def merge_sums(e: sp.Expr) -> sp.Expr:
    """a * sum_j(f) + b * sum_j(g) → sum_j(a * f + b * g): the gradient's kernel form, one reduction where
    there were several over the same binder.

    Under torch.compile each reduction writes its own output buffer and a pointwise kernel then combines
    them, so the gradient of multilabel_margin_loss (two sums over a class axis, each [n, c]) held two
    [n, c] scratch buffers beside the gradient; merged, the one reduction writes the gradient itself
    (compiled, 524288 x 8, symbolic backward: 69 -> 52 MB). Eagerly the opposite holds: each merged term is
    materialised at full size where a lone product was an einsum (fused mode, same size: 335 -> 470 MB,
    0.98 -> 1.47 s), so only compiled mode's backward uses this form (`fused._vjp_class`). Sums whose
    merged body would be wider than its widest factor stay apart, as `_narrow_sum` would split them again
    (info_nce's matmul-shaped sums)."""
    return rewrite(e, {sp.Add: [_merge_sibling_sums(_Widths())]})


def _merge_sibling_sums(width: _Widths) -> Rewrite:
    def rule(e: sp.Basic) -> sp.Basic | None:
        groups: dict[tuple, list[tuple[sp.Basic, sp.Expr]]] = {}
        for term in e.args:
            factors = sp.Mul.make_args(term)
            sums = [f for f in factors if isinstance(f, ir.Sum_)]
            if len(sums) != 1:
                continue
            outside = sp.Mul(*(f for f in factors if f is not sums[0]))
            if not set(sums[0].indices) & set(free_indices(outside)):
                groups.setdefault((sums[0].args[1], sums[0].cond), []).append((term, outside * sums[0].body))
        for (indices, cond), members in groups.items():
            body = sp.Add(*(b for _, b in members))
            if len(members) > 1 and width(body) <= width.widest_factor(sp.Add.make_args(body)):
                merged = {id(term) for term, _ in members}
                return sp.Add(ir.Sum_(body, indices, cond), *(t for t in e.args if id(t) not in merged))
        return None

    return rule


def _shortest(e: sp.Expr) -> sp.Expr:
    """Try expanding and factoring; keep whichever has fewest operations. Large gradients are left as
    derived: expansion is where simplification time goes, and it rarely shortens them."""
    if _larger_than(e, MAX_NODES):
        return e
    e = sp.powsimp(e)
    expanded = sp.expand_mul(e)
    return min([e, sp.factor_terms(e), expanded, sp.factor_terms(expanded)],
               key=lambda x: (sp.count_ops(x), len(str(x))))


def _larger_than(e: sp.Basic, n: int) -> bool:
    return sum(1 for _ in itertools.islice(sp.preorder_traversal(e), n + 1)) > n


def with_axes(loss: ir.LossIR, axis_of: dict[str, str]) -> ir.LossIR:
    """The loss with fresh summation indices registered (the code generator sizes them by their axis)."""
    return dataclasses.replace(loss, axis_of={**loss.axis_of, **axis_of})
