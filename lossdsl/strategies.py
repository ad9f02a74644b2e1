"""Random inputs by kind, and random well-formed formulas: for `lossdsl.verify` and for users' own tests.

One table (`DOMAINS`) says where values of each input kind live; `sample` draws from it with a torch
Generator (what `verify` uses: reproducible, no test framework needed) and the hypothesis strategies
(`tensors`, `inputs`) draw from the same table, so a property test explores the same domains.
Domains stay away from the edges where losses are not differentiable (prob in [0.05, 0.95], positive >= 0.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import strategies as st

from . import ir

# kind -> ("float", low, high) | ("choice", values) | ("int", low, high inclusive; None: the indexed axis)
DOMAINS: dict[str, tuple] = {
    "real": ("float", -2.0, 2.0),
    "logits": ("float", -3.0, 3.0),
    "prob": ("float", 0.05, 0.95),
    "positive": ("float", 0.2, 2.0),
    "binary": ("choice", (0.0, 1.0)),
    "sign": ("choice", (-1.0, 1.0)),
    "int": ("int", 0, 3),
    "count": ("int", 0, 5),
    "index": ("int", 0, None),
}


def _domain(kind: str, classes: int | None) -> tuple:
    spec = DOMAINS.get(kind, DOMAINS["real"])
    if spec[0] == "int" and spec[2] is None:
        return ("int", 0, max((classes or 1) - 1, 0))
    return spec


def sample(kind: str, shape: tuple[int, ...], gen: torch.Generator, classes: int | None = None) -> torch.Tensor:
    """A tensor of the kind's domain (float64 for real kinds, int64 for integer kinds)."""
    spec = _domain(kind, classes)
    if spec[0] == "float":
        return spec[1] + (spec[2] - spec[1]) * torch.rand(shape, generator=gen, dtype=torch.float64)
    if spec[0] == "choice":
        pick = torch.randint(0, len(spec[1]), shape, generator=gen)
        return torch.tensor(spec[1], dtype=torch.float64)[pick]
    return torch.randint(spec[1], spec[2] + 1, shape, generator=gen)


def elements(kind: str, classes: int | None = None) -> st.SearchStrategy:
    """Hypothesis strategy for one element of the kind."""
    spec = _domain(kind, classes)
    if spec[0] == "float":
        return st.floats(spec[1], spec[2], allow_nan=False, allow_infinity=False)
    if spec[0] == "choice":
        return st.sampled_from(spec[1])
    return st.integers(spec[1], spec[2])


def tensors(kind: str, shape: tuple[int, ...], classes: int | None = None) -> st.SearchStrategy:
    """Hypothesis strategy for a tensor of the given shape and kind."""
    n = math.prod(shape)
    dtype = torch.int64 if _domain(kind, classes)[0] == "int" else torch.float64
    return st.lists(elements(kind, classes), min_size=n, max_size=n).map(
        lambda xs: torch.tensor(xs, dtype=dtype).reshape(shape))


# ---- shapes of a loss's inputs
def shapes(loss: ir.LossIR, sizes: dict[str, int], group: tuple[int, ...] = (2,),
           loose: tuple[int, ...] = (3, 2)) -> dict[str, tuple[int, ...]]:
    """Input shapes from axis sizes (by canonical axis); a *group takes `group`, undeclared inputs `loose`."""
    out = {}
    for i in loss.inputs:
        if i.kind == "fn":
            continue
        if i.axes is None:
            out[i.name] = loose
            continue
        dims: list[int] = []
        for a in i.axes:
            dims += list(group) if a.startswith("*") else [sizes[loss.axis_of.get(a, a)]]
        out[i.name] = tuple(dims)
    return out


def axes_of(loss: ir.LossIR) -> list[str]:
    return sorted({c for c in loss.axis_of.values() if not c.startswith("*")})


def classes_of(loss: ir.LossIR, i: ir.Input, sizes: dict[str, int]) -> int | None:
    return sizes.get(loss.axis_of.get(i.kind_arg, i.kind_arg)) if i.kind_arg else None


def sample_inputs(loss: ir.LossIR, gen: torch.Generator, sizes: dict[str, int] | None = None,
                  low: int = 2, high: int = 4, params: dict | None = None,
                  sentinel_rate: float = 0.25) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Random inputs for every tensor input of the loss (and the axis sizes chosen).

    An index input compared against a sentinel (`ignore_index`) holds that value at about `sentinel_rate`
    of its positions, so the masked paths are exercised too."""
    sizes = dict(sizes or {})
    for a in axes_of(loss):
        sizes.setdefault(a, int(torch.randint(low, high + 1, (), generator=gen)))
    out = {name: sample(loss.input(name).kind, shape, gen, classes_of(loss, loss.input(name), sizes))
           for name, shape in shapes(loss, sizes).items()}
    for name, values in loss.sentinels.items():
        for v in (_sentinel_value(loss, v, params or {}) for v in values):
            if v is not None and name in out:
                hit = torch.rand(out[name].shape, generator=gen) < sentinel_rate
                out[name] = torch.where(hit, torch.full_like(out[name], v), out[name])
    return out, sizes


def _sentinel_value(loss: ir.LossIR, v: int | str, params: dict) -> int | None:
    if isinstance(v, int):
        return v
    p = loss.param(v)
    value = params.get(v, p.default if p is not None else None)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@st.composite
def inputs(draw: Callable, loss: ir.LossIR, low: int = 2, high: int = 4) -> dict[str, torch.Tensor]:
    """Hypothesis strategy: a dict of inputs for `loss` (a LossIR or a Loss), axis sizes drawn too."""
    loss = getattr(loss, "ir", loss)
    sizes = {a: draw(st.integers(low, high)) for a in axes_of(loss)}
    group = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    return {name: draw(tensors(loss.input(name).kind, shape, classes_of(loss, loss.input(name), sizes)))
            for name, shape in shapes(loss, sizes, group).items()}


# ---- random formulas from the grammar (for property tests of the compiler and of the gradient)
FORMULA_HEADER = "loss random(x[n, c], z[n, c]: positive, w[n], y[n]: index(c)):\n    "
UNARY = ("sin({})", "cos({})", "tanh({})", "sigmoid({})", "softplus({})", "logsigmoid({})", "exp(tanh({}))",
         "log(1 + ({})^2)", "sqrt(1 + ({})^2)", "|{}|", "relu({})", "erf({})", "({})^2", "-({})")
BINARY = ("({}) + ({})", "({}) - ({})", "({}) * ({})", "({}) / (1 + ({})^2)", "max({}, {})", "min({}, {})",
          "where({0} > {1}, {0}, 2*{1})", "[{0} > 0] * ({1})", "({0} if {1} < 0.5 else -{1})")
OVER_ALL = "max({})"  # reduces every index, n too: multiplied back by an n (or nc) tensor
REDUCE = ("sum_c({})", "mean_c({})", "max_c({})", "min_c({})", "logsumexp_c({})", "norm_c(1 + ({})^2)",
          "prod_c(1 + 0.5*tanh({}))", "sum_{{c != y}}({})", OVER_ALL)
NORMALISE = ("softmax_c({})", "log_softmax_c({})", "normalize_c(1 + ({})^2)")
LEAVES = {"nc": ("x", "z", "x[n, c]", "z^1.5", "log(z)", "0.5*x", "sum_{m <= c}(x[n, m])", "max_{m >= c}(z[n, m])",
                 "logsumexp_{m <= c}(x[n, m])"),
          "n": ("w", "x[n, y]", "z[n, 0]", "w^2")}


@st.composite
def formula_exprs(draw: Callable, free: str = "nc", depth: int = 3) -> str:
    """An expression over x[n, c], z[n, c] (positive), w[n], y[n] (index) whose free indices are `free`."""
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(LEAVES[free]))
    form = draw(st.sampled_from(("unary", "binary", "reduce", "normalise") if free == "nc" or depth > 1
                                else ("unary", "binary")))
    if form == "unary":
        return draw(st.sampled_from(UNARY)).format(draw(formula_exprs(free, depth - 1)))
    if form == "binary":
        other = draw(st.sampled_from(("n", free)))
        a = draw(formula_exprs(free, depth - 1))
        b = draw(formula_exprs(other, depth - 1).filter(lambda t: t != a))  # a - a is a constant, not a test
        a, b = (a, b) if draw(st.booleans()) else (b, a)
        return draw(st.sampled_from(BINARY)).format(a, b)
    if form == "reduce":
        reducer = draw(st.sampled_from(REDUCE))
        text = reducer.format(draw(formula_exprs("nc", depth - 1)))
        if free == "nc":
            return f"({text}) * x"
        return f"({text}) * w" if reducer == OVER_ALL else text
    return draw(st.sampled_from(NORMALISE)).format(draw(formula_exprs("nc", depth - 1))) if free == "nc" else \
        draw(formula_exprs(free, depth - 1))


@st.composite
def formulas(draw: Callable, depth: int = 3) -> str:
    """A random loss file text over x[n, c], z[n, c], w[n], y[n] (see `formula_exprs`)."""
    return FORMULA_HEADER + draw(formula_exprs(draw(st.sampled_from(("n", "nc"))), depth))
