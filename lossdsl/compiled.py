"""mode="compiled": the generated module (optionally its fused form) run through torch.compile.

TorchInductor turns the generated forward — and the symbolic backward of fused mode, or autograd's backward
— into one or a few kernels (C++/OpenMP on CPU, Triton on GPU), so the elementwise chains of a loss are
read and written once instead of once per operation.

The module is compiled in place (`nn.Module.compile`), so its class, attributes and state_dict are those
of the eager module. Compilation happens on the first call for each new input signature and is timed:
`module.compile_seconds` accumulates it and `module.compile_log` lists (signature, seconds).

Compiled artefacts are cached across processes by torch's own FX-graph and AOTAutograd caches, whose keys
hash the traced graph — that is, the generated source, the compile options, and the inputs' dtypes,
devices (and, for static shapes, sizes). A second process therefore pays Dynamo's tracing (about a
second) but not Inductor's code generation and C++ compilation. The backward graph is compiled lazily by
AOTAutograd on the first backward call, which `compile_seconds` does not include.

backward="in_forward" has no backward graph, and its calls skip Dynamo: its function is traced by make_fx
and compiled by Inductor directly, the compiled kernels called without Dynamo's per-call path
(lossdsl.inductor_call), with the torch.compile'd function as the fallback for dynamic shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import sympy as sp
import torch
import torch._functorch.config
import torch._inductor.config
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.utils.checkpoint import CheckpointPolicy

from . import fused, grad_in_forward, ir
from .api import check_backward
from .scope import free_indices


def build(loss, module: torch.nn.Module, *, dynamic: bool | None = None, backward: str | None = None,
          recompute: str = "masks", specialize: bool = True) -> torch.nn.Module:
    """The mode hook: compiles `module` in place and returns it.

    backward: "autograd" compiles the generated forward, and AOTAutograd differentiates the traced graph;
    "symbolic" compiles fused mode's module, whose backward is the generated symbolic gradient
    (lossdsl.fused), as one graph with its forward; None (default) is `default_backward(loss.ir)`,
    "autograd" but for losses with a pairwise reduction. Neither wins across the stdlib: 4M float32, one CPU
    thread, 70 benchmark cases, symbolic/autograd step time has geometric mean 1.02; symbolic is >10%
    faster on 23 (nll_loss 0.13x, focal_loss 0.62x, multilabel_margin 0.82x) and >10% slower on 28
    (similarity-matrix losses recompute their GEMMs, clip 1.7x; margin_ranking 2.4x). A loss without a
    symbolic gradient (fn calls) keeps the autograd backward. "in_forward" computes the symbolic gradient
    in the forward kernel and only scales it in the backward (lossdsl.grad_in_forward): fastest where a
    step's forward and backward read the same inputs (log-cosh 4M float32: 8.7 ms against 11.8 symbolic);
    a loss whose output is not reduced to a scalar gets "symbolic". "auto" compiles all three and keeps, per
    input signature, the one whose forward + backward is fastest on the first call's inputs
    (lossdsl.autobackward).

    recompute picks what the backward recomputes instead of saving (see POLICIES): "masks" (default),
    "all" or "none". specialize compiles a forward with the scalar parameters' values written in (see
    Specializer); it follows their buffers, so a changed value recompiles rather than goes stale."""
    if recompute not in POLICIES:
        raise ValueError(f"recompute must be one of {', '.join(map(repr, POLICIES))}, got {recompute!r}")
    defaulted = backward is None
    backward = default_backward(loss.ir) if defaulted else backward
    check_backward(backward)
    if _differentiates_inside(loss):
        return _uncompiled(loss, module)
    if backward == "auto":
        from . import autobackward

        options = {"dynamic": dynamic, "recompute": recompute, "specialize": specialize}
        return autobackward.build(module, lambda m, how: build(loss, m, backward=how, **options),
                                  lambda: autobackward.identity(loss, module, options))
    eager_class = type(module)
    base = fused.build(loss, module) if backward != "autograd" else module
    symbolic = type(base) is not eager_class
    in_forward = symbolic and backward == "in_forward" and grad_in_forward.applies(loss.ir, module.reduction)
    spec = Specializer(loss, base, symbolic) if specialize else None
    if in_forward:
        grad_in_forward.install(base, dynamic)
        call = base._call_impl
    else:
        base.compile(dynamic=dynamic)
        call = base._compiled_call_impl
    prepare = fused.prepare_backward if symbolic and not in_forward else None  # in_forward prepares its own
    base._compiled_call_impl = _timed(base, call, "none" if in_forward else recompute, spec, prepare)
    base.compile_seconds = 0.0
    base.compile_log = []
    base.compile_options = {"dynamic": dynamic,
                            "backward": "in_forward" if in_forward else "symbolic" if symbolic else "autograd",
                            "recompute": None if in_forward else recompute,  # no backward graph to partition
                            "specialized": sorted(spec.names) if spec else []}
    if defaulted and symbolic:
        base.compile_options["backward_reason"] = "a reduction wider than every input (default_backward)"
    elif backward == "in_forward" and not in_forward:
        base.compile_options["backward_reason"] = ("in_forward needs a scalar output" if symbolic
                                                   else "no symbolic gradient (fn calls)")
    return base


def default_backward(loss_ir: ir.LossIR) -> str:
    """compiled mode's backward when none is asked for: "autograd", unless the loss has a reduction whose
    body has more indices than any input has axes, other than a one-binder sum of a product (an einsum,
    which autograd differentiates into einsums). AOTAutograd's backward of such a pairwise sum materialises
    the body's gradient at full width, while the symbolic gradient sums it straight into the input's shape:
    multilabel_margin_loss (sum over pairs of classes), 524288 x 8 float32, one CPU thread: autograd 184.55 MB
    (its [n, c, c]) against symbolic 37.75 MB (torch's own: 33.55) at 88 and 90 ms. It is the only stdlib
    loss the rule picks; where both backwards stay at the inputs' width, which holds less differs by loss
    (supcon_loss: autograd 19.9 MB, symbolic 68.2) and so does which is faster (see build), and autograd
    stays the default there."""
    rank = max((len(i.axes) for i in loss_ir.inputs if i.axes), default=0)
    for r in loss_ir.expr.atoms(ir._Reduction):
        einsum = r.op == "sum" and len(r.indices) == 1 and isinstance(r.body, sp.Mul)
        if not einsum and len(free_indices(r.body)) > rank:
            return "symbolic"
    return "autograd"


def _differentiates_inside(loss) -> bool:
    """Whether the loss takes a gradient itself (`grad(critic(xhat), xhat)`, WGAN-GP): its backward is a
    double backward, which torch.compile's AOTAutograd does not support (2.13), and Dynamo's graph break at
    torch.autograd.grad cuts xhat off from the graph that reads it."""
    values = (getattr(loss.ir, f.name) for f in dataclasses.fields(loss.ir))
    return any(isinstance(v, sp.Basic) and v.has(ir.Grad) for v in values)


def _uncompiled(loss, module: torch.nn.Module) -> torch.nn.Module:
    """The eager module, said so at build time and in compile_options, rather than a compiled one that raises
    on its first backward."""
    warnings.warn(f"lossdsl: {loss.name} takes a gradient inside (grad(...)), which torch.compile cannot "
                  "differentiate again; mode='compiled' runs it eagerly", RuntimeWarning, stacklevel=_user_level())
    module.compile_seconds, module.compile_log = 0.0, []
    module.compile_options = {"compiled": False, "reason": "grad() inside the loss: double backward"}
    return module


def _user_level() -> int:
    """warnings' stacklevel of the first caller outside lossdsl: compile() is reached through one to four
    of its own frames (lossdsl.compile, Loss.compile, a stdlib factory, build_mode)."""
    package = str(Path(__file__).resolve().parent)
    frame, level = inspect.currentframe(), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level - 1


class Specializer:
    """Gives the module a forward generated with the scalar parameters of exponents and conditions as numbers.

    Why: a parameter is a 0-dim buffer, so `(1 - pt) ** gamma` is pow(tensor, tensor), which neither eager
    torch nor Inductor specialises; with gamma = 2 written in, it is a multiply (sigmoid focal, 4M float32,
    CPU, forward + backward: 64 ms -> 24 ms compiled; textbook 93 ms), and `alpha >= 0` branches fold away.
    Only exponents and comparisons of parameters alone: a number anywhere else lets SymPy distribute it
    over sums (info_nce's (s - s_ii) / tau became two matmuls, 65 -> 110 ms). Only the compiled call uses
    it, with the module's own class, buffers and state_dict. Each call compares the buffers' identity and
    version counter with those written in (no device sync): an in-place change, load_state_dict or
    .to(device) makes a new forward, which Dynamo compiles afresh."""

    def __init__(self, loss, module: torch.nn.Module, fused: bool = False) -> None:
        self.loss, self.module, self.fused = loss, module, fused
        py = getattr(loss, "_py_names", None) or {}
        scalars = {p.name: py.get(p.name, p.name) for p in loss.parameters
                   if p.type is None and not p.axes and self._scalar(module, py.get(p.name, p.name))}
        used = ir.host_symbols(loss.ir) if scalars else set()
        self.names = {name: attr for name, attr in scalars.items() if sp.Symbol(name, real=True) in used}
        self.state: list[tuple[torch.Tensor, int]] = []

    @staticmethod
    def _scalar(module: torch.nn.Module, attr: str) -> bool:
        buf = module._buffers.get(attr)
        return buf is not None and buf.dim() == 0 and buf.is_floating_point()

    def current(self) -> list[tuple[torch.Tensor, int]]:
        """The buffers themselves, not their id(): a freed buffer's id can come back for its replacement."""
        return [(b, b._version) for b in (self.module._buffers[attr] for attr in self.names.values())]

    def unchanged(self, state: list[tuple[torch.Tensor, int]]) -> bool:
        return len(state) == len(self.state) and all(
            b is old and v == old_v for (b, v), (old, old_v) in zip(state, self.state, strict=True))

    def refresh(self) -> bool:
        """Installs a forward for the current values when they changed; True when it did."""
        if not self.names:
            return False
        state = self.current()
        if self.state and self.unchanged(state):
            return False
        values = {name: float(self.module._buffers[attr]) for name, attr in self.names.items()}
        try:
            self.install(self.ir_for(values))
        except Exception as err:  # an optimisation only: the module's own forward stays correct
            warnings.warn(f"lossdsl: compiled mode runs without specialised parameters ({type(err).__name__}: "
                          f"{err})", RuntimeWarning, stacklevel=3)
            self.names = {}
            return False
        self.state = state
        return True

    def ir_for(self, values: dict[str, float]) -> ir.LossIR:
        table = {sp.Symbol(name, real=True): _number(v) for name, v in values.items()}
        fields = {f.name: getattr(self.loss.ir, f.name) for f in dataclasses.fields(self.loss.ir)}
        return dataclasses.replace(self.loss.ir, **{k: _write_in(v, table) for k, v in fields.items()
                                                   if isinstance(v, sp.Basic)})

    def install(self, loss_ir: ir.LossIR) -> None:
        """The specialised forward (and, for a fused module, its symbolic backward too)."""
        if self.fused:
            fused.retarget(self.module, loss_ir)
            return
        from .api import _build_class
        from .codegen import generate

        forward = _build_class(generate(loss_ir), type(self.module).__name__).forward
        self.module.forward = types.MethodType(forward, self.module)


def _write_in(expr: sp.Basic, table: dict) -> sp.Basic:
    """expr with the table's values in exponents and in comparisons they decide; elsewhere the parameter
    stays (a number in a product lets SymPy distribute it over a sum, which undoes shared subterms)."""
    def is_target(e: sp.Basic) -> bool:
        if isinstance(e, sp.Pow):
            return bool(e.exp.free_symbols & table.keys())
        return isinstance(e, sp.core.relational.Relational) and bool(e.free_symbols) and e.free_symbols <= table.keys()

    def value(e: sp.Basic) -> sp.Basic:
        return sp.Pow(e.base, e.exp.xreplace(table)) if isinstance(e, sp.Pow) else e.xreplace(table)

    return expr.replace(is_target, value)


def _number(v: float) -> sp.Expr:
    """2.0 -> Integer 2, so that x**2 is a multiply; any other value as a Float."""
    return sp.Integer(int(v)) if v.is_integer() else sp.Float(v)


class RecomputeMasks(CustomGraphPass):
    """Joint-graph pass: bool tensors, elementwise integers and constant fills of the forward are recomputed in
    the backward, never saved.

    Why: AOTAutograd's partitioner saves the smallest tensors it can, which for piecewise losses (huber,
    smooth L1, clamps) are bool masks, and Inductor's CPU kernels write bool outputs through a masked
    vector store that runs at ~12 ns per element on our AMD EPYC: huber at 4M float32 took 48 ms forward
    saving [e, mask] against 1.6 ms without saving; forward + backward 81 ms against 6 ms (torch's builtin
    6.6 ms). A mask is one comparison away from a float the backward reads anyway, so recomputing it is
    free on any device. A tensor made from no input (zeros to scatter into) is recomputed too: saving it kept
    16 MB of zeros alive from forward to backward (multilabel margin). Random ops are left alone
    (recomputing them must not draw new numbers)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in graph.nodes:
            val = node.meta.get("val")
            tags = getattr(node.target, "tags", ())
            if (node.op == "call_function" and isinstance(val, torch.Tensor)
                    and (_cheap_to_redo(val, tags) or not node.all_input_nodes)
                    and torch.Tag.nondeterministic_seeded not in tags):
                node.meta["recompute"] = CheckpointPolicy.MUST_RECOMPUTE

    def uuid(self) -> bytes:
        """Inductor's FX-graph cache key includes this, so a change to the pass is a cache miss."""
        return hashlib.sha256((inspect.getsource(RecomputeMasks) + inspect.getsource(_cheap_to_redo)).encode()).digest()


def _cheap_to_redo(val: torch.Tensor, tags) -> bool:
    """A bool mask, or an integer tensor made elementwise (a clamped index): one op from an input the backward
    reads anyway (multilabel margin, 4M: its clamped int64 targets, 32 MB, were saved). Not a sort's order."""
    return val.dtype == torch.bool or (not val.is_floating_point() and not val.is_complex()
                                       and torch.Tag.pointwise in tags)


# What the backward recomputes, as config patches applied while the first call per signature compiles
# (the joint graph is partitioned then).
# - "masks": bool masks only (RecomputeMasks). Measured best overall: softmax/logsumexp rows (cross-entropy,
#   label smoothing, InfoNCE) stay saved, which recomputing would redo.
# - "all": activation memory budget 0: every recomputable intermediate is recomputed from the inputs, so
#   the peak memory is the gradients alone; slower where a row reduction feeds the backward.
# - "none": AOTAutograd's default partitioner.
POLICIES: dict[str, Callable[[], dict]] = {
    "masks": lambda: {"torch._inductor.config.joint_custom_post_pass": RecomputeMasks()},
    "all": lambda: {"torch._functorch.config.activation_memory_budget": 0.0},
    "none": dict,
}


@contextlib.contextmanager
def _policy(recompute: str) -> Iterator[None]:
    """Patches the torch configs of a recompute policy for the duration of one (compiling) call."""
    with contextlib.ExitStack() as stack:
        for dotted, value in POLICIES[recompute]().items():
            module_name, name = dotted.rsplit(".", 1)
            stack.enter_context(importlib.import_module(module_name).patch(name, value))
        yield


def signature(args: tuple, kwargs: dict) -> tuple:
    """What makes torch.compile trace anew: dtype, device and (for static shapes) the shape of each tensor."""
    values = [*args, *kwargs.values()]
    return tuple((tuple(v.shape), v.dtype, v.device.type) if isinstance(v, torch.Tensor) else type(v).__name__
                 for v in values)


def _timed(module: torch.nn.Module, call: Callable, recompute: str = "none",
           spec: Specializer | None = None, prepare: Callable | None = None) -> Callable:
    """Wraps the compiled call so the first call per signature (the compilation) is timed and runs under
    the recompute policy's config (the joint graph is partitioned during that first call); a new
    specialised forward (changed parameter values) starts the signatures afresh. A fused module's backward
    table is prepared on the first call per `_call_key`, which a call already seen skips with the rest."""
    seen: set[tuple] = set()  # call keys (signatures when nothing is prepared) run before
    timed: set[tuple] = set()  # signatures compiled

    def run(*args, **kwargs):
        if torch.compiler.is_compiling():  # inside a caller's torch.compile: nothing here to time or refresh
            if prepare is not None:
                prepare(module, args, kwargs)
            return call(*args, **kwargs)
        if spec is not None and spec.refresh():
            seen.clear()
            timed.clear()
        key = _call_key(module, args, kwargs) if prepare is not None else signature(args, kwargs)
        if key in seen:
            return call(*args, **kwargs)
        if prepare is not None:
            prepare(module, args, kwargs)
        seen.add(key)
        sig = signature(args, kwargs) if prepare is not None else key
        if sig in timed:
            return call(*args, **kwargs)
        start = time.perf_counter()
        with _policy(recompute):
            out = call(*args, **kwargs)
        seconds = time.perf_counter() - start
        timed.add(sig)
        module.compile_seconds += seconds
        module.compile_log.append((sig, seconds))
        return out

    return run


def _call_key(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """signature() with what else decides the backward a fused module's call needs (fused.prepare_backward):
    grad mode, which tensors require grad, the keywords' names, the reduction, the int/bool parameters and
    the learnables' requires_grad. Why: preparing on every call cost 6 us of a 100 us step (nll_loss,
    4 x 1024); a call whose key was seen needs nothing built."""
    values = [*args, *kwargs.values()]
    return (torch.is_grad_enabled(), module.reduction, tuple(kwargs),
            *(getattr(module, py) for _, py in module._lossdsl_fixed),
            *(getattr(module, nm).requires_grad for nm in module._lossdsl_learnable),
            *((tuple(v.shape), v.dtype, v.device.type, v.requires_grad) if isinstance(v, torch.Tensor)
              else type(v).__name__ for v in values))
