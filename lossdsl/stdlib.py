"""The standard library: every loss of `stdlib/*.loss`, built by name, and a catalog of them.

`lossdsl.stdlib.focal_loss(gamma=1.0)` compiles the stdlib definition `focal_loss` into an nn.Module (the
math lives in the .loss files; this module only finds and describes it). `catalog()` reads the headers
only, so listing the library costs a parse, not a compilation of every loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import syntax as s
from .api import STDLIB_DIR, Loss, load
from .errors import UnknownNameError, did_you_mean
from .frontend import constant
from .parser import parse_text

TASKS = {
    "classification": "classification", "regression": "regression", "segmentation": "segmentation",
    "metric": "metric learning", "generative": "generative", "multitask": "multi-task and recipes",
    "torch_nn": "torch.nn",
}


@dataclass(frozen=True)
class Entry:
    """One catalog line: what a user needs to pick a loss and call it."""

    name: str
    task: str
    inputs: tuple[str, ...]
    parameters: tuple[str, ...]
    description: str
    file: str


@functools.cache
def _decls() -> dict[str, tuple[Path, s.LossDef]]:
    """Loss name → (its .loss file, its parsed definition); the first file wins, in sorted order."""
    out: dict[str, tuple[Path, s.LossDef]] = {}
    for path in sorted(STDLIB_DIR.glob("*.loss")):
        for d in parse_text(path.read_text(encoding="utf-8")):
            out.setdefault(d.name, (path, d))
    return out


def names() -> list[str]:
    """Every stdlib loss name, sorted."""
    return sorted(_decls())


@functools.cache
def get(name: str) -> Loss:
    """The checked stdlib Loss called `name` (parsed and lowered once)."""
    if name not in _decls():
        raise UnknownNameError(f"the stdlib has no loss '{name}'" + did_you_mean(name, names()))
    return load(_decls()[name][0])[name]


def build(name: str, **params) -> torch.nn.Module:
    """Compile the stdlib loss `name` with the given parameters (and sizes of axes no input fixes)."""
    loss = get(name)
    module = loss.compile(**params)
    module.loss = loss
    return module


def _factory(name: str) -> Callable[..., torch.nn.Module]:
    def factory(**params) -> torch.nn.Module:
        return build(name, **params)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = _decls()[name][1].doc
    return factory


def __getattr__(name: str) -> Callable[..., torch.nn.Module]:
    """`lossdsl.stdlib.<loss name>` is a factory: keyword parameters in, nn.Module out."""
    if name.startswith("__") or name not in _decls():
        raise AttributeError(f"module 'lossdsl.stdlib' has no attribute '{name}'"
                             + did_you_mean(name, names()))
    return _factory(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *names()])


# ---- the catalog
def _doc(d: s.LossDef) -> str:
    return " ".join((d.doc or "").split())


def _describe_input(i: s.InputDecl) -> str:
    axes = "" if i.axes is None else "[" + ", ".join(("*" if a.group else "") + a.name for a in i.axes) + "]"
    kind = "" if i.kind == "real" else f": {i.kind}" + (f"({i.kind_arg})" if i.kind_arg else "")
    return f"{i.name}{axes}{kind}"


def _describe_param(p: s.ParamDecl) -> str:
    axes = "" if p.axes is None else "[" + ", ".join(a.name for a in p.axes) + "]"
    kind = f": {p.type}" if p.type else ""
    value = "" if p.default is None else f" = {_value(constant(p.default, p.name))}"
    return f"{p.name}{axes}{kind}{value}"


def _value(v: float | int | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _summary(doc: str) -> str:
    """The docstring's first sentence: up to the first '. ' or ': ' that ends a clause."""
    for stop in (". ", ": "):
        if stop in doc:
            doc = doc.split(stop, 1)[0]
    return doc.rstrip(".")


def catalog() -> list[Entry]:
    """Every stdlib loss with its task, inputs, parameters and a one-line description, by task then name."""
    out = []
    for name, (path, d) in _decls().items():
        out.append(Entry(name, TASKS.get(path.stem, path.stem), tuple(_describe_input(i) for i in d.inputs),
                         tuple(_describe_param(p) for p in d.params), _summary(_doc(d)), path.name))
    order = list(TASKS.values())
    return sorted(out, key=lambda e: (order.index(e.task) if e.task in order else len(order), e.name))


def format_catalog() -> str:
    """The catalog as text, one block per task (what `lossdsl list` prints)."""
    lines: list[str] = []
    task = None
    for e in catalog():
        if e.task != task:
            lines += [""] * bool(lines) + [f"{e.task}:"]
            task = e.task
        params = "; " + ", ".join(e.parameters) if e.parameters else ""
        lines.append(f"  {e.name}({', '.join(e.inputs)}{params})")
        lines.append(f"      {e.description}")
    return "\n".join(lines) + "\n"


__all__ = ["Entry", "build", "catalog", "format_catalog", "get", "names"]
