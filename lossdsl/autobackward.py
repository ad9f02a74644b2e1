"""Compiled mode's backward="auto": compile both backwards, time each on the first call, keep the faster.

Neither backward wins across the stdlib (lossdsl.compiled.build's docstring has the figures: symbolic is
0.13x autograd's step time for nll_loss and 1.7x for clip_loss), and which wins also depends on the shapes,
the dtype and the device, so a fixed rule would be wrong somewhere. The choice is made per input signature
(lossdsl.compiled.signature) by timing forward + backward on detached copies of the caller's own inputs,
so it costs one extra compilation and a few steps, once per signature and process.

The symbolic variant is a shallow copy of the module (lossdsl.fused swaps the copy's class): both share
the same parameter and buffer dictionaries, so an optimizer stepping the module's learnable parameters,
`.to(device)` and `load_state_dict` reach both.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch

REPS = 5  # timed steps of each variant, interleaved after two warm-up steps each
SLOW_STEP = 1.0  # seconds: a variant this slow in its second warm-up step is timed once


def build(module: torch.nn.Module, compile_as: Callable[..., torch.nn.Module]) -> torch.nn.Module:
    """`module`, compiled with autograd's backward, dispatching each signature to the faster variant.
    compile_as(module, backward) is lossdsl.compiled.build with the caller's other options."""
    twin = compile_as(copy.copy(module), "symbolic")
    if twin.compile_options.get("backward") != "symbolic":  # no symbolic gradient (fn calls): nothing to pick
        return compile_as(module, "autograd")
    base = compile_as(module, "autograd")
    base.backward_choice, base.backward_seconds = {}, {}
    base.compile_options = {**base.compile_options, "backward": "auto"}
    object.__setattr__(base, "_lossdsl_twin", twin)  # not a submodule: it is the same state, not more of it
    base._compiled_call_impl = _dispatch(base, base._compiled_call_impl, twin)
    return base


def _dispatch(base: torch.nn.Module, autograd_call: Callable, twin: torch.nn.Module) -> Callable:
    from .compiled import signature

    variants = {"autograd": autograd_call, "symbolic": twin}

    def run(*args, **kwargs):
        sig = signature(args, kwargs)
        logged = len(twin.compile_log)
        choice = base.backward_choice.get(sig)
        if choice is None:
            choice, seconds = pick(variants, args, kwargs, base.parameters())
            if seconds:  # untimed (no gradient wanted: an evaluation pass) leaves the choice to a later call
                base.backward_choice[sig], base.backward_seconds[sig] = choice, seconds
        out = variants[choice](*args, **kwargs)
        if len(twin.compile_log) > logged:  # the twin compiled: base's log is the one users read
            new = twin.compile_log[logged:]
            base.compile_log.extend(new)
            base.compile_seconds += sum(seconds for _, seconds in new)
        return out

    return run


def pick(variants: dict[str, Callable], args: tuple, kwargs: dict, params) -> tuple[str, dict[str, float]]:
    """The variant with the lowest median forward + backward time on these inputs, and every median.
    Without a gradient to compute (grad mode off, nothing requires grad) there is no backward to compare,
    and the first variant is taken untimed."""
    args, kwargs = _detached(args), dict(zip(kwargs, _detached(tuple(kwargs.values())), strict=True))
    wrt = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    wrt += [p for p in params if p.requires_grad]
    first = next(iter(variants))
    if not (wrt and torch.is_grad_enabled()):
        return first, {}
    steps = {name: _step(fn, args, kwargs, wrt) for name, fn in variants.items()}
    for step in steps.values():  # compiles forward and backward; a lazily sized parameter created by this
        step()  # first call recompiles the forward on the second (uncertainty_weighting: 2.8 s)
    warm = {name: step() for name, step in steps.items()}
    reps = 1 if max(warm.values()) > SLOW_STEP else REPS
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            samples[name].append(step())
    medians = {name: statistics.median(xs) for name, xs in samples.items()}
    return min(medians, key=medians.__getitem__), medians


def _detached(values: tuple) -> tuple:
    """Leaves of their own: timing must not reach the caller's graph (the network before the loss)."""
    return tuple(v.detach().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v for v in values)


def _step(fn: Callable, args: tuple, kwargs: dict, wrt: list[torch.Tensor]) -> Callable[[], float]:
    device = next((t.device for t in wrt), torch.device("cpu"))

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True)
        _sync(device)
        return time.perf_counter() - start

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
