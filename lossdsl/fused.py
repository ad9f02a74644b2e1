"""Fused mode: a loss module whose backward is the compiled symbolic gradient.

The forward runs the ordinary generated module without recording a graph; the autograd.Function saves
only the inputs. Backward runs a second generated module (`GradientBuilder`, the same code generator and
emitter, so forward sub-expressions the gradient needs are recomputed once and shared) that returns the
vector-Jacobian product for each input and learnable parameter that needs one. Temporaries are deleted
after their last use, so backward holds little more than the inputs and the gradients it returns.

`build(loss, module)` is the mode hook of `Loss.compile(mode="fused")`; `build_fused(loss, **params)` is the
same for callers holding a Loss. Losses with `fn` calls or `grad(...)` have no symbolic gradient: their
module is returned unchanged (autograd mode).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types

import sympy as sp
import torch

from . import ir
from .builtins import compiling
from .codegen import _TMP, SourceBuilder, _free_temporaries, class_name, py_names
from .emit import Emitter, V, _paren, signed_terms
from .gradient import (
    BATCH,
    GRAD_OUT,
    LSUM,
    NUMEL,
    WSUM,
    Gradient,
    _larger_than,
    derive,
    effective_reduction,
    merge_sums,
)
from .scope import ELLIPSIS, free_indices, rename
from .stable import with_kernel_functions


class GradEmitter(Emitter):
    """The emitter of backward code: products take their scalar factors first (one full-size temporary,
    not one per factor), and temporaries that are fresh full-size float tensors are recorded so that
    `_in_place` may overwrite them at their last use."""

    fresh: set[str]
    tmp_labels: dict[str, str]
    relabelled: dict[tuple, V]

    def emit(self, e: sp.Basic) -> V:
        """The memo, also up to a renaming of free indices over the same axes. A gradient reads forward
        quantities under other index names than the forward does (d/dk of info_nce sums the queries'
        axis under a bound name): the similarity matrix s[a, j] is s[i, j], computed once, not twice."""
        if e in self.memo or not isinstance(e, (ir._Reduction, ir._Normaliser)) or _larger_than(e, 300):
            return super().emit(e)
        free = [i for i in free_indices(e) if i != ELLIPSIS]
        if not free:
            return super().emit(e)
        to_canon = {str(i): f"@{k}" for k, i in enumerate(free)}
        key = (rename(e, {i: ir.index_symbol(to_canon[str(i)]) for i in free}),
               tuple(self.size_var(str(i)) for i in free))
        hit = self.relabelled.get(key)
        if hit is not None:
            back = {c: name for name, c in to_canon.items()}
            self.memo[e] = dataclasses.replace(hit, labels=tuple(back.get(lab, lab) for lab in hit.labels))
            return self.memo[e]
        v = super().emit(e)
        self.relabelled[key] = dataclasses.replace(v, labels=tuple(to_canon.get(lab, lab) for lab in v.labels))
        return v

    def tmp(self, code: str, labels: tuple[str, ...], ell: bool = False) -> V:
        v = super().tmp(code, labels, ell)
        self.tmp_labels[v.code] = ",".join(("...",) * ell + labels)  # a 0-d scalar is not a broadcast value
        if _FRESH_FLOAT.match(code) and not _NOT_FLOAT.search(code) and not ell:
            self.fresh.add(f"{v.code}:{self.tmp_labels[v.code]}")
        return v

    def mul(self, e: sp.Mul) -> V:
        factors = sp.Mul.make_args(e)
        small = [f for f in factors if self.is_scalar(f)]
        if len(small) < 2 or len(small) == len(factors):
            return super().mul(e)
        scale = self.emit(sp.Mul(*small))
        rest = self.emit(sp.Mul(*(f for f in factors if f not in small)))
        return self.combine([scale, rest], lambda c: f"{_paren(c[0])} * {_paren(c[1])}")

    def sum_of_terms(self, e: sp.Add) -> V:
        """Full-size terms accumulated one line at a time, `tN = tA + tB`, which `_in_place` turns into
        tA.add_(tB) at tA's last use: a + b - c then holds one full-size result, not two."""
        terms = signed_terms(e)
        if len(terms) < 3 or terms[0][0] == "-":
            return super().sum_of_terms(e)
        acc = self.emit(terms[0][1])
        for sign, t in terms[1:]:
            acc = self.combine([acc, self.emit(t)], lambda c, op=sign: f"{c[0]} {op} {c[1]}")
        return acc

    def is_scalar(self, f: sp.Basic) -> bool:
        """No free index and no undeclared-shape value inside: a number or a 0-d tensor."""
        if free_indices(f) or f.atoms(ir.FnCall, ir.Grad):
            return False
        symbols = (x for x in f.atoms(sp.Symbol) if not ir.is_index(x))
        return all(x.name in self.names and not self.names[x.name].ell for x in symbols)


_FRESH_FLOAT = re.compile(r"^(torch\.(?!arange|as_tensor|broadcast_to|full)\w[\w.]*\(|-?\(?t\d+(\[[^\]]*\])? [-+*/] )")
_NOT_FLOAT = re.compile(r" [=!<>]=? |~| & | \| |\.to\(|\.expand\(")
_BINARY = re.compile(r"^(\s+)(t\d+) = (\S+) ([-+*/]) (\S+)$")
_METHOD = {"+": "add_", "-": "sub_", "*": "mul_", "/": "div_"}
_SCATTER_ADD = re.compile(r"^(\s+)(t\d+) = (t\d+)\.scatter_add\(")


def _in_place(body: list[str], fresh: set[str], labels: dict[str, str]) -> list[str]:
    """`tN = tA op B` where tA is a fresh float temporary of tN's shape, read for the last time → tA.op_(B);
    likewise `tA.scatter_add(...)` → `tA.scatter_add_(...)`."""
    uses: dict[str, int] = {}
    for k, line in enumerate(body):
        for name in _TMP.findall(line.split(" = ", 1)[-1] if _BINARY.match(line) else line):
            uses[name] = k
    out = list(body)
    for k, line in enumerate(body):
        m = _SCATTER_ADD.match(line)
        if m and uses.get(m[3]) == k and f"{m[3]}:{labels.get(m[2])}" in fresh:
            out[k] = line.replace(".scatter_add(", ".scatter_add_(", 1)
            fresh.add(f"{m[2]}:{labels.get(m[2])}")
        m = _BINARY.match(line)
        if not m:
            continue
        indent, target, a, op, b = m.groups()
        for mine, other in ((a, b), (b, a)) if op in "+*" else ((a, b),):
            if uses.get(mine) == k and f"{mine}:{labels.get(target)}" in fresh and mine != other:
                out[k] = f"{indent}{target} = {mine}.{_METHOD[op]}({other})"
                fresh.add(f"{target}:{labels.get(target)}")
                break
    return out


class GradientBuilder(SourceBuilder):
    """Generates `forward(inputs..., [grad_out])` returning the gradients, bound like the loss's forward."""

    def __init__(self, loss: ir.LossIR, grads: list[Gradient], vjp: bool) -> None:
        axis_of = dict(loss.axis_of)
        for g in grads:
            axis_of.update(g.axis_of)
        super().__init__(dataclasses.replace(loss, name=f"{loss.name}_grad", expr=sp.Integer(0),
                                             reduce_weight=None, axis_of=axis_of))
        self.expr, self.weight = loss.expr, loss.reduce_weight  # emitted only if a gradient needs them
        self.grads, self.vjp = grads, vjp

    def host_symbols(self) -> set[sp.Basic]:
        """As the forward's, over the gradients too: d/dx of (1 - p)^gamma has (1 - p)^(gamma - 1)."""
        return ir.host_symbols(self.loss, self.expr, *(g.expr for g in self.grads))

    def bind_input(self, i: ir.Input) -> None:
        if not i.is_integral:
            self.lines.append(f"_dtype_{self.py[i.name]} = {self.py[i.name]}.dtype")
        super().bind_input(i)

    def validate_input(self, i: ir.Input) -> None:
        """The forward checked the inputs' ranges; an index is still clamped as the forward's gathers read it."""
        if i.kind != "prob":
            super().validate_input(i)

    def returning(self, value: str) -> str:
        return f"return {value}"

    def rewrite(self, body: list[str]) -> list[str]:
        """In place where a temporary is ours alone; not where the gradient runs autograd itself (grad(...),
        an fn call): a tensor from there may be saved by autograd, and sub_ on it broke wgan_gp's backward."""
        if any(g.expr.atoms(ir.Grad, ir.FnCall) for g in self.grads):
            return _free_temporaries(body)
        return _free_temporaries(_in_place(body, self.em.fresh, self.em.tmp_labels))

    def forward_source(self, floats: list[ir.Param]) -> list[str]:
        body = super().forward_source(floats)
        if self.vjp:
            at = next(k for k, line in enumerate(body) if line.lstrip().startswith("def forward("))
            body[at] = body[at][: -len("):")] + f", {GRAD_OUT}=None):"
        return body

    def finish(self, em: Emitter, result: V, weight: V | None) -> None:
        em.__class__ = GradEmitter  # everything of the backward is emitted from here on
        em.fresh, em.tmp_labels, em.relabelled = set(), {}, {}
        self.em = em
        for g in self.grads:
            if g.via_autograd and self.loss.input(g.wrt):
                self.lines.append(f"{self.py[g.wrt]} = {self.py[g.wrt]}.detach().requires_grad_(True)")
        self.bind_reduction_symbols(em)
        outs = [self.shaped(em, g) for g in self.grads]
        self.lines.append(self.returning(f"({', '.join(outs)},)" if self.vjp else outs[0]))

    def bind_reduction_symbols(self, em: Emitter) -> None:
        w = self.lines.append
        free = self.loss.free
        if self.loss.broadcast:
            w(f"_numel_out = _numel(_bshape) * {' * '.join(self.size_var(f) for f in free) or '1'}")
            em.names[NUMEL.name] = V("_numel_out", kind="py")
        em.names[BATCH.name] = V(self.batch_size(), kind="py")
        used = set().union(*(g.expr.free_symbols for g in self.grads))
        for sym, e, var in ((WSUM, self.weight, "_wsum"), (LSUM, self.expr, "_lsum")):
            if sym in used:
                v = em.emit(e)
                full = v.code if v.is_tensor else f"torch.as_tensor({v.code}, dtype=_dt, device=_dev)"
                w(f"{var} = torch.broadcast_to({full}, _bshape).sum()")
                em.names[sym.name] = V(var, (), "tensor")
        if not self.vjp:
            return
        per_element = self.grads[0].reduction == "none"
        if per_element and free:
            sizes = ", ".join(self.size_var(f) for f in free)
            lead = f"*{GRAD_OUT}.shape[:{GRAD_OUT}.dim() - {len(free)}], " if self.loss.broadcast else ""
            w(f"_g = {GRAD_OUT}.reshape(({lead}{sizes},))")
        else:
            w(f"_g = torch.as_tensor({GRAD_OUT}, dtype=_dt, device=_dev)")
        em.names[GRAD_OUT] = V("_g", tuple(free) if per_element else (), "tensor", self.loss.broadcast and per_element)

    def shaped(self, em: Emitter, g: Gradient) -> str:
        """The gradient laid out like its input: axes in declared order, groups unflattened, same dtype.
        None where it is identically zero (the input only feeds comparisons), as autograd leaves it."""
        if g.expr == 0 and self.vjp:
            return "None"
        v = self.through_autograd(em, g) if g.via_autograd else em.emit(g.expr)
        wrt = self.py[g.wrt]
        name = f"grad_{wrt}"
        decl = self.loss.input(g.wrt) or self.loss.param(g.wrt)
        dtype = f"_dtype_{wrt}" if self.loss.input(g.wrt) else f"self.{wrt}.dtype"
        if decl.axes is None:
            full = v.code if v.is_tensor else f"torch.as_tensor({v.code}, dtype=_dt, device=_dev)"
            shape = f"{wrt}.shape" if self.loss.input(g.wrt) else "()"
            code = f"torch.broadcast_to({full}, _broadcast_shapes({full}.shape, {shape}))" if (
                not self.loss.broadcast) else f"torch.broadcast_to({full}, _bshape)"
            self.lines.append(f"{name} = {code}.sum_to_size({shape}).to({dtype})")
            return name
        axes = tuple(decl.axes)
        v = em.expand_to(v, axes)
        code = em.align(v, axes, v.ell)
        groups = [f"*{self.shape_var(a)}" if a.startswith("*") else self.size_var(a) for a in axes]
        if any(a.startswith("*") for a in axes):
            code = f"{code}.reshape(({', '.join(groups)},))"
        self.lines.append(f"{name} = {code}.to({dtype})")
        return name


    def through_autograd(self, em: Emitter, g: Gradient) -> V:
        """No symbolic form: the reduced loss exactly as the module computes it, then torch.autograd.grad."""
        w = self.lines.append
        free = self.loss.free
        res = em.emit(self.expr)
        out = em.expand_to(res, free) if free or not res.is_tensor else res
        w(f"_out = {em.align(out, free, out.ell)}")
        if self.loss.broadcast:
            w("_out = _out.expand(_broadcast_shapes(_out.shape, _bshape))")
        seed = "_g" if self.vjp else "1.0"
        total = {"none": f"(_out * {seed}).sum()", "sum": f"_out.sum() * {seed}", "mean": f"_out.mean() * {seed}",
                 "batchmean": f"_out.sum() / {self.batch_size()} * {seed}"}.get(g.reduction)
        if total is None:  # weighted
            weight = em.emit(self.weight)
            wfull = weight.code if weight.is_tensor else f"torch.as_tensor({weight.code}, dtype=_dt, device=_dev)"
            total = f"_out.sum() / torch.broadcast_to({em.align(weight, free, weight.ell)}, _out.shape).sum() " \
                    f"* {seed}" if weight.is_tensor else f"_out.sum() / ({wfull} * _out.numel()) * {seed}"
        target = em.emit(g.expr.args[1])
        var = f"_grad_{self.py[g.wrt]}"
        w(f"{var} = torch.autograd.grad({total}, {target.code}, allow_unused=True)[0]")
        w(f"{var} = torch.zeros_like({target.code}) if {var} is None else {var}")
        return V(var, target.labels, "tensor", target.ell)


def gradient_source(loss: ir.LossIR, grads: list[Gradient], reduction: str, vjp: bool) -> str:
    return GradientBuilder(loss, grads, vjp).build()


def differentiable(loss: ir.LossIR) -> list[str]:
    """Inputs and parameters a fused backward returns gradients for (in the module's argument order)."""
    return [i.name for i in loss.inputs if not i.is_integral and i.kind != "fn"] + [
        p.name for p in loss.params if p.type == "learnable"]


def vjp_seed(loss: ir.LossIR, reduction: str) -> sp.Expr:
    if reduction == "none" and loss.free:
        return sp.Indexed(sp.IndexedBase(GRAD_OUT), *(ir.index_symbol(f) for f in loss.free))
    return sp.Symbol(GRAD_OUT, real=True)


def _fixed_cond(cond: sp.Basic, conds: dict, nums: dict) -> sp.Basic:
    """A condition with its parameters fixed: a bool parameter standing alone becomes true or false, and
    inside a comparison its number (SymPy has Ne(false, 0) true: false is not the number 0)."""
    cond = cond.replace(lambda x: isinstance(x, sp.core.relational.Relational), lambda r: r.xreplace(nums))
    return cond.xreplace(conds)


def specialise(loss: ir.LossIR, values: dict[str, int | bool]) -> ir.LossIR:
    """The loss with its int and bool parameters fixed to the module's values. The backward is generated
    per module anyway; fixed, `sigmoid(p) if use_sigmoid else p` loses its dead branch, whose softmax,
    sigmoid and gradient terms the backward would otherwise compute in full and scale by 0 (jaccard_loss
    held 2x the memory of autograd mode)."""
    syms = {s: values[s.name] for s in loss.expr.free_symbols if s.name in values and not ir.is_index(s)}
    if not syms:
        return loss
    conds = {s: sp.true if v else sp.false for s, v in syms.items() if isinstance(v, bool)}
    nums = {s: sp.Integer(int(v)) for s, v in syms.items()}

    def fix(e: sp.Expr | None) -> sp.Expr | None:
        if e is None:
            return None
        e = e.replace(lambda x: isinstance(x, sp.Piecewise),
                      lambda x: sp.Piecewise(*((a.expr, _fixed_cond(a.cond, conds, nums)) for a in x.args)))
        return e.xreplace(nums)

    return dataclasses.replace(loss, expr=fix(loss.expr), reduce_weight=fix(loss.reduce_weight))


@functools.lru_cache(maxsize=128)
def _vjp_class(loss_key: int, names: tuple[str, ...], reduction: str,
               fixed: tuple[tuple[str, int | bool], ...] = (), kernel: int | None = None) -> type[torch.nn.Module]:
    """The backward for the inputs and parameters `names` (Python names, as the module spells them), with
    the int and bool parameters `fixed` (user name, value). kernel: None eagerly; under torch.compile the
    significand bits of the compute dtype (kernel_bits), for the form torch.compile is given: sums over one
    binder merged (gradient.merge_sums) and tanh by its arithmetic form (stable.with_kernel_functions)."""
    loss = specialise(_LOSSES[loss_key], dict(fixed))
    red = effective_reduction(loss, reduction)
    user = {py: name for name, py in py_names(loss).items()}
    grads = [derive(loss, user[n], reduction, seed=vjp_seed(loss, red)) for n in names]
    if kernel:
        grads = [g if g.via_autograd else dataclasses.replace(g, expr=with_kernel_functions(merge_sums(g.expr),
                                                                                            kernel)) for g in grads]
    source = gradient_source(loss, grads, red, vjp=True)
    from .api import _build_class

    return _build_class(source, class_name(f"{loss.name}_grad"))


_LOSSES: dict[int, ir.LossIR] = {}


class _Fused(torch.autograd.Function):
    """forward: the plain module without a graph; backward: the generated vector-Jacobian product.

    While torch.compile traces, the range checks' flag comes out as a second, non-differentiable output
    (see codegen._raise_late): a data-dependent branch inside the Function would make Dynamo give up on
    the whole Function and run it eagerly."""

    @staticmethod
    def forward(ctx, module: torch.nn.Module, *args):
        out = module._lossdsl_eager_forward(*args[:len(module.input_names)])
        save_inputs(ctx, module, args)
        if isinstance(out, tuple):
            ctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(ctx, grad_out, *_flag):
        module, n = ctx.module, len(ctx.module.input_names)
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if a is None else a for a in ctx.plain]
        if not ctx.want:
            return by_position(module, (), ())
        kernel = kernel_bits(args[:n]) if compiling() else None  # the inputs' dtype, as the forward's _dt
        return by_position(module, ctx.want, vjp(module, ctx.want, args[:n], grad_out, kernel))


def save_inputs(ctx, module: torch.nn.Module, args: tuple) -> None:
    """What a backward from the inputs needs on ctx: the module, the gradients wanted, the tensor arguments
    (saved) and the others (kept as they are)."""
    ctx.module, ctx.want = module, _wanted(module, args)
    ctx.plain = [None if isinstance(a, torch.Tensor) else a for a in args]
    ctx.save_for_backward(*(a for a in args if isinstance(a, torch.Tensor)))


def vjp(module: torch.nn.Module, want: tuple[str, ...], inputs, grad_out, kernel: int | None) -> tuple:
    """The gradients named in `want` for this grad_out, by the generated backward, outside autocast (it
    computes in the dtype the forward did)."""
    cls = _backward_class(module, want, kernel)
    device = next((a.device.type for a in inputs if isinstance(a, torch.Tensor)), "cpu")
    with torch.autocast(device_type=device, enabled=False):
        return cls.forward(module, *inputs, grad_out=grad_out)


def by_position(module: torch.nn.Module, want: tuple[str, ...], grads) -> tuple:
    """A backward's return: None for the module, then each input's and learnable parameter's gradient, None
    for those not in `want`."""
    names = [*module.input_names, *module._lossdsl_learnable]
    got = {nm: grads[k] for k, nm in enumerate(want)}  # a strict zip trips Dynamo (2.13)
    return (None, *(got.get(nm) for nm in names))


def unflagged(module: torch.nn.Module, out, inputs) -> torch.Tensor:
    """The loss from a fused forward's output: while compiled it is (value, flag), and a flagged range check
    raises its own message (the branch is a graph break, after the loss and its flags were computed)."""
    if isinstance(out, tuple):
        out, bad = out
        if bad:
            _reraise(module, list(inputs))
    return out


def kernel_bits(values: list) -> int:
    """The significand bits of the dtype a generated module computes these inputs in: 53 when the promoted
    floating dtype (the default dtype when none is floating) is float64, else 24 (float16 and bfloat16 are
    computed in float32)."""
    floats = [v.dtype for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]
    dtype = functools.reduce(torch.promote_types, floats) if floats else torch.get_default_dtype()
    return 53 if dtype == torch.float64 else 24


def _backward_class(module: torch.nn.Module, want: tuple[str, ...], kernel: int | None) -> type[torch.nn.Module]:
    """The generated backward for `want`, from the module's own table when `prepare_backward` filled it:
    Dynamo traces a dict lookup, but not the lru_cache'd SymPy work of building one."""
    key = _backward_key(module, want, kernel)
    cls = getattr(module, "_lossdsl_vjp", {}).get(key)
    return cls if cls is not None else _built_backward(key)


def _backward_key(module: torch.nn.Module, want: tuple[str, ...], kernel: int | None) -> tuple:
    """_vjp_class's arguments: the loss, the gradients wanted, the reduction, the int/bool parameters and,
    when the backward is traced by torch.compile, the compute dtype's significand bits."""
    fixed = tuple((name, getattr(module, py)) for name, py in module._lossdsl_fixed)
    return module._lossdsl_key, want, module.reduction, fixed, kernel


@torch.compiler.disable
def _built_backward(key: tuple) -> type[torch.nn.Module]:
    """_vjp_class where no prepare_backward ran (torch.compile of a fused module by hand): never traced, so
    Dynamo runs that Function eagerly instead of tracing into SymPy."""
    return _vjp_class(*key)


def _wanted(module: torch.nn.Module, values: list) -> tuple[str, ...]:
    """The Python names of the inputs and learnable parameters (in that order, as `values`) whose gradient
    the backward returns: differentiable and requiring grad. From requires_grad, not
    ctx.needs_input_grad, whose length differs while Dynamo traces (torch 2.13)."""
    names = [*module.input_names, *module._lossdsl_learnable]
    return tuple(nm for nm, v, k in zip(names, values, module._lossdsl_kinds, strict=True)
                 if k and isinstance(v, torch.Tensor) and v.requires_grad)


def prepare_backward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Builds, outside any tracing, the backward a call with these arguments will need (mode="compiled")."""
    if not torch.is_grad_enabled():
        return
    inputs = [*args, *(kwargs.get(nm) for nm in module.input_names[len(args):])]
    want = _wanted(module, [*inputs, *(getattr(module, nm) for nm in module._lossdsl_learnable)])
    if want:
        prepare_vjp(module, want, inputs)


@torch.compiler.disable
def prepare_vjp(module: torch.nn.Module, want: tuple[str, ...], inputs) -> None:
    """Builds, outside any tracing, the backward for the gradients `want` of these inputs into the module's
    table, which the traced `vjp` reads. Never traced itself: inside a caller's torch.compile, Dynamo
    traced into SymPy's work here (a graph break runs it eagerly instead)."""
    key = _backward_key(module, want, kernel_bits(list(inputs)))
    table = module.__dict__.setdefault("_lossdsl_vjp", {})
    if key not in table:
        table[key] = _vjp_class(*key)


@torch.compiler.disable
def _reraise(module: torch.nn.Module, inputs: list) -> None:
    """A range check flagged while compiled: the eager forward raises the check's own message."""
    with torch.no_grad():
        module._lossdsl_eager_forward(*inputs)
    raise module.error("an input failed a range check under torch.compile, but not when checked again eagerly")


@functools.lru_cache(maxsize=128)
def _lean_forward(key: int):
    from .api import _build_class

    loss = _LOSSES[key]
    return _build_class(SourceBuilder(loss).build(), class_name(loss.name)).forward


@functools.lru_cache(maxsize=128)
def _fused_class(base: type[torch.nn.Module], key: int) -> type[torch.nn.Module]:
    loss = _LOSSES[key]
    py = py_names(loss)
    learnable = tuple(py[p.name] for p in loss.params if p.type == "learnable")
    diff = {py[n] for n in differentiable(loss)}
    kinds = tuple(nm in diff for nm in (*base.input_names, *learnable))

    def forward(self, *args, **kwargs):
        names = self.input_names
        if len(args) > len(names) or sorted(kwargs) != sorted(names[len(args):]):
            raise TypeError(f"forward({', '.join(names)}) takes {len(names)} inputs, got {len(args)} positional"
                            + (f" and {', '.join(kwargs)} by keyword" if kwargs else ""))
        inputs = [*args, *(kwargs[nm] for nm in names[len(args):])]
        if any(isinstance(getattr(self, nm), torch.nn.parameter.UninitializedParameter) for nm in learnable):
            with torch.no_grad():  # the first call sizes lazily shaped parameters
                base.forward(self, *inputs)
        return unflagged(self, self._lossdsl_function.apply(self, *inputs, *(getattr(self, nm) for nm in learnable)),
                         inputs)

    return type(f"{base.__name__}Fused", (base,), {
        "forward": _own_code(forward, f"forward_{base.__name__}"), "_lossdsl_eager_forward": _lean_forward(key),
        "_lossdsl_learnable": learnable, "_lossdsl_function": _Fused,
        "_lossdsl_kinds": kinds, "_lossdsl_flag_out": True,
        "_lossdsl_fixed": tuple((p.name, py[p.name]) for p in loss.params if p.type in ("int", "bool")),
        "_lossdsl_key": key, "__doc__": base.__doc__, "__reduce_ex__": _reduce_fused})


# Instance attributes that belong to one process: built backward classes, and compiled mode's retargeting.
_PER_PROCESS = ("_lossdsl_vjp", "_lossdsl_key", "_lossdsl_eager_forward")


def _reduce_fused(self: torch.nn.Module, protocol: int) -> tuple:
    """pickle / torch.save of a fused module. Its class is made at run time from the loss's IR, so the pickle
    holds the eager class's source and the IR (SymPy pickles it), and loading builds both again. A compiled
    module is not picklable (its call is a closure over torch.compile's), and raises as before."""
    cls = type(self)
    base = cls.__mro__[1]
    if "__lossdsl_source__" not in base.__dict__ or cls.__dict__.get("_lossdsl_key") is None:
        return object.__reduce_ex__(self, protocol)
    state = {k: v for k, v in self.__getstate__().items() if k not in _PER_PROCESS}
    return _rebuild_fused, (base.__lossdsl_source__, base.__name__, _LOSSES[cls._lossdsl_key]), state


def _rebuild_fused(source: str, name: str, loss_ir: ir.LossIR) -> torch.nn.Module:
    from .api import _rebuild

    module = _rebuild(source, name)
    key = id(loss_ir)
    _LOSSES.setdefault(key, loss_ir)
    module.__class__ = _fused_class(type(module), key)
    return module


def _own_code(fn: types.FunctionType, name: str) -> types.FunctionType:
    """fn with a code object of its own. torch.compile keeps its compiled frames per code object, at most
    recompile_limit (8) of them: every fused class sharing one `forward` code, the ninth loss compiled in a
    process ran eagerly (rmse_loss and log_cosh_loss after eight others, with a warning)."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def retarget(module: torch.nn.Module, loss_ir: ir.LossIR) -> None:
    """Points a fused module's forward and backward at another IR of the same loss (compiled mode's
    specialised parameter values), keeping its class, buffers and state_dict."""
    key = id(loss_ir)
    _LOSSES.setdefault(key, loss_ir)
    module._lossdsl_key = key
    module._lossdsl_eager_forward = types.MethodType(_lean_forward(key), module)


def build(loss, module: torch.nn.Module) -> torch.nn.Module:
    """Turn a compiled (eager) module into its fused form, in place: same parameters, buffers and state."""
    if any(loss.ir.expr.atoms(ir.FnCall, ir.Grad)):
        return module  # no symbolic gradient: autograd mode
    if any(b.requires_grad for b in module.buffers()):
        return module  # a fixed parameter given as a tensor that requires grad: autograd differentiates it too
    key = id(loss.ir)
    _LOSSES.setdefault(key, loss.ir)
    module.__class__ = _fused_class(type(module), key)
    return module


def build_fused(loss, **params) -> torch.nn.Module:
    """`loss.compile(**params, mode="fused")` for a parsed Loss."""
    return build(loss, loss.compile(**params))
