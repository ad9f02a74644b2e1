"""Peak memory of one call, on the CPU or a GPU: what backward="auto" weighs beside time (lossdsl.autobackward),
and what benchmarks/ reports.

Why the profiler on the CPU: torch keeps allocator statistics for CUDA only. The CPU allocator reports each
allocation and free to the profiler when it records memory, and Inductor's compiled code allocates through
that same allocator, so the running sum of those records over one call is the call's peak above what was
live before it, for eager and compiled code alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch


def peak_bytes(run: Callable[[], object], device: torch.device) -> int | None:
    """Bytes allocated at the highest point of one call of `run`, above what was live before it; None when
    the profiler cannot say (a torch without its memory records). On a GPU this resets the device's peak
    statistics (torch.cuda.reset_peak_memory_stats), which a caller tracking its own peak will see: the
    allocator keeps one high-water mark, and no peak of a part can be read without resetting it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        return _cpu_peak(run)
    except (AttributeError, ImportError, RuntimeError):
        return None


def _cpu_peak(run: Callable[[], object]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    current = peak = 0
    for _, size in sorted(sizes):
        current += size
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null: some torch builds' profiler (kineto) writes a line to it at each
    start and stop, from C++, which a training script calling backward="auto" should not print. The call
    profiled has run before (timed), so its own warnings have been shown."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
