"""lossdsl.peak_memory: the peak of one call, checked against tensors of known size."""

from __future__ import annotations

import os

import pytest
import torch

from lossdsl import peak_memory

MB = 1 << 20
CPU = torch.device("cpu")


def _one_then_another() -> None:
    a = torch.empty(MB, dtype=torch.float32)  # 4 MB
    del a
    b = torch.empty(MB // 2, dtype=torch.float32)  # 2 MB, after a is freed
    del b


def _both_at_once() -> None:
    a = torch.empty(MB, dtype=torch.float32)
    b = torch.empty(MB // 2, dtype=torch.float32)
    del a, b


@pytest.mark.parametrize(("run", "expected"), [(_one_then_another, 4 * MB), (_both_at_once, 6 * MB)])
def test_the_peak_is_the_most_live_at_once(run, expected: int) -> None:
    peak = peak_memory.peak_bytes(run, CPU)
    assert peak is not None and expected <= peak < expected + 64 * 1024


def test_compiled_code_allocations_count() -> None:
    """Inductor's buffers come from the same CPU allocator: the output (4 MB) and no more than a second
    buffer's worth."""
    f = torch.compile(lambda x: (x * 2).exp())
    x = torch.randn(MB)
    f(x)
    peak = peak_memory.peak_bytes(lambda: f(x), CPU)
    assert peak is not None and 4 * MB <= peak <= 8 * MB + 64 * 1024


def test_what_is_written_to_stderr_inside_is_hidden(capfd: pytest.CaptureFixture) -> None:
    with peak_memory._quiet_stderr():
        os.write(2, b"profiler chatter\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_peak() -> None:
    dev = torch.device("cuda")
    peak = peak_memory.peak_bytes(lambda: torch.empty(MB, device=dev, dtype=torch.float32), dev)
    assert peak == 4 * MB
