"""LossIR → standalone PyTorch source: one nn.Module class that imports only torch.

forward() binds sizes from the inputs (checking every axis that must agree), validates values by kind,
flattens `*group` axes into one, evaluates the loss expression via `emit.Emitter`, then restores the groups
and applies the reduction.
"""

from __future__ import annotations

import itertools
import keyword
import re
from collections.abc import Callable, Iterator

import sympy as sp
import torch

from . import ir
from .emit import NODES, Emitter, V, _literal
from .errors import ShapeError

APPLY_SOURCE = [
    "    def _apply(self, fn, recurse=True):",
    '        """.half(), .float() and .to(dtype) convert per-class weights as torch\'s losses do, but move the',
    "        scalar parameters (eps, gamma, margins) without rounding them: torch keeps those as Python floats,",
    '        and eps = 1e-8 in float16 is 0."""',
    "        scalars = {k: b for k, b in self._buffers.items()",
    "                   if b is not None and b.dim() == 0 and b.is_floating_point()}",
    "        out = super()._apply(fn, recurse)",
    "        for k, b in scalars.items():",
    "            self._buffers[k] = b.to(device=self._buffers[k].device)",
    "        return out",
    "",
]

LOAD_SOURCE = [
    "    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):",
    '        """A learnable parameter still lazy (no size given, no call yet) takes the checkpoint\'s shape',
    '        first, as torch\'s lazy modules do: load_state_dict of a trained module into a fresh one."""',
    "        for name, value in self._parameters.items():",
    "            if isinstance(value, torch.nn.parameter.UninitializedParameter) and prefix + name in state_dict:",
    "                value.materialize(state_dict[prefix + name].shape)",
    "        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)",
    "",
]

PRELUDE = '''import torch


def _float_dtype(*tensors):
    """The promoted floating dtype of the inputs (the default dtype when none is floating)."""
    dtype = None
    for t in tensors:
        if t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype if dtype is not None else torch.get_default_dtype()


def _compute_dtype(dtype):
    """float16/bfloat16 inputs are computed in float32 (exp, log and sums overflow or round away in half)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _full_precision(forward):
    """Runs forward with autocast off, so its matmuls and reductions are not cast back to half precision."""
    def wrapper(self, *args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if not torch.is_autocast_enabled(device):
            return forward(self, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return forward(self, *args, **kwargs)
    wrapper.__wrapped__, wrapper.__name__, wrapper.__doc__ = forward, forward.__name__, forward.__doc__
    return wrapper


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _host(module, name, device, dtype):
    """A scalar parameter read as a Python number where it is an exponent or decides a condition alone:
    pow(x, 2.0) is a multiply whose backward is one more, while pow(x, 0-dim tensor) is a generic pow whose
    backward also prepares the exponent's gradient (eager sigmoid focal, 4M: most of its time), and `_where`
    picks a branch without a select. Read from the buffer only when the buffer is another tensor or was
    changed in place, so there is no device sync per call. The buffer itself when it is not 0-dim, requires
    grad, or while torch.compile traces (lossdsl's compiled mode writes values in)."""
    buf = getattr(module, name)
    if buf.dim() != 0 or buf.requires_grad or _compiling():
        return buf.to(device=device, dtype=dtype)
    return _per_version(module, ("host", name), buf, float)


def _param(module, name, device, dtype):
    """A fixed parameter's buffer in the compute dtype and device, converted once per buffer version, not
    per call (a float64 buffer read in float32 is otherwise a cast on every call)."""
    buf = getattr(module, name)
    if buf.dtype == dtype and buf.device == device:
        return buf
    if buf.requires_grad or _compiling():  # a copy in the graph is made afresh for each call
        return buf.to(device=device, dtype=dtype)
    return _per_version(module, ("param", name, dtype, device), buf, lambda b: b.to(device=device, dtype=dtype))


def _per_version(module, key, buf, make):
    """make(buf), remembered until the buffer is replaced or changed in place (its version counter moves).
    The buffer itself is kept, not its id(): a freed buffer's id can come back for its replacement."""
    cache = module.__dict__.setdefault("_lossdsl_per_version", {})
    hit = cache.get(key)
    if hit is None or hit[0] is not buf or hit[1] != buf._version:
        hit = cache[key] = (buf, buf._version, make(buf))
    return hit[2]


_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)


def _where(cond, a, b, dtype, device):
    """where() on a condition of parameters alone (`alpha >= 0`): a Python bool picks a branch as a broadcast
    view, without the full-size select (torch.where over 4M floats: 15-25 ms on CPU, ten multiplies); a
    tensor condition (a parameter given per element) is the usual where."""
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, a, b)
    shape = _broadcast_shapes(*(t.shape for t in (a, b) if isinstance(t, torch.Tensor)))
    return torch.as_tensor(a if cond else b, dtype=dtype, device=device).expand(shape)


def _expm1(x):
    """torch.expm1, except while torch.compile traces for a CPU: Inductor's C++ backend (torch 2.13 and
    earlier) computes expm1 as exp(x) - 1, which has no correct digit left below |x| = 1e-7 in float32
    (pytorch/pytorch#189803). Compiled log_cosh_loss at an error of 1e-4 was then off by 4e-4 relative."""
    if _compiling() and x.device.type == "cpu":
        return _Expm1.apply(x)
    return torch.expm1(x)


class _Expm1(torch.autograd.Function):
    """expm1 from Kahan's quotient (exp(x) - 1) / log(exp(x)) * x below |x| = 1, whose rounding errors in
    exp(x) cancel (within 1.5 ulp of torch.expm1 through Inductor in float32 and float64), and exp(x) - 1
    above, where nothing cancels. Its derivative is exp(x) = expm1(x) + 1."""

    @staticmethod
    def forward(x):
        u = torch.exp(x)
        near = torch.where(u == 1, x, (u - 1) / torch.log(u) * x)
        return torch.where(x.abs() < 1, near, u - 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * torch.exp(x)


def _gather(x, dim, index):
    """x.gather(dim, index) for an index of size 1 along dim. While torch.compile traces, through _Picked,
    whose backward is a select over x's shape instead of autograd's zeros + scatter_add: Inductor fuses the
    select with x's other gradient terms, so the gradient is one full-size buffer, not two (compiled
    multi_margin_loss, 4096 x 1024: 33.6 -> 16.8 MB, torch's own is 16.8)."""
    if _compiling() and x.requires_grad:
        return _Picked.apply(x, dim, index)
    return x.gather(dim, index)


class _Picked(torch.autograd.Function):
    @staticmethod
    def forward(x, dim, index):
        return x.gather(dim, index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dim, index = inputs
        ctx.save_for_backward(index)
        ctx.dim, ctx.size, ctx.rank = dim % x.dim(), x.shape[dim], x.dim()

    @staticmethod
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        shape = [1] * ctx.rank
        shape[ctx.dim] = ctx.size
        picked = torch.arange(ctx.size, device=index.device).view(shape) == index
        return torch.where(picked, grad, 0.0), None, None


def _diagonal(x, d1, d2):
    """x[..., i, ..., i, ...], the diagonal last, as a tensor of its own (never a view a later in-place op
    could reach). While torch.compile traces, through _Diagonal, whose backward is a select over x's shape
    instead of autograd's zeros + index_put: Inductor fuses it with x's other gradient terms (compiled
    info_nce, 2048 x 2048: one similarity-sized buffer fewer, 52.5 -> 35.7 MB; torch's own is 52.5)."""
    if not _compiling():
        return x.diagonal(0, d1, d2).clone()
    return _Diagonal.apply(x, d1, d2) if x.requires_grad else _Diagonal.forward(x, d1, d2)


class _Diagonal(torch.autograd.Function):
    @staticmethod
    def forward(x, d1, d2):
        on = torch.arange(x.shape[d1], device=x.device)  # not x.diagonal: Inductor's lowering of it warns
        # (a FutureWarning from torch._prims_common.check, torch 2.13)
        return x.movedim((d1, d2), (-2, -1))[..., on, on]

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, d1, d2 = inputs
        ctx.lo, ctx.hi = sorted((d1 % x.dim(), d2 % x.dim()))
        ctx.size, ctx.rank = x.shape[d1], x.dim()

    @staticmethod
    def backward(ctx, grad):
        on = _on_diagonal(ctx.rank, (ctx.lo, ctx.size), (ctx.hi, ctx.size), grad.device)
        return torch.where(on, grad.movedim(-1, ctx.lo).unsqueeze(ctx.hi), 0.0), None, None


def _on_diagonal(rank, first, second, device):
    """Whether a position's index along one axis equals its index along another: first and second are
    (axis, size), and the mask broadcasts over a tensor of `rank` axes."""
    rows, cols = [1] * rank, [1] * rank
    rows[first[0]], cols[second[0]] = first[1], second[1]
    return torch.arange(first[1], device=device).view(rows) == torch.arange(second[1], device=device).view(cols)


def _diagonal_set(x, value, d1, d2):
    """x with its (d1, d2) diagonal set to value (the [i != j] masks): a copy and N writes, not a dense
    compare and select. While torch.compile traces, the select, which Inductor fuses: its diagonal_scatter
    gradient is silently wrong (pytorch/pytorch#183602, fixed after 2.13)."""
    if not _compiling():
        return torch.diagonal_scatter(x, torch.full_like(x.diagonal(0, d1, d2), value), 0, d1, d2)
    return torch.where(_on_diagonal(x.dim(), (d1, x.shape[d1]), (d2, x.shape[d2]), x.device), value, x)


def _broadcast_shapes(*shapes):
    """torch.broadcast_shapes, with equal shapes (the common case) answered without it: it is Python code
    costing ~19 us a call on CPU, a fifth of a small loss's forward."""
    if all(s == shapes[0] for s in shapes[1:]):
        return shapes[0]
    return torch.broadcast_shapes(*shapes)


def _as_dtype(x, dtype):
    """A floating tensor in dtype, anything else as it is: what a user's fn input is handed (see _fn_dtype)
    and what it returns (back in the compute dtype)."""
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _fn_dtype(fn, dtype):
    """The dtype a user's fn input computes in: a module's first floating parameter's, else the inputs' own
    (dtype). Not the compute dtype: bfloat16 inputs are computed in float32, which a bfloat16 critic cannot
    multiply, while a float32 critic takes float32 whatever the inputs were."""
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():
            if p.is_floating_point():
                return p.dtype
    return dtype


def _param_shape(module, name, value, shape):
    """A parameter given as a tensor broadcasts to the inputs' shape without enlarging it, as torch's weights
    must: a bigger one would give the loss more elements (another mean, a bigger 'none' output)."""
    if value.dim() == 0 or value.shape == shape:
        return
    try:
        fits = torch.broadcast_shapes(value.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise module.error(f"parameter '{name}' has shape {tuple(value.shape)}, which does not broadcast to the "
                           f"inputs' shape {tuple(shape)}")


def _along(fn, x, dim):
    """fn(x, dim=dim) computed along the last dim when every dim after `dim` has size 1 (a *group of rank 0):
    torch's softmax kernels along an inner dim are scalar code (log_softmax of 4096 x 1024 x 1, forward +
    backward: 103 ms; along the last dim: 9.6 ms)."""
    d = dim % x.dim()
    if d == x.dim() - 1 or any(s != 1 for s in x.shape[d + 1:]):
        return fn(x, dim=dim)
    out = fn(x.movedim(d, -1), dim=-1)
    return out.movedim(-1, d) if out.dim() == x.dim() else out


def _outside(x, lo, hi, hi_open=False):
    """Whether a value of x lies outside [lo, hi] (or [lo, hi)); NaN counts as inside, as in plain
    comparisons. One aminmax pass and one sync decide the common case: the two comparisons, the or and the
    any it replaces read and write as much as a whole segmentation loss (Dice 4M f32: 6.3 -> 4.5 ms)."""
    if x.numel() == 0:
        return False
    if _compiling():  # the exact flag: aminmax is NaN if any value is, which would hide the others
        return ((x < lo) | ((x >= hi) if hi_open else (x > hi))).any()
    low, high = torch.aminmax(x)
    low, high = low.item(), high.item()  # one device sync: high is ready when low is
    if low >= lo and (high < hi if hi_open else high <= hi):
        return False
    return bool(((x < lo) | ((x >= hi) if hi_open else (x > hi))).any())


def _stable_rank(v, descending):
    """For each element of v, how many elements a stable sort (ascending or descending) puts before it:
    sum_m([v[m] < v[n]] + [m < n and v[m] == v[n]]) in O(n log n) instead of an [n, n] comparison. NaN
    compares false with everything there: it ranks 0 and counts for no other (sorted last, then zeroed)."""
    order = torch.argsort(-v if descending else v, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(v.shape[0], device=v.device))
    return torch.where(torch.isnan(v), 0, rank).to(v.dtype)


def _prefix_all(x, dim):
    """torch.cumprod of a 0/1 float tensor along dim: 1 up to its first 0. While torch.compile traces, each
    position compared with the first 0's, found by an amin: a fused reduction where Inductor runs cumprod as
    a library call over materialised buffers. Positions are floats of x's dtype (exact below 2^24): as
    int64 or int32 they made Inductor's CPU kernel of multilabel margin 1.4-2.2x slower."""
    n = x.shape[dim]
    if not _compiling() or n > 2 ** 24:
        return torch.cumprod(x, dim)
    pos = torch.arange(n, dtype=x.dtype, device=x.device).view(-1, *[1] * (x.dim() - dim % x.dim() - 1))
    first = torch.where(x != 0, n, pos).amin(dim, keepdim=True)
    return (pos < first).to(x.dtype)


_DENSE_SLOTS = 16  # _scatter_sum: index lengths up to this are summed densely under torch.compile


def _scatter_sum(size, dim, index, src):
    """zeros(size).scatter_add_(dim, index, src). While torch.compile traces and the index is short along
    dim, the dense sum over its slots of src where index names the class: Inductor runs scatter_add as a
    library call on a materialised int64 index, src and zeros, three buffers where the dense sum writes
    only its result (multilabel margin's listed targets). The dense work is size[dim] per slot, hence the
    bound on the slots."""
    if not _compiling() or index.shape[dim] > _DENSE_SLOTS:
        return torch.zeros(size, dtype=src.dtype, device=src.device).scatter_add_(dim, index, src)
    dim = dim % src.dim()
    classes = torch.arange(size[dim], device=index.device).view(-1, *[1] * (src.dim() - dim))
    return torch.where(index.unsqueeze(dim) == classes, src.unsqueeze(dim), 0).sum(dim + 1)


def _check_range(module, late, x, lo, hi, message):
    """A value range check (`p: prob`) that raises at once in eager code but, while torch.compile traces,
    only records its flag in `late` for _raise_late at the return: the flag's reduction then fuses into the
    loss's own kernel instead of being a graph of its own ending in a graph break (compiled Dice, 4M f32:
    three graphs per step became two). Nothing reads the loss before the return, so raising there is as
    good as raising here."""
    flag = _outside(x, lo, hi)
    if isinstance(flag, torch.Tensor):  # while tracing: decided at the return
        late.append((flag, message))
    elif flag:
        raise module.error(message)


def _raise_late(module, late, value):
    """value, once no check recorded by _check_range or _checked_index has flagged. Fused mode's
    autograd.Function cannot branch on a tensor while traced: it takes (value, flag) and its caller raises."""
    if late:
        bad = torch.stack([flag for flag, _ in late]).any()
        if getattr(module, "_lossdsl_flag_out", False):
            return value, bad
        if bad:  # while tracing, the graph breaks here, after the loss and its flags were computed together
            message = next(message for flag, message in late if flag)
            raise module.error(message if isinstance(message, str) else _index_message(*message))
    return value


def _checked_index(module, late, x, size, sentinels, name, axis):
    """x as the gathers read it: its values checked to lie in [0, size) unless they are a sentinel
    (ignore_index), which is clamped into range. Eagerly, one aminmax decides the common case and a bad
    index raises at once. While torch.compile traces, the check is a flag for _raise_late and the index is
    always clamped, so no gather reads out of range before the raise: the check fuses into the loss kernel
    instead of two graphs and two graph breaks of its own (multilabel margin, 4M, with -1 padding: 29 ms
    of a 283 ms step). With validate=False a sentinel is clamped and any other index is torch's to check."""
    if not module.validate:
        if not sentinels:
            return x
    elif _compiling():
        late.append((_bad_index(x, size, sentinels).any(), (x, size, sentinels, name, axis)))
    elif not _outside(x, 0, size, hi_open=True):
        return x
    elif _bad_index(x, size, sentinels).any():
        raise module.error(_index_message(x, size, sentinels, name, axis))
    return x.clamp(0, max(size - 1, 0))


def _bad_index(x, size, sentinels):
    bad = (x < 0) | (x >= size)
    for value in sentinels:
        bad = bad & (x != value)
    return bad


def _index_message(x, size, sentinels, name, axis):
    first = int(x[_bad_index(x, size, sentinels)][0])
    return f"input '{name}' holds class index {first} outside [0, {size}) (axis {axis})"
'''


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"_+", name) if part) or "Loss"


# Names the generated module defines or calls itself. A user's name that is one of them (or a keyword, or
# starts with "_") gets a trailing "_" in the code, never in messages: a parameter `lambda` is `lambda_`.
GENERATED = re.compile(r"t\d+|[NSG]_\w*|\w*_ix|self|torch|out|wsum|empty|reduction|validate|error|param_error|"
                       r"input_names|default_reduction")
CALLED = frozenset({"abs", "all", "any", "bool", "dict", "float", "getattr", "int", "isinstance", "len", "list", "max",
                    "min", "next", "range", "sum", "super", "tuple", "zip", "TypeError", "ValueError", "RuntimeError"})
# a parameter becomes self.<name>: not one nn.Module or the generated class (or lossdsl.compile) sets itself
MODULE_ATTRIBUTES = frozenset(dir(torch.nn.Module)) | {"training", "loss", "error", "param_error", "input_names",
                                                       "default_reduction", "reduction", "validate"}


def _free(name: str, attribute: bool) -> bool:
    return (is_safe_identifier(name) and not name.startswith("_") and not GENERATED.fullmatch(name)
            and name not in CALLED and not (attribute and name in MODULE_ATTRIBUTES))


def py_names(loss: ir.LossIR) -> dict[str, str]:
    """User name -> the Python identifier the generated code uses, for inputs, parameters and size keywords."""
    out: dict[str, str] = {}
    names = [(i.name, False) for i in loss.inputs] + [(p.name, True) for p in loss.params]
    names += [(a, False) for a in SourceBuilder(loss, named=False).size_keywords()]
    for name, attribute in names:
        if name not in out:
            out[name] = next(c for c in _candidates(name) if _free(c, attribute) and c not in out.values())
    return out


def _candidates(name: str) -> Iterator[str]:
    """name, name_, u_name, u1_name, ...: "_..." and the patterns of GENERATED are the generated code's own."""
    base = "u" + name if name.startswith("_") else name
    yield from (base, base + "_", "u_" + base)
    yield from (f"u{k}_{base}" for k in itertools.count(1))


class SourceBuilder:
    """Builds the module class for one LossIR."""

    def __init__(self, loss: ir.LossIR, named: bool = True) -> None:
        self.loss = loss
        self.py = py_names(loss) if named else {}
        self.lines: list[str] = []
        self.bound: dict[str, tuple[str, int]] = {}  # axis class -> (tensor, dim) it was first read from
        self.order = list(loss.axis_of)
        self.loose = False  # whether forward() has _bshape, the broadcast shape of the inputs without axes

    # ---- naming
    def canon(self, label: str) -> str:
        return self.loss.axis_of.get(label, label)

    def size_var(self, label: str) -> str:
        """The Python int holding an axis size; a `*group` counts as one flattened axis."""
        c = self.canon(label)
        return ("S_" if c.startswith("*") else "N_") + re.sub(r"\W", "_", c.lstrip("*"))

    def shape_var(self, label: str) -> str:
        """The tuple holding a `*group`'s own shape, restored on output."""
        return "G_" + re.sub(r"\W", "_", self.canon(label).lstrip("*"))

    def axes_needed(self) -> list[str]:
        return sorted({self.canon(a) for a in self.loss.axis_of}, key=self.order.index)

    def unbound_axes(self) -> list[str]:
        """Axes no input fixes: their sizes come from shaped parameters or keywords."""
        fixed = {self.canon(a) for i in self.loss.inputs if i.axes for a in i.axes}
        fixed |= {self.canon(str(lab)) for call in self.loss.expr.atoms(ir.FnCall) for lab in call.args[2]}
        return [a for a in self.axes_needed() if a not in fixed and not a.startswith("*")]

    def size_keywords(self) -> list[str]:
        """Unbound axes, plus axes of learnable parameters (so they can be created before the first call)."""
        learn = {self.canon(a) for p in self.loss.params if p.type == "learnable" for a in p.axes or ()}
        return [a for a in self.axes_needed() if a in learn or a in self.unbound_axes()]

    # ---- source
    def build(self) -> str:
        loss = self.loss
        cls = class_name(loss.name)
        floats = [p for p in loss.params if p.type not in ("int", "bool")]
        out = [PRELUDE, "", f"class {cls}(torch.nn.Module):"]
        if loss.doc:
            out.append(f"    {loss.doc.strip()!r}")
        out += ["", "    error = ValueError  # lossdsl substitutes lossdsl.InputError", "    param_error = ValueError",
                f"    input_names = {tuple(self.py[i.name] for i in loss.inputs)!r}",
                f"    default_reduction = {self.default_reduction()!r}", ""]
        out += self.init_source(floats)
        if any(p.type != "learnable" for p in floats):
            out += APPLY_SOURCE
        if any(p.type == "learnable" and p.axes for p in floats):
            out += LOAD_SOURCE
        out += self.forward_source(floats)
        used = "\n".join(out)
        nodes = [node_class(node) for node, spec in NODES.items() if f"{spec.name}.apply(" in used]
        return "\n".join([out[0], *nodes, *([""] if nodes else []), *out[1:]]) + "\n"

    def default_reduction(self) -> str:
        mode = self.loss.reduce_mode
        return mode if mode in ("sum", "none", "batchmean") else "mean"

    def init_source(self, floats: list[ir.Param]) -> list[str]:
        loss = self.loss
        args = ["self"]
        for p in loss.params:
            args.append(self.py[p.name] if p.default is None else f"{self.py[p.name]}={_default_literal(p)}")
        args.append("*")
        args.append("reduction=None")
        args += [f"{self.py[a]}=None" for a in self.size_keywords()]
        args.append("validate=True")
        lines = [f"    def __init__({', '.join(args)}):", "        super().__init__()",
                 "        reduction = self.default_reduction if reduction is None else reduction",
                 "        if reduction not in ('mean', 'sum', 'none', 'batchmean'):",
                 "            raise self.param_error(f\"reduction must be 'mean', 'sum', 'none' or 'batchmean', "
                 "got {reduction!r}\")",
                 "        self.reduction = reduction", "        self.validate = validate"]
        for a in self.size_keywords():
            lines.append(f"        self.size_{a} = {self.py[a]}")
        for p in loss.params:
            lines += self.param_init(p)
        return [*lines, ""]

    def param_init(self, p: ir.Param) -> list[str]:
        n = self.py[p.name]
        if p.type == "int":
            return [f"        self.{n} = int({n})"]
        if p.type == "bool":
            return [f"        self.{n} = bool({n})"]
        if p.type == "learnable":
            shape = [f"self.size_{self.canon(a)}" for a in p.axes or ()]
            if not shape:
                return [f"        self.{n} = torch.nn.Parameter(torch.as_tensor({n}, "
                        "dtype=torch.get_default_dtype()).clone())"]
            known = " and ".join(f"{s} is not None" for s in shape)
            return [f"        if isinstance({n}, torch.Tensor) and {n}.dim() == {len(shape)}:",
                    f"            self.{n} = torch.nn.Parameter({n}.detach().clone())",
                    f"        elif {known}:",
                    f"            self.{n} = torch.nn.Parameter(torch.full(({', '.join(shape)},), "
                    f"float({n})))",
                    "        else:  # materialised on the first call, once the input sizes are known",
                    f"            self.{n} = torch.nn.parameter.UninitializedParameter()",
                    f"            self._init_{n} = float({n})"]
        return [f"        self.register_buffer({n!r}, torch.as_tensor({n}, dtype=torch.float64))"]

    def gather_names(self) -> dict[str, str]:
        """Index input -> the tensor that gathers with it: `<name>_ix`, what _checked_index returns (the input
        itself when checked in range, else clamped); an index of undeclared shape is read as it is."""
        return {i.name: f"{self.py[i.name]}_ix" if i.axes is not None else self.py[i.name]
                for i in self.loss.inputs if i.kind == "index"}

    def lone_reads(self) -> frozenset[str]:
        """Inputs the loss reads at one subscript and nowhere else (nll's input[n, target[n]]): their gathers
        keep torch's scatter backward, there being no other gradient term for a dense select to fuse with."""
        exprs = [e for e in (self.loss.expr, self.loss.reduce_weight) if e is not None]
        reads: dict[str, set[sp.Indexed]] = {}
        for e in exprs:
            for a in e.atoms(sp.Indexed):
                reads.setdefault(a.base.name, set()).add(a)
        return frozenset(name for name, found in reads.items() if len(found) == 1)

    def forward_source(self, floats: list[ir.Param]) -> list[str]:
        loss = self.loss
        tensor_inputs = [i for i in loss.inputs if i.kind != "fn"]
        sig = ", ".join(["self", *(self.py[i.name] for i in loss.inputs)])
        self.lines = []
        w = self.lines.append
        for i in tensor_inputs:
            n = self.py[i.name]
            w(f"if not isinstance({n}, torch.Tensor):")
            w("    try:")
            w(f"        {n} = torch.as_tensor({n})")
            w("    except (TypeError, ValueError, RuntimeError) as err:")
            w(f"        raise self.error(f\"input '{i.name}' is not a tensor and cannot become one: {{err}}\") "
              "from None")
            w(f"if {n}.is_complex():  # casting to a real dtype would drop the imaginary part")
            w(f"    raise self.error(f\"input '{i.name}' is complex ({{{n}.dtype}}); losses take real tensors\")")
        real = [self.py[i.name] for i in tensor_inputs if not i.is_integral]
        w(f"_odt = _float_dtype({', '.join(real)})" if real else "_odt = torch.get_default_dtype()")
        w("_dt = _compute_dtype(_odt)  # the dtype computed in; the result is returned in _odt")
        w(f"_dev = {self.py[tensor_inputs[0].name]}.device" if tensor_inputs else "_dev = torch.device('cpu')")
        for i in tensor_inputs:
            self.bind_input(i)
        self.bind_broadcast(tensor_inputs)
        for a in self.unbound_axes():
            self.bind_unbound(a)
        if self.late_checks():
            w("_late = []  # checks deferred to the return while torch.compile traces (_check_range, _checked_index)")
        for i in tensor_inputs:
            self.validate_input(i)
        names = self.bind_names(floats)
        known = set(self.bound) | set(self.size_keywords())
        em = Emitter(self.order, self.size_var, names, self.gather_names(), self.lines,
                     lambda label: self.canon(label) in known)
        em.host_params = self.bind_host_params()
        em.lone_reads = self.lone_reads()
        result = em.emit(loss.expr)
        weight = em.emit(loss.reduce_weight) if loss.reduce_weight is not None else None
        self.finish(em, result, weight)
        body = self.rewrite([f"        {line}" for line in self.lines])
        return ["    @_full_precision", f"    def forward({sig}):", *body]

    def late_checks(self) -> bool:
        return any(i.kind == "prob" or (i.kind == "index" and i.axes is not None) for i in self.loss.inputs)

    def returning(self, value: str) -> str:
        """The return statement: through _raise_late where range checks may be deferred."""
        return f"return _raise_late(self, _late, {value})" if self.late_checks() else f"return {value}"

    def rewrite(self, body: list[str]) -> list[str]:
        """The forward's statements as emitted, then each temporary deleted after its last use: no-grad
        calls (and temporaries autograd does not save) then hold only what is still needed."""
        return _free_temporaries(body)

    def bind_input(self, i: ir.Input) -> None:
        w = self.lines.append
        n = self.py[i.name]
        if not i.is_integral:  # the checks cost less than a call that returns its input (cold: 5-10 us)
            w(f"if {n}.dtype != _dt:")
            w(f"    {n} = {n}.to(_dt)")
        elif i.kind == "index":
            w(f"if {n}.is_floating_point() or {n}.is_complex():")
            w(f"    raise self.error(f\"input '{i.name}' holds class indices and must be an integer tensor, "
              f"got {{{n}.dtype}}\")")
            w(f"if {n}.dtype not in (torch.int64, torch.int32):  # uint8 / int16 / bool labels: gather takes int32/64")
            w(f"    {n} = {n}.long()")
        if i.axes is None:
            return
        groups = [a for a in i.axes if a.startswith("*")]
        if len(groups) > 1:
            raise ShapeError(f"input '{i.name}' has more than one *group; declare at most one")
        fixed = len(i.axes) - len(groups)
        desc = ", ".join(i.axes)
        cmp = ">=" if groups else "=="
        w(f"if not {n}.dim() {cmp} {fixed}:")
        need = f"at least {fixed}" if groups else str(fixed)
        noun = "dimension" if fixed == 1 else "dimensions"
        w(f"    raise self.error(f\"input '{i.name}' needs {need} {noun} ({desc}), got {{{n}.dim()}} "
          f"(shape {{tuple({n}.shape)}})\")")
        g_at = i.axes.index(groups[0]) if groups else None
        shape_expr = []
        for pos, a in enumerate(i.axes):
            if g_at is not None and pos > g_at:
                dim = f"{n}.dim() - {len(i.axes) - pos}"
                dim_text = f"{pos - len(i.axes)}"
            else:
                dim, dim_text = str(pos), str(pos)
            var = self.size_var(a)
            if a.startswith("*"):
                end = f"{n}.dim() - {len(i.axes) - pos - 1}"
                read = f"tuple({n}.shape[{pos}:{end}])"
                var = self.shape_var(a)
                shape_expr.append(self.size_var(a))
            else:
                read = f"{n}.shape[{dim}]"
                shape_expr.append(var)
            self.bind_size(a, var, read, i.name, dim_text)
        if groups:
            w(f"if {n}.dim() != {len(shape_expr)}:")
            w(f"    {n} = {n}.reshape({', '.join(shape_expr)})")

    def bind_size(self, axis: str, var: str, read: str, owner: str, dim: str) -> None:
        w = self.lines.append
        canon = self.canon(axis)
        what = "axes *" + axis.lstrip("*") if axis.startswith("*") else f"axis {dim} ({axis})"
        if canon not in self.bound:
            self.bound[canon] = (owner, dim)
            w(f"{var} = {read}")
            if axis.startswith("*"):
                w(f"{self.size_var(axis)} = _numel({var})")
            return
        first, _ = self.bound[canon]
        w(f"if {read} != {var}:")
        w(f"    raise self.error(f\"input '{owner}' {what} has size {{{read}}} but '{first}' fixes it to {{{var}}}\")")

    def bind_broadcast(self, inputs: list[ir.Input]) -> None:
        loose = [i.name for i in inputs if i.axes is None]
        self.loose = bool(loose)
        w = self.lines.append
        if not loose:
            if self.loss.broadcast:  # an fn call's unlabelled result broadcasts, with no loose input to size it
                w("_bshape = ()")
            return
        w("try:")
        w(f"    _bshape = _broadcast_shapes({', '.join(f'{self.py[n]}.shape' for n in loose)})")
        w("except RuntimeError:")
        shapes = ", ".join(f"{n} {{tuple({self.py[n]}.shape)}}" for n in loose)
        w(f"    raise self.error(f\"inputs do not broadcast together: {shapes}\") from None")

    def bind_unbound(self, axis: str) -> None:
        """An axis fixed by a shaped parameter or a keyword (center loss's k)."""
        w = self.lines.append
        var = self.size_var(axis)
        owners = [p for p in self.loss.params if p.axes and any(self.canon(a) == axis for a in p.axes)]
        w(f"{var} = self.size_{axis}")
        for p in owners:
            pos, n = next(k for k, a in enumerate(p.axes) if self.canon(a) == axis), self.py[p.name]
            w(f"if {var} is None and not isinstance(self.{n}, torch.nn.parameter.UninitializedParameter) "
              f"and self.{n}.dim() == {len(p.axes)}:")
            w(f"    {var} = self.{n}.shape[{pos}]")
        w(f"if {var} is None:")
        w(f"    raise self.error(\"the size of axis '{axis}' is fixed by no input: pass {axis}=... when building "
          "the loss\")")

    def validate_input(self, i: ir.Input) -> None:
        w = self.lines.append
        n = self.py[i.name]
        if i.kind == "prob":
            w("if self.validate:")
            w(f"    _check_range(self, _late, {n}, 0, 1, \"input '{i.name}' is a probability but has values "
              "outside [0, 1]\")")
        if i.kind == "index" and i.axes is not None:
            sent = "".join(f"{self.value_code(x)}, " for x in self.loss.sentinels.get(i.name, []))
            w(f"{n}_ix = _checked_index(self, _late, {n}, {self.size_var(i.kind_arg)}, ({sent.rstrip(' ')}), "
              f"{i.name!r}, {i.kind_arg.lstrip('*')!r})")

    def value_code(self, x: int | str) -> str:
        """A sentinel: a literal class index or an int parameter (self.<its Python name>)."""
        return repr(x) if isinstance(x, int) else f"self.{self.py[x]}"

    def bind_names(self, floats: list[ir.Param]) -> dict[str, V]:
        """The emitter's table: each user name -> the Python value holding it."""
        names: dict[str, V] = {}
        for i in self.loss.inputs:
            n = self.py[i.name]
            if i.kind == "fn":
                names[i.name] = V(n, kind="py")
            else:
                names[i.name] = V(n, tuple(i.axes) if i.axes is not None else (), "tensor", i.axes is None)
        for p in self.loss.params:
            names[p.name] = self.bind_param(p)
        return names

    def host_symbols(self) -> set[sp.Basic]:
        return ir.host_symbols(self.loss)

    def bind_host_params(self) -> dict[str, V]:
        """Scalar float parameters that are exponents or decide a condition alone, also read as Python
        numbers (see _host, _where)."""
        host = self.host_symbols()
        out = {}
        for p in self.loss.params:
            if sp.Symbol(p.name, real=True) in host:
                n = self.py[p.name]
                self.lines.append(f"_x_{n} = _host(self, {n!r}, _dev, _dt)")
                out[p.name] = V(f"_x_{n}", ())
        return out

    def bind_param(self, p: ir.Param) -> V:
        w, n = self.lines.append, self.py[p.name]
        if p.type in ("int", "bool"):
            return V(f"self.{n}", kind="py")
        axes = tuple(p.axes or ())
        if p.type == "learnable":
            self.materialise(p)
            w(f"{n} = self.{n}.to(dtype=_dt)  # differentiable: the gradient reaches the parameter")
        else:
            w(f"{n} = _param(self, {n!r}, _dev, _dt)")
            if not axes and self.loose:
                w(f"_param_shape(self, {p.name!r}, {n}, _bshape)")
        if axes:
            sizes = ", ".join(self.size_var(a) for a in axes)
            w(f"if {n}.dim() == 0:")
            w(f"    {n} = {n}.expand({sizes})")
            w(f"elif tuple({n}.shape) != ({sizes},):")
            w(f"    raise self.error(f\"parameter '{p.name}' has shape {{tuple({n}.shape)}}, expected "
              f"({', '.join(axes)}) = {{({sizes},)}}\")")
        return V(n, axes, "tensor", False)

    def materialise(self, p: ir.Param) -> None:
        if not p.axes:
            return
        w, n = self.lines.append, self.py[p.name]
        sizes = ", ".join(self.size_var(a) for a in p.axes)
        w(f"if isinstance(self.{n}, torch.nn.parameter.UninitializedParameter):")
        w("    with torch.no_grad():")
        w(f"        self.{n}.materialize(({sizes},), device=_dev)")
        w(f"        self.{n}.fill_(self._init_{n})")

    def finish(self, em: Emitter, result: V, weight: V | None) -> None:
        w = self.lines.append
        free = self.loss.free
        out = em.expand_to(result, free) if free or not result.is_tensor else result
        w(f"out = {em.align(out, free, out.ell)}")
        if any(i.axes is None and i.kind != "fn" for i in self.loss.inputs):
            w("if out.shape != _bshape:")
            w("    out = out.expand(torch.broadcast_shapes(out.shape, _bshape))")
        if weight is not None:
            w(f"wsum = torch.broadcast_to({em.align(weight, free, weight.ell)}, out.shape).sum()")
        ret = self.returning
        w("if self.reduction == 'none':")
        w(f"    {ret(self.unflatten('out', free) + '.to(_odt)')}")
        w("if self.reduction == 'sum':")
        w(f"    {ret('out.sum().to(_odt)')}")
        w("if self.reduction == 'batchmean':")
        w(f"    {ret(f'(out.sum() / {self.batch_size()}).to(_odt)')}")
        if weight is None:
            w(ret("out.mean().to(_odt)"))
            return
        w("# like torch: a zero total weight gives nan, with a zero (not nan) gradient")
        w("empty = wsum == 0")
        w(ret("(out.sum() / (wsum + empty)).masked_fill(empty, float('nan')).to(_odt)"))

    def batch_size(self) -> str:
        """'batchmean' divides by the first input's first dimension, as torch's kl_div does; for a leading
        `*group` that is the group's first dimension (it was 1: cross_entropy's batchmean was the sum)."""
        first = next((i for i in self.loss.inputs if i.kind != "fn"), None)
        if first is None or first.axes is None:
            n = self.py[first.name] if first else ""
            return f"max({n}.shape[0] if {n}.dim() else 1, 1)" if first else "1"
        lead = first.axes[0]
        if lead.startswith("*"):
            group = self.shape_var(lead)
            return f"max({group}[0] if {group} else 1, 1)"
        return f"max({self.size_var(lead)}, 1)"

    def unflatten(self, var: str, free: tuple[str, ...]) -> str:
        if not any(f.startswith("*") for f in free):
            return var
        parts = [f"*{self.shape_var(f)}" if f.startswith("*") else self.size_var(f) for f in free]
        lead = f"*{var}.shape[:{var}.dim() - {len(free)}], " if self.loss.broadcast else ""
        return f"{var}.reshape(({lead}{', '.join(parts)},))"  # a tuple: a group of no axes leaves ()


def _default_literal(p: ir.Param) -> str:
    v = p.default
    if p.type == "bool":
        return repr(bool(v))
    if p.type == "int":
        return repr(int(v))
    return _literal_value(v)


def _literal_value(v) -> str:
    if isinstance(v, bool):
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    return repr(float(v)) if v == v and abs(v) != float("inf") else f"float('{v}')"


_TMP = re.compile(r"\bt\d+\b")  # the emitter's temporaries
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")  # messages may quote a user's name "t1"


def node_class(node: type) -> str:
    """The autograd.Function of an emit.NODES node: forward prints the node's stable form of `a`, backward
    multiplies by the node's derivative (its fdiff), both through the emitter like the loss itself; each in
    two spellings (emit.Node), the kernel one taken while torch.compile traces."""
    spec = NODES[node]
    a, grad = sp.Symbol("a", real=True), sp.Symbol("grad", real=True)
    derivative = sp.diff(node(a), a)
    doc = f"{node.__name__}(a) from its stable form; its gradient is grad * {sp.sstr(derivative)}"
    return "\n".join([
        "", f"class {spec.name}(torch.autograd.Function):", f"    {doc!r}", "",
        "    generate_vmap_rule = True  # torch.func.vmap(grad(loss)): per-sample gradients", "", "    @staticmethod",
        "    def forward(a):", *_either(lambda bits: spec.kernel_form(a, bits), spec.form(a)), "", "    @staticmethod",
        "    def setup_context(ctx, inputs, output):", "        ctx.save_for_backward(inputs[0])", "",
        "    @staticmethod", "    def backward(ctx, grad):", "        a, = ctx.saved_tensors",
        *_either(lambda bits: grad * spec.kernel_derivative(a, bits), grad * derivative)])


def _either(kernel: Callable[[int], sp.Expr], eager: sp.Expr) -> list[str]:
    """The eager spelling, and under torch.compile the kernel one for a dtype's significand bits, float64's
    or float32's (which float16 and bfloat16 are computed in): Dynamo specialises on the dtype, so the test
    costs nothing."""
    return ["        if _compiling():", "            if a.dtype == torch.float64:", *_node_body(kernel(53), 16),
            *_node_body(kernel(24), 12), *_node_body(eager, 8)]


def _node_body(e: sp.Expr, indent: int) -> list[str]:
    """Lines computing e of `a` (and `grad`) and returning it, indented by `indent`."""
    lines: list[str] = []
    v = Emitter([], str, {n: V(n, ell=True) for n in ("a", "grad")}, {}, lines).emit(e)
    text = "\n".join(lines)
    uses = [f"{n} = a.{attr}" for n, attr in (("_dt", "dtype"), ("_dev", "device")) if re.search(rf"\b{n}\b", text)]
    body = _free_temporaries([f"        {line}" for line in [*uses, *lines, f"return {v.code}"]])
    return [" " * (indent - 8) + line for line in body]


def _free_temporaries(lines: list[str]) -> list[str]:
    """Insert `del tN` after the last top-level statement that reads tN (liveness over straight-line code)."""
    stmts: list[list[str]] = []
    for line in lines:
        if (line.startswith("        ") and not line.startswith("         ")) or not stmts:
            stmts.append([line])
        else:
            stmts[-1].append(line)
    last: dict[str, int] = {}
    for k, st in enumerate(stmts):
        for name in _TMP.findall(_STRING.sub("", "\n".join(st))):
            last[name] = k
    out: list[str] = []
    for k, st in enumerate(stmts):
        out += st
        dead = sorted((n for n, j in last.items() if j == k and k < len(stmts) - 1), key=lambda n: int(n[1:]))
        if dead:
            out.append(f"        del {', '.join(dead)}")
    return out


def is_safe_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def size_keywords(loss: ir.LossIR) -> list[str]:
    return SourceBuilder(loss).size_keywords()


def generate(loss: ir.LossIR) -> str:
    return SourceBuilder(loss).build()


__all__ = ["_literal", "class_name", "generate"]
