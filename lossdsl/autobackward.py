"""Compiled mode's backward="auto": compile each backward, time each on the first call, keep the fastest.

No backward wins across the stdlib (lossdsl.compiled.build's docstring has the figures: symbolic is
0.13x autograd's step time for nll_loss and 1.7x for clip_loss; the gradient computed in the forward,
"in_forward", is the fastest on 50 of 70 benchmark cases but 2x slower on focal_loss), and which wins also
depends on the shapes, the dtype and the device, so a fixed rule would be wrong somewhere. The choice is
made per input signature (lossdsl.compiled.signature) by timing forward + backward on detached copies of
the caller's own inputs, so it costs two extra compilations and a few steps, once per signature.

Choices are remembered on disk (lossdsl.cache, kind "auto"), keyed by `identity` (the generated source,
the fixed parameters' values, the compile options, torch's version and the machine) and the signature:
a later process with the same loss and inputs compiles only the chosen variant and times nothing. A
stored choice is a preference, not a result: a stale one costs speed, never correctness.

Time is not all that is weighed: a variant whose peak memory in a step (lossdsl.peak_memory) is more than
MEMORY_SLACK times the smallest, and more than MEMORY_FLOOR above it, is not kept however fast. Over the
ninth full benchmark run's figures (70 losses, 4M float32, CPU) the rule changes three choices, the same
three for any slack from 1.05 to 2: multilabel_margin_loss (autograd's 184.6 MB at 71.9 ms against
symbolic's 33.5 MB at 76.0), gram_distance (autograd's 50.3 MB at 101 ms against 18.9 MB at 116) and
combo_loss (in_forward's 50.3 MB at 12.6 ms against symbolic's 16.8 MB at 14.5): at most 15% slower for
2.7-5.5x less memory. The floor keeps a few kilobytes on a small input from deciding.

The symbolic and in_forward variants are shallow copies of the module (lossdsl.fused swaps a copy's
class): all share the same parameter and buffer dictionaries, so an optimizer stepping the module's
learnable parameters, `.to(device)` and `load_state_dict` reach every variant.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from . import cache, peak_memory

REPS = 5  # timed steps of each variant, interleaved after two warm-up steps each
CHOICES = ("autograd", "symbolic", "in_forward")
SLOW_STEP = 1.0  # seconds: a variant this slow in its second warm-up step is timed once
MEMORY_SLACK = 1.25  # a variant above this times the smallest peak (and MEMORY_FLOOR above it) is not kept
MEMORY_FLOOR = 1 << 20  # bytes


def build(module: torch.nn.Module, compile_as: Callable[..., torch.nn.Module],
          ident: Callable[[], str] | None = None) -> torch.nn.Module:
    """`module`, compiled with autograd's backward, dispatching each signature to the fastest variant.
    compile_as(module, backward) is lossdsl.compiled.build with the caller's other options; ident()
    (see `identity`) keys the choices stored on disk, none without it. It is asked when a signature is
    decided, so parameter values changed after building count. A loss that does not reduce to a scalar
    has no in_forward variant (compiled.build gives it "symbolic")."""
    twins = {how: compile_as(copy.copy(module), how) for how in CHOICES[1:]}
    twins = {how: twin for how, twin in twins.items() if twin.compile_options.get("backward") == how}
    if not twins:  # no symbolic gradient (fn calls): nothing to pick
        return compile_as(module, "autograd")
    base = compile_as(module, "autograd")
    base.backward_choice, base.backward_seconds, base.backward_cached = {}, {}, set()
    base.backward_peak_bytes = {}
    base.compile_options = {**base.compile_options, "backward": "auto"}
    object.__setattr__(base, "_lossdsl_twins", twins)  # not submodules: the same state, not more of it
    base._compiled_call_impl = _dispatch(base, base._compiled_call_impl, twins, ident)
    return base


def identity(loss, module: torch.nn.Module, options: dict) -> str:
    """What a stored choice depends on besides the signature: the generated source, the values of the
    parameters that are not learned (a learned one changes every step, and its shape is in the source's
    checks), the reduction, the compile options, torch's version, the backwards it was chosen among (a
    choice stored before in_forward was one is not reused) and the memory rule; `_entry` adds the machine."""
    py = loss._py_names
    h = hashlib.sha256(loss._source.encode())
    for part in (module.reduction, module.validate, sorted(options.items()), torch.__version__, CHOICES,
                 MEMORY_SLACK, MEMORY_FLOOR):
        h.update(repr(part).encode() + b"\0")
    for p in loss.parameters:
        value = getattr(module, py[p.name])
        if isinstance(value, torch.Tensor):
            value = None if p.type == "learnable" else _tensor_digest(value)
        h.update(p.name.encode() + b"\0" + repr(value).encode() + b"\0")
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> tuple:
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return t.dtype, tuple(t.shape), hashlib.sha256(data).hexdigest()


def _entry(ident: str, sig: tuple) -> str:
    """The cache key of one choice. The machine is part of it, since which backward wins depends on the
    hardware: the CPU and its threads, and the GPU when the inputs are on one (asked only then, so that
    a CPU run never initialises CUDA)."""
    on_cuda = any(isinstance(part, tuple) and part[2] == "cuda" for part in sig)  # (shape, dtype, device type)
    gpu = torch.cuda.get_device_name() if on_cuda else None
    machine = platform.machine(), _cpu_model(), os.cpu_count(), torch.get_num_threads(), gpu
    return cache.key(ident, repr(sig), repr(machine))


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name on Linux (platform.processor() there is `uname -p`: a subprocess, and mostly
    "x86_64" or "unknown"), else what platform reports."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                platform.processor())


def _stored(ident: str, sig: tuple) -> dict | None:
    """The stored choice for `sig`; none without an identity or with the cache off."""
    if not (ident and cache.enabled()):
        return None
    hit = cache.load(_entry(ident, sig), "auto")
    return hit if isinstance(hit, dict) and hit.get("choice") in CHOICES else None


def _store(ident: str, sig: tuple, found: Pick) -> None:
    if ident and cache.enabled():
        cache.store(_entry(ident, sig), found._asdict(), "auto")


def _dispatch(base: torch.nn.Module, autograd_call: Callable, twins: dict[str, torch.nn.Module],
              ident: Callable[[], str] | None) -> Callable:
    from .compiled import signature

    # each twin's compiled call, past its nn.Module dispatch (base's ran the user's hooks)
    variants = {"autograd": autograd_call, **{how: twin._compiled_call_impl for how, twin in twins.items()}}

    def decide(sig: tuple, args: tuple, kwargs: dict) -> str:
        """The stored choice, else the measured one (stored when measured; an evaluation pass, with no
        gradient to time, leaves the choice to a later call)."""
        key = ident() if ident is not None else ""
        stored = _stored(key, sig)
        if stored is not None and stored["choice"] in variants:
            base.backward_cached.add(sig)
            found = Pick(stored["choice"], stored["seconds"], stored.get("peak_bytes", {}))
        else:
            found = pick(variants, args, kwargs, base.parameters())
            if found.seconds:
                _store(key, sig, found)
        if found.seconds:
            base.backward_choice[sig], base.backward_seconds[sig] = found.choice, found.seconds
            base.backward_peak_bytes[sig] = found.peak_bytes
        return found.choice

    def run(*args, **kwargs):
        """The chosen variant's compiled call; on a decided signature only that twin can compile (a changed
        parameter value), so only its log is read. What this wrapper still costs: ~10 us a call over the
        chosen variant alone (nll_loss, 4 x 1024)."""
        if torch.compiler.is_compiling():  # inside a caller's torch.compile, which compiles the loss itself
            return autograd_call(*args, **kwargs)
        sig = signature(args, kwargs)
        choice = base.backward_choice.get(sig)
        chosen = (twins.get(choice),) if choice else twins.values()
        logged = [(twin, len(twin.compile_log)) for twin in chosen if twin is not None]
        out = variants[choice or decide(sig, args, kwargs)](*args, **kwargs)
        for twin, before in logged:  # a twin compiled: base's log is the one users read
            new = twin.compile_log[before:]
            base.compile_log.extend(new)
            base.compile_seconds += sum(seconds for _, seconds in new)
        return out

    return run


class Pick(NamedTuple):
    choice: str
    seconds: dict[str, float]  # each variant's median forward + backward
    peak_bytes: dict[str, int]  # each variant's peak in one step; empty where it could not be measured


def pick(variants: dict[str, Callable], args: tuple, kwargs: dict, params) -> Pick:
    """The variant to keep for these inputs (see `choose`), with every variant's median time and peak memory.
    Without a gradient to compute (grad mode off, nothing requires grad) there is no backward to compare,
    and the first variant is taken unmeasured."""
    args, kwargs = _detached(args), dict(zip(kwargs, _detached(tuple(kwargs.values())), strict=True))
    wrt = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    wrt += [p for p in params if p.requires_grad]
    if not (wrt and torch.is_grad_enabled()):
        return Pick(next(iter(variants)), {}, {})
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
    peaks = {name: peak_memory.peak_bytes(step, wrt[0].device) for name, step in steps.items()}
    measured = {} if None in peaks.values() else peaks
    if not measured:
        warnings.warn("lossdsl: backward='auto' could not measure peak memory here (this torch's profiler "
                      "records no CPU allocations) and chose by time alone", RuntimeWarning, stacklevel=4)
    return Pick(choose(medians, measured), medians, measured)


def choose(seconds: dict[str, float], peaks: dict[str, int]) -> str:
    """The fastest variant of those whose peak is within MEMORY_SLACK (or MEMORY_FLOOR bytes) of the
    smallest; the fastest of all when the peaks are unknown."""
    if peaks:
        least = min(peaks.values())
        seconds = {name: s for name, s in seconds.items()
                   if peaks[name] <= max(least * MEMORY_SLACK, least + MEMORY_FLOOR)}
    return min(seconds, key=seconds.__getitem__)


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
