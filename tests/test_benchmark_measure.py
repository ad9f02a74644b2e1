"""benchmarks/measure.py: the bandwidth column's two numbers, checked against published device figures and
counted by hand (the GPU itself is not needed: its properties are faked)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import measure


@pytest.mark.parametrize("clock_khz, bus_bits, published_tb_s", [
    (2_619_000, 5120, 3.35),  # H100 SXM5, HBM3: 3.35 TB/s in NVIDIA's datasheet
    (1_593_000, 5120, 2.04),  # A100 80GB SXM, HBM2e: 2.04 TB/s (2,039 GB/s)
])
def test_peak_bandwidth_from_memory_clock_and_bus(monkeypatch: pytest.MonkeyPatch, clock_khz: int, bus_bits: int,
                                                  published_tb_s: float) -> None:
    """Double data rate: two transfers per clock of bus_bits / 8 bytes."""
    props = types.SimpleNamespace(memory_clock_rate=clock_khz, memory_bus_width=bus_bits)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    peak = measure.peak_bandwidth(torch.device("cuda", 0))
    assert peak == pytest.approx(published_tb_s * 1e12, rel=0.01)


def test_no_peak_bandwidth_off_the_gpu_or_without_the_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    assert measure.peak_bandwidth(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace())
    assert measure.peak_bandwidth(torch.device("cuda", 0)) is None


def test_min_traffic_reads_every_input_twice_and_writes_each_gradient() -> None:
    x = torch.zeros(100, dtype=torch.float32, requires_grad=True)  # 400 bytes, differentiated
    y = torch.zeros(100, dtype=torch.float64)  # 800 bytes, data
    labels = torch.zeros(10, dtype=torch.int64)  # 80 bytes, data
    assert measure.min_traffic([x, y, labels, len]) == 2 * (400 + 800 + 80) + 400  # a callable is no traffic
