"""`lossdsl bench NAME`: one loss, forward + backward, as lossdsl's modes and torch's built-in.

A quick comparison for a user choosing a mode, not the project's benchmark suite: inputs are drawn by kind
at one size, time is the median of `repeat` runs after warm-up, and memory is the peak of one forward +
backward above what was live before it (lossdsl.peak_memory, what backward="auto" weighs): it counts what
autograd saves, the backward's temporaries and the gradients, and so compares in_forward, which holds its
gradients from the forward on, with the others.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import ir, peak_memory
from .api import Loss
from .errors import KindError, ParameterError

DIFFERENTIABLE = ("real", "logits", "prob", "positive")
DATA = ("target", "targets")  # labels, as in torch's losses: not differentiated (torch's BCE refuses to)
# variant -> Loss.compile keywords; "torch" is torch.nn.functional's function of the same name
OPTIONS = {"eager": {}, "fused": {"mode": "fused"}, "compiled": {"mode": "compiled"},
         "compiled_sym": {"mode": "compiled", "backward": "symbolic"},
         "compiled_fwd": {"mode": "compiled", "backward": "in_forward"},
         "compiled_auto": {"mode": "compiled", "backward": "auto"}}
VARIANTS = (*OPTIONS, "torch")
DEFAULT_VARIANTS = ("eager", "compiled", "torch")
OTHER = 16  # the size of every axis but the batch


def sample_inputs(loss: Loss, size: int, gen: torch.Generator) -> tuple[list[torch.Tensor], dict[str, int]]:
    """Inputs by kind: the first input's first axis is the batch (`size`), other axes 16, groups (16,)."""
    canon = loss.ir.axis_of
    first = next((i.axes[0] for i in loss.inputs if i.axes), None)
    batch = canon.get(first, first) if first else None

    def dim(axis: str) -> int:
        return size if canon.get(axis, axis) == batch else OTHER

    out = []
    for i in loss.inputs:
        if i.kind == "fn":
            out.append(stand_in(loss, i.name))
            continue
        shape = (size, OTHER) if i.axes is None else tuple(dim(a) for a in i.axes)
        out.append(_draw(i.kind, shape, dim(i.kind_arg) if i.kind_arg else OTHER, gen))
    sizes = {a: dim(a) for a in loss.axis_keywords()}
    return out, sizes


def stand_in(loss: Loss, name: str) -> Callable:
    """A callable for the `fn` input `name`, fitted to how the formula calls it: with two arguments the
    Euclidean distance of rows (triplet_margin_with_distance_loss's distance, torch's default there), with
    one tanh (a feature map shaped like its input). lossdsl.verify uses it too, so both tools call a loss alike."""
    arity = max((len(call.args[1]) for call in loss.ir.expr.atoms(ir.FnCall) if str(call.args[0]) == name),
                default=1)
    return torch.nn.PairwiseDistance() if arity == 2 else torch.nn.Tanh()


def _draw(kind: str, shape: tuple[int, ...], classes: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen)
    table = {"prob": 0.05 + 0.9 * u, "positive": 0.2 + u, "binary": (u > 0.5).float(),
             "sign": torch.where(u > 0.5, 1.0, -1.0), "int": (u * 4).long(), "count": (u * 4).long(),
             "index": (u * classes).long().clamp(max=classes - 1)}
    return table.get(kind, torch.randn(shape, generator=gen))


def timed(call: Callable[[], torch.Tensor], repeat: int) -> float:
    """Median milliseconds of forward + backward."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call().backward()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# stdlib fn inputs that torch's function of the same name takes by keyword, under its own name
TORCH_KEYWORD = {"distance": "distance_function"}


def variant(loss: Loss, which: str, params: dict, sizes: dict) -> Callable | None:
    if which == "torch":
        builtin = getattr(F, loss.name, None)
        by_keyword = {k: TORCH_KEYWORD[i.name] for k, i in enumerate(loss.inputs)
                      if i.kind == "fn" and i.name in TORCH_KEYWORD}
        if builtin is None or not by_keyword:
            return builtin

        def call(*args: object) -> torch.Tensor:  # timed: nothing computed here that need not be
            return builtin(*(a for k, a in enumerate(args) if k not in by_keyword),
                           **{key: args[k] for k, key in by_keyword.items()})

        return call
    return loss.compile(**OPTIONS[which], **{**sizes, **params})


def _checked(size: int, repeat: int, variants: list[str]) -> None:
    """Mistakes in the request, found before any work: every variant would fail the same way."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ParameterError(f"unknown variant '{unknown[0]}'; use {', '.join(VARIANTS)}")
    for what, value in (("size", size), ("repeat", repeat)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{what} must be a whole number of at least 1, got {value!r}")


def run(loss: Loss, *, size: int = 4096, repeat: int = 20, variants: list[str] | None = None,
        params: dict | None = None, report: Callable[[str], None] = print) -> str:
    """The table of `lossdsl bench`. A bad size, repeat, variant or parameter (a misspelt name, a value its
    constraint refuses) raises before any variant runs: a 'failed' row is for a variant that cannot run."""
    variants = variants or list(DEFAULT_VARIANTS)
    params = params or {}
    _checked(size, repeat, variants)
    gen = torch.Generator().manual_seed(0)
    inputs, sizes = sample_inputs(loss, size, gen)
    loss.compile(**{**sizes, **params})  # raises on a parameter the loss lacks or a value it refuses
    args = [t.requires_grad_() if isinstance(t, torch.Tensor) and i.kind in DIFFERENTIABLE and i.name not in DATA
            else t for t, i in zip(inputs, loss.inputs, strict=True)]
    if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in args):
        raise KindError(f"'{loss.name}' has no differentiable input to time a backward pass through")
    shapes = ", ".join(f"{i.name}{list(t.shape)}" for i, t in zip(loss.inputs, args, strict=True)
                       if isinstance(t, torch.Tensor))
    rows = [f"bench {loss.name}: {shapes}; forward + backward, median of {repeat} runs (CPU threads: "
            f"{torch.get_num_threads()})", f"  {'variant':<13} {'ms':>8} {'peak memory':>20}  note"]
    for k, which in enumerate(variants, 1):
        report(f"[{k}/{len(variants)}] {which}")
        rows.append(_row(loss, which, args, params, sizes, repeat, report))
    return "\n".join(rows)


def _row(loss: Loss, which: str, args: list, params: dict, sizes: dict, repeat: int, report) -> str:
    try:
        fn = variant(loss, which, params, sizes)
        if fn is None:
            return f"  {which:<13} {'n/a':>8} {'':>20}  torch.nn.functional has no {loss.name}"
        with warnings.catch_warnings():  # torch.compile's tracing notes are not the user's concern here
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            fn(*args).backward()  # warm-up; compiles in compiled mode
            first = time.perf_counter() - start
            fn(*args).backward()
        compiles = which.startswith("compiled")
        if compiles:
            report(f"    compiled in {first:.1f} s")
        ms = timed(lambda: fn(*args), repeat)
        peak = peak_memory.peak_bytes(lambda: fn(*args).backward(), torch.device("cpu"))
        mem = f"{peak / 1024:17.1f} KiB" if peak is not None else f"{'n/a':>21}"
        note = f"first call {first:.1f} s" if compiles else ""
        chosen = next(iter(getattr(fn, "backward_choice", {}).values()), None)  # auto's, per signature
        if chosen:
            note += f"; backward={chosen}"
        return f"  {which:<13} {ms:8.3f} {mem}  {note}"
    except Exception as err:  # a variant that cannot run is reported, not fatal: the others still compare
        return f"  {which:<13} {'failed':>8} {'':>20}  {type(err).__name__}: {str(err).splitlines()[0][:80]}"
