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
    return RandomInterpolation(module) if name in SAMPLED else module


class RandomInterpolation(torch.nn.Module):
    """A loss with an input `u[n]` of U(0, 1) draws (WGAN-GP's interpolation weights), drawn here when the
    caller omits it: the definition stays deterministic and testable, training gets fresh draws per call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.loss = inner.loss

    def forward(self, critic: Callable, real: torch.Tensor, fake: torch.Tensor,
                u: torch.Tensor | None = None) -> torch.Tensor:
        if u is None:
            u = torch.rand(real.shape[0], dtype=real.dtype if real.is_floating_point() else None,
                           device=real.device)
        return self.inner(critic, real, fake, u)


SAMPLED = ("wgan_gp_d_loss",)


class LayerSum(torch.nn.Module):
    """sum_l weight_l * term(phi(x)[l], phi(y)[l]) over the named layers a feature extractor returns.

    The language has no loop over tensors of different shapes, so the per-layer term is a stdlib loss
    (feature_distance, gram_distance) and only this weighted sum over layers is Python. `phi` is given at
    call time, like an `fn` input, and returns a dict of feature maps (or a list, with integer keys, or a
    single tensor, layer 0).
    """

    def __init__(self, term: torch.nn.Module, weights: dict | None) -> None:
        super().__init__()
        self.term, self.weights, self.loss = term, weights, term.loss

    def forward(self, phi: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = _layers(phi(x)), _layers(phi(y))
        weights = self.weights or dict.fromkeys(fx, 1.0)
        return sum(w * self.term(fx[k], fy[k]) for k, w in weights.items())


def _layers(features) -> dict:
    """A feature extractor's output as {layer: tensor}: a dict as is, a list by position, a tensor as layer 0
    (indexing a tensor by position would silently pick samples, not layers)."""
    if isinstance(features, torch.Tensor):
        return {0: features}
    return dict(features) if isinstance(features, dict) else dict(enumerate(features))


def perceptual_loss(weights: dict | None = None, **params) -> torch.nn.Module:
    """Perceptual loss, a feature-space distance for image synthesis (Johnson, Alahi & Fei-Fei, 2016).

    The sum over the named layers l of a feature extractor phi of
    weights[l] * feature_distance(phi(x)[l], phi(y)[l]), the per-sample MSE of the features (l1 = true for L1).
    weights: {layer name: weight}, default every layer with weight 1. Call as loss(phi, x, y); no weights are
    downloaded: phi is any module returning a dict (or list) of feature maps."""
    return LayerSum(build("feature_distance", **params), weights)


def style_loss(weights: dict | None = None, **params) -> torch.nn.Module:
    """Style loss, matching feature correlations (Gram matrices) for style transfer (Gatys et al., 2016).

    The sum over the named layers l of a feature extractor phi of
    weights[l] * gram_distance(phi(x)[l], phi(y)[l]), the MSE between Gram matrices normalised by C*H*W.
    weights: {layer name: weight}, default every layer with weight 1. Call as loss(phi, x, y)."""
    return LayerSum(build("gram_distance", **params), weights)


COMPOSITES = {"perceptual_loss": (perceptual_loss, "feature_distance"), "style_loss": (style_loss, "gram_distance")}


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
                             + did_you_mean(name, [*names(), *COMPOSITES]))
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
    """The docstring's first sentence: up to the first '. ' outside parentheses (not 'et al.')."""
    depth = 0
    for k, ch in enumerate(doc):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch == "." and doc[k + 1:k + 2] in (" ", "") and not doc[:k].endswith(" al"):
            return doc[:k]
    return doc


def catalog() -> list[Entry]:
    """Every stdlib loss with its task, inputs, parameters and a one-line description, by task then name."""
    out = []
    for name, (path, d) in _decls().items():
        out.append(Entry(name, TASKS.get(path.stem, path.stem), tuple(_describe_input(i) for i in d.inputs),
                         tuple(_describe_param(p) for p in d.params), _summary(_doc(d)), path.name))
    for name, (factory, term) in COMPOSITES.items():
        path, d = _decls()[term]
        out.append(Entry(name, TASKS[path.stem], ("phi: fn", "x", "y"),
                         ("weights: dict = all layers 1", *(_describe_param(p) for p in d.params)),
                         _summary(" ".join((factory.__doc__ or "").split())), path.name))
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


__all__ = ["Entry", "LayerSum", "RandomInterpolation", "build", "catalog", "format_catalog", "get", "names",
           "perceptual_loss", "style_loss"]
