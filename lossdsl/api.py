"""Public entry points: parse, compile, load. Text → AST → IR → source → nn.Module, one way."""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import importlib
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import sympy as sp
import torch

from . import cache, ir, passes
from . import syntax as s
from .codegen import class_name, generate, py_names, size_keywords
from .errors import InputError, LossError, ParameterError, UnknownNameError, did_you_mean
from .frontend import CONSTANTS, ELEMENTWISE, check_param_value, lower
from .parser import parse_text

STDLIB_DIR = Path(__file__).parents[1] / "stdlib"


class Loss:
    """A parsed and checked loss: its inputs, parameters, SymPy expression and generated source."""

    def __init__(self, loss_ir: ir.LossIR) -> None:
        self.ir = loss_ir

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def doc(self) -> str | None:
        return self.ir.doc

    @property
    def inputs(self) -> list[ir.Input]:
        return self.ir.inputs

    @property
    def parameters(self) -> list[ir.Param]:
        return self.ir.params

    @property
    def expr(self) -> sp.Expr:
        return self.ir.expr

    def latex(self) -> str:
        """The definition as written (the author's intermediates and names, lossdsl.latex_out), not the compiled
        IR that the stability passes rewrote: `sympy.latex(loss.expr)` prints that one."""
        from .latex_out import written

        return written(self)

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex()}$"

    def __str__(self) -> str:
        return f"{self.name} = {sp.sstr(self.ir.expr)}"

    def __repr__(self) -> str:
        ins = ", ".join(i.name for i in self.inputs)
        return f"<Loss {self.name}({ins})>"

    @functools.cached_property
    def _source(self) -> str:
        return generate(self.ir)

    def to_source(self) -> str:
        """Standalone PyTorch source of the module class (imports only torch)."""
        return self._source

    @property
    def class_name(self) -> str:
        return class_name(self.name)

    def module_class(self) -> type[torch.nn.Module]:
        return _build_class(self._source, self.class_name)

    def axis_keywords(self) -> list[str]:
        """Axis sizes the module accepts by keyword (axes no input fixes, axes of learnable parameters)."""
        return list(self._axis_keywords)

    @functools.cached_property
    def _axis_keywords(self) -> tuple[str, ...]:
        """Kept with the cache entry: computing it reads the SymPy expression, which a cache hit defers."""
        return tuple(size_keywords(self.ir))

    @functools.cached_property
    def _py_names(self) -> dict[str, str]:
        """Kept with the cache entry, like _axis_keywords (py_names reads the SymPy expression too)."""
        return py_names(self.ir)

    def grad(self, wrt: str, *, reduction: str | None = None):
        """The symbolic gradient of the reduced loss with respect to input (or parameter) `wrt`."""
        from .gradient import derive

        _check_reduction(reduction)
        return derive(self.ir, wrt, reduction)

    def stability_report(self, **options):
        """Which stability rewrites fired and the bits lost, naive vs rewritten, per dtype (lossdsl.stability)."""
        from .stability import report

        return report(self, **options)

    def compile(self, *, reduction: str | None = None, validate: bool = True, mode: str = "eager",
                backward: str | None = None, **params) -> torch.nn.Module:
        """Build the nn.Module with the given parameter values (and sizes of axes no input fixes).

        mode: "eager" (the generated module), "fused" or "compiled" (see `build_mode`). backward, for
        mode="compiled" only: "autograd" (default), "symbolic", "in_forward" (the gradient computed
        by the forward kernel: lossdsl.grad_in_forward), or "auto" (the three compiled, the fastest on the
        first call's inputs kept: lossdsl.autobackward); the other modes have one backward each, so naming one
        there is an error."""
        known = {p.name: p for p in self.parameters}
        sizes = self.axis_keywords()
        params = {k: _plain(v) for k, v in params.items()}
        for key in params:
            if key not in known and key not in sizes:
                raise UnknownNameError(f"loss '{self.name}' has no parameter '{key}'"
                                       + (_variant_hint(self.name, key) or did_you_mean(key, [*known, *sizes])))
        for p in self.parameters:
            if p.default is None and p.name not in params:
                raise ParameterError(f"loss '{self.name}' needs a value for parameter '{p.name}'")
            if p.name in params:
                _check_type(p, params[p.name])
                check_param_value(p, params[p.name])
        for key in sizes:
            if key in params and not (isinstance(params[key], int) and not isinstance(params[key], bool)
                                      and params[key] >= 1):
                raise ParameterError(f"'{key}' is the size of an axis: a positive int, got {params[key]!r}")
        _check_reduction(reduction)
        _check_mode(mode, backward)
        py = self._py_names  # a parameter `lambda` is the keyword `lambda_` of the generated class
        module = self.module_class()(**{py[k]: v for k, v in params.items()}, reduction=reduction, validate=validate)
        return build_mode(mode, self, module, backward)


MODES = ("eager", "fused", "compiled")
BACKWARDS = ("autograd", "symbolic", "in_forward", "auto")  # compiled mode's backwards (lossdsl.compiled.build)


def _check_mode(mode: str, backward: str | None) -> None:
    """A bad mode or backward is the caller's typo: say what is accepted here, before anything is built."""
    if mode not in MODES:
        raise ParameterError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if backward is None:
        return
    if mode != "compiled":
        own = "autograd's" if mode == "eager" else "the symbolic gradient"
        raise ParameterError(f"backward= applies to mode='compiled'; mode={mode!r} always uses {own}")
    check_backward(backward)


def check_backward(backward: str) -> None:
    """compiled mode's backward, checked once for Loss.compile and lossdsl.compiled.build alike."""
    if backward not in BACKWARDS:
        raise ParameterError(f"backward must be one of {', '.join(map(repr, BACKWARDS))}, got {backward!r}"
                             + did_you_mean(backward, BACKWARDS))


def build_mode(mode: str, loss: Loss, module: torch.nn.Module, backward: str | None = None) -> torch.nn.Module:
    """The single mode dispatch: lossdsl/<mode>.py's `build(loss, eager_module)` wraps the eager module."""
    if mode == "eager":
        return module
    options = {"backward": backward} if backward is not None else {}
    return importlib.import_module(f".{mode}", __package__).build(loss, module, **options)


def _plain(value: object) -> object:
    """A numpy scalar (a value read from a config or an array) as the Python number it holds."""
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _check_reduction(reduction: str | None) -> None:
    if reduction not in (None, "mean", "sum", "none", "batchmean"):
        raise ParameterError(f"reduction must be 'mean', 'sum', 'none' or 'batchmean', got {reduction!r}"
                             + did_you_mean(str(reduction), ("mean", "sum", "none", "batchmean")))


def _check_type(p: ir.Param, value) -> None:
    if p.type == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ParameterError(f"parameter '{p.name}' is an int, got {value!r}")
    if p.type == "bool" and not isinstance(value, bool):
        raise ParameterError(f"parameter '{p.name}' is a bool, got {value!r}")
    if p.type not in ("int", "bool") and not isinstance(value, (int, float, torch.Tensor)):
        raise ParameterError(f"parameter '{p.name}' must be a number or a tensor, got {type(value).__name__}")


@functools.lru_cache(maxsize=256)
def _build_class(source: str, name: str) -> type[torch.nn.Module]:
    """Executes the code generator's own output (never user text directly) and returns the class.

    The namespace is a module registered in sys.modules under a name unique to the source, because
    torch.compile (Dynamo) re-imports a function's module by its `__name__` to read its globals."""
    module = types.ModuleType(f"lossdsl.generated.{name}_{hashlib.sha256(source.encode()).hexdigest()[:16]}")
    sys.modules[module.__name__] = module
    exec(builtins.compile(source, f"<lossdsl:{name}>", "exec"), module.__dict__)
    cls = module.__dict__[name]
    cls.error = InputError
    cls.param_error = ParameterError
    cls.__lossdsl_source__ = source
    cls.__reduce_ex__ = _reduce_generated
    return cls


def _reduce_generated(self: torch.nn.Module, protocol: int) -> tuple:
    """pickle / torch.save of a module: its class is rebuilt from the source on load, since the module
    lossdsl.generated.* it lives in exists only in the process that built it. A fused or compiled subclass
    keeps pickling by reference (its class is made per process too: that still fails, loudly)."""
    cls = type(self)
    if "__lossdsl_source__" not in cls.__dict__:
        return object.__reduce_ex__(self, protocol)
    return _rebuild, (cls.__lossdsl_source__, cls.__name__), self.__getstate__()


def _rebuild(source: str, name: str) -> torch.nn.Module:
    cls = _build_class(source, name)
    return cls.__new__(cls)


# ---- parsing
def _formula_names(d: s.LossDef) -> list[str]:
    """Free names of a one-line formula in order of first appearance (calls and assigned names excluded)."""
    seen: list[str] = []
    assigned = {st.target.name for st in d.body if st.kind == "assign" and isinstance(st.target, s.Name)}

    def walk(node) -> None:
        if isinstance(node, s.Name):
            if node.name not in seen and node.name not in assigned and node.name not in CONSTANTS:
                seen.append(node.name)
        elif isinstance(node, s.Call):
            for a in node.args:
                walk(a)
            for _, v in node.kwargs:
                walk(v)
        elif isinstance(node, s.IfElse):
            walk(node.then), walk(node.cond), walk(node.other)
        elif isinstance(node, s.Binary):
            walk(node.left), walk(node.right)
        elif isinstance(node, s.Unary):
            walk(node.operand)
        elif isinstance(node, s.Subscript):
            walk(node.base)

    for st in d.body:
        if st.value is not None:
            walk(st.value)
    return seen


def _declare_formula(d: s.LossDef, params: dict, inputs: Sequence[str] | None) -> s.LossDef:
    names = [n for n in _formula_names(d) if n not in ELEMENTWISE]
    tensor_names = [n for n in names if n not in params]
    for key in params:  # gama=2 for -alpha*(1-p)^gamma*log(p): gamma is the formula's name, not an input
        if key not in names and did_you_mean(key, tensor_names):
            raise UnknownNameError(f"the formula uses no '{key}'" + did_you_mean(key, tensor_names))
    if inputs is not None:
        unknown = [n for n in inputs if n not in tensor_names]
        if unknown:
            raise UnknownNameError(f"inputs={list(inputs)!r} names '{unknown[0]}', which the formula does not use"
                                   + did_you_mean(unknown[0], tensor_names))
        tensor_names = list(inputs) + [n for n in tensor_names if n not in inputs]
    decl_in = tuple(s.InputDecl(d.span, n, None) for n in tensor_names)
    decl_p = tuple(s.ParamDecl(d.span, n, None, None, _default_node(d, params[n]), None) for n in names if n in params)
    return s.LossDef(d.span, "formula", decl_in, decl_p, d.body, None, d.source, header=False)


def _default_node(d: s.LossDef, value) -> s.Num | None:
    """A formula parameter's default is the value it was given (when that is a plain number)."""
    return s.Num(d.span, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _defs(text: str) -> list[s.LossDef]:
    """Parsed once per text across processes (the disk cache): parsing the stdlib costs ~0.2 s."""
    return cache.memo(("parse", text), lambda: parse_text(text))


def _lookup_factory(defs: list[s.LossDef]):
    local = {d.name: d for d in defs if d.header}

    def lookup(name: str) -> s.LossDef | None:
        return local.get(name) or _stdlib_defs().get(name)

    return lookup


@functools.cache
def _stdlib_defs() -> dict[str, s.LossDef]:
    out: dict[str, s.LossDef] = {}
    for path in sorted(STDLIB_DIR.glob("*.loss")) if STDLIB_DIR.exists() else []:
        for d in _defs(path.read_text(encoding="utf-8")):
            out[d.name] = d
    return out


def _lower(d: s.LossDef, defs: list[s.LossDef]) -> Loss:
    """Lowered, passed and generated once per (definition, file) across processes: see cache.py."""
    try:
        parts = (repr(d), d.source, *sorted({x.source for x in defs}))
        return cache.memo(parts, lambda: _lower_fresh(d, defs))
    except LossError as err:
        raise err.with_source(d.source) from None


def _lower_fresh(d: s.LossDef, defs: list[s.LossDef]) -> Loss:
    loss = Loss(passes.run(lower(d, _lookup_factory(defs))))
    with contextlib.suppress(LossError):
        loss.to_source()  # generated now so that the cache entry holds it
        loss.axis_keywords()
        _ = loss._py_names
    return loss


def parse(text: str, *, inputs: Sequence[str] | None = None,
          params: Sequence[str] | Mapping[str, float | int | bool] = ()) -> Loss:
    """Parse a formula or a `.loss` text; returns its last loss. For formulas, `params` names the parameters
    (a mapping also gives their defaults, which the generated module keeps: `lossdsl compile -p gamma=2`)."""
    defs = _defs(text)
    if not defs:
        raise LossError("the text defines no loss")
    d = defs[-1]
    if not d.header:
        d = _declare_formula(d, dict(params) if isinstance(params, Mapping) else dict.fromkeys(params), inputs)
    return _lower(d, defs)


def load(path_or_text: str | Path) -> dict[str, Loss]:
    """All losses of a `.loss` file (a path or the text itself), by name."""
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or (text.endswith(".loss") and "\n" not in text):
        text = Path(path_or_text).read_text(encoding="utf-8")
    defs = _defs(text)
    return {d.name: _lower(d, defs) for d in defs}


def compile(text: str, *, reduction: str | None = None, inputs: Sequence[str] | None = None,
            validate: bool = True, mode: str = "eager", backward: str | None = None,
            **params) -> torch.nn.Module:
    """Compile a formula or a `.loss` text (its last loss) into an nn.Module with the given parameters
    (mode and backward as in Loss.compile)."""
    defs = _defs(text)
    if not defs:
        raise LossError("the text defines no loss")
    d = defs[-1]
    if not d.header:
        d = _declare_formula(d, params, inputs)
    elif inputs is not None:
        raise ParameterError("inputs= applies to one-line formulas; a loss file declares its inputs")
    loss = _lower(d, defs)
    module = loss.compile(reduction=reduction, validate=validate, mode=mode, backward=backward, **params)
    module.loss = loss
    return module


def _variant_hint(name: str, key: str) -> str:
    """Where a stdlib variant of the loss takes the parameter (torch's cross_entropy has label_smoothing,
    the stdlib splits it off as cross_entropy_smoothed): say which, instead of a near-miss spelling."""
    from . import stdlib

    if name not in stdlib.names():
        return ""
    takers = [n for n in stdlib.names() if n.startswith(f"{name}_")
              and any(p.name == key for p in stdlib.get(n).parameters)]
    return f"; {' and '.join(takers)} {'takes' if len(takers) == 1 else 'take'} it" if takers else ""


__all__ = ["InputError", "Loss", "compile", "load", "parse"]
