"""Shared test helpers: float64 by default, deterministic seeds, and the LANGUAGE.md examples verbatim.

Hypothesis runs derandomized by default, so the suite (and CI) tests the same examples every time; new
inputs are searched with `pytest --hypothesis-profile=explore`, and what that finds is pinned with
@example in the test it broke."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("deterministic")

LANGUAGE_MD = Path(__file__).resolve().parents[2] / "shared" / "LANGUAGE.md"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """lossdsl's disk cache in an empty directory of its own: tests that count compilations, pipeline runs
    or backward="auto" timings must not find what an earlier run of the suite stored."""
    monkeypatch.setenv("LOSSDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LOSSDSL_CACHE", raising=False)
    return tmp_path


def generated_globals(module: torch.nn.Module) -> dict:
    """The namespace of a module's generated source: its helpers (_Expm1, _LogCosh, _compiling) live there."""
    return inspect.getmodule(type(module)).__dict__


def grads(out: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of a scalar (or summed) output with respect to the given leaf tensors."""
    return torch.autograd.grad(out.sum(), inputs, allow_unused=False)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol, equal_nan=True)


class AtenOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op run, as (name, numel of the largest tensor it returns) in `ops`, and the largest
    such numel. Unlike TorchCalls it sees inside autograd's backward (a custom Function's too) and inside
    composite ops such as einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.largest, self.ops = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        numel = max((t.numel() for t in (out if isinstance(out, (tuple, list)) else (out,))
                     if isinstance(t, torch.Tensor)), default=0)
        self.ops.append((func.overloadpacket.__name__, numel))
        self.largest = max(self.largest, numel)
        return out


class TorchCalls(torch.overrides.TorchFunctionMode):
    """Records the torch functions run inside it: (name, positional args) in `calls`, names in `names`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, "__name__", str(func)), args))
        return func(*args, **(kwargs or {}))
