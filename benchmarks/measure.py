"""Timing, peak memory and bandwidth of one forward + backward, the same way for every variant."""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lossdsl import peak_memory as memory

SLOW = 3.0  # seconds: a variant this slow after warm-up is timed once (it would stall the run)


@dataclass
class Timing:
    median: float  # seconds per forward + backward
    spread: float  # (p75 - p25) / median: the noise of this measurement
    first: float  # the first call (compilation, for compiled mode)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory() -> str:
    """Keeps freed heap memory in the process (glibc): the setting every variant is timed under.

    glibc hands a freed block of more than its trim threshold back to the OS, and the next call page-faults
    its pages in again: 4M float32 gradients, ~1000 faults a step. Whether that happens depends on the
    process's history, not on the code timed: after torch.compile has run, torch's own F.nll_loss goes from
    0.33 to 1.2 ms a step here, and a row's ratio followed the order the variants first ran in. Fixing the
    thresholds (allocations up to 32 MB from the heap, no trimming) is what jemalloc or tcmalloc, which
    PyTorch's CPU tuning guide recommends, do by default. Returns what was set, for the header."""
    name = ctypes.util.find_library("c")
    if name is None:
        return "system allocator (not glibc)"
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return "system allocator (no mallopt)"
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    return "glibc: freed memory retained (mmap threshold 32 MB, no trim)" if ok else "system allocator"


def tensors(inputs: Sequence) -> list[torch.Tensor]:
    """The tensor inputs: a loss may also take a function (wgan_gp_d_loss's critic), which is neither
    differentiated nor counted as traffic."""
    return [t for t in inputs if isinstance(t, torch.Tensor)]


def step(fn: Callable, inputs: Sequence) -> Callable[[], None]:
    """One forward + backward: gradients of the scalar loss for every input that requires them."""
    diff = [t for t in tensors(inputs) if t.requires_grad]

    def run() -> None:
        out = fn(*inputs)
        if diff:
            torch.autograd.grad(out, diff)

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(runs: dict[str, Callable[[], None]], device: torch.device, budget: float = 1.0,
               max_rounds: int = 40) -> dict[str, Timing]:
    """Median time of each run, measured in interleaved rounds (one call of each per round) so that the
    load of a shared machine falls on every variant alike; a variant that raises is left out."""
    first: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    for key, run in runs.items():
        try:
            first[key] = _once(run, device)
            samples[key] = [_once(run, device)]
        except Exception as err:  # reported by the caller as missing
            print(f"    {key} failed: {type(err).__name__}: {str(err)[:120]}")
    repeat = [k for k, xs in samples.items() if xs[0] < SLOW]  # a pathologically slow variant: one sample
    deadline = time.perf_counter() + budget * max(len(repeat), 1)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < max_rounds):
        for key in repeat:
            samples[key].append(_once(runs[key], device))
        rounds += 1
    out = {}
    for key, xs in samples.items():
        med = statistics.median(xs)
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [med, med, med]
        out[key] = Timing(med, (q[2] - q[0]) / med, first[key])
    return out


def _once(run: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one call above what was live before it (after a warm-up call): lossdsl's
    own measure, the one backward="auto" weighs (lossdsl.peak_memory)."""
    run()
    peak = memory.peak_bytes(run, device)
    if peak is None:
        raise RuntimeError("this torch's profiler records no CPU allocations")
    return peak


def peak_bandwidth(device: torch.device) -> float | None:
    """The device's peak memory bandwidth in bytes/s (GPU only), from its memory clock and bus width."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def min_traffic(inputs: Sequence) -> int:
    """Bytes a perfect fused kernel moves: read every input twice (forward, backward), write each gradient."""
    reads = 2 * sum(t.numel() * t.element_size() for t in tensors(inputs))
    writes = sum(t.numel() * t.element_size() for t in tensors(inputs) if t.requires_grad)
    return reads + writes
