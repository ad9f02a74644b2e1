"""What a benchmark case is, and the input generators the cases share (benchmarks/cases*.py).

A generator takes (elements, device, dtype) and returns the loss's inputs, the differentiable ones as leaves
that require grad; `elements` sets the size of the largest input, so "small" and "large" mean the same
thing for every loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor
EMBED = 128  # width of the embedding cases: rows = n / EMBED
Make = Callable[[int, torch.device, torch.dtype], tuple[Tensor, ...]]


@dataclass
class Case:
    make: Make  # (elements, device, dtype) -> inputs, the differentiable ones with requires_grad
    textbook: Callable[..., Tensor]
    builtin: Callable[..., Tensor] | None = None
    params: dict = field(default_factory=dict)
    builtin_name: str = "torch"


def leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(True)


def pair(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    return leaf(torch.randn(n, device=dev, dtype=dt)), torch.randn(n, device=dev, dtype=dt)


def logits_binary(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    return leaf(torch.randn(n, device=dev, dtype=dt)), (torch.rand(n, device=dev) > 0.5).to(dt)


def probs_binary(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    return leaf(torch.rand(n, device=dev, dtype=dt) * 0.98 + 0.01), (torch.rand(n, device=dev) > 0.5).to(dt)


def segmentation(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    side = max(int(math.sqrt(n / 16)), 2)  # [4, 4, side, side]
    p = torch.rand(4, 4, side, side, device=dev, dtype=dt)
    return leaf(p), (torch.rand(4, 4, side, side, device=dev) > 0.5).to(dt)


def classes(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    c = 1024 if n >= 1 << 16 else 64
    rows = max(n // c, 1)
    return leaf(torch.randn(rows, c, device=dev, dtype=dt)), torch.randint(c, (rows,), device=dev)


def log_probs(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    x, y = classes(n, dev, dt)
    return leaf(torch.log_softmax(x.detach(), 1)), y


def embeddings(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """n counts similarity-matrix entries: rows x rows with rows = sqrt(n), d = 128."""
    rows = max(int(math.sqrt(n)), 4)
    return leaf(torch.randn(rows, 128, device=dev, dtype=dt)), leaf(torch.randn(rows, 128, device=dev, dtype=dt))


def dist_pair(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    x = torch.log_softmax(torch.randn(max(n // 64, 1), 64, device=dev, dtype=dt), 1)
    return leaf(x), torch.softmax(torch.randn_like(x), 1)


def sign_targets(shape: tuple[int, ...], dev: torch.device, dt: torch.dtype) -> Tensor:
    """Targets in {-1, +1} (hinge, margin-ranking and cosine-embedding losses)."""
    return torch.where(torch.rand(shape, device=dev) > 0.5, 1.0, -1.0).to(dt)


def scores_signs(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    return leaf(torch.randn(n, device=dev, dtype=dt)), sign_targets((n,), dev, dt)


def triplets(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Anchor, positive and negative embeddings [n / EMBED, EMBED]."""
    rows = max(n // EMBED, 1)
    return tuple(leaf(torch.randn(rows, EMBED, device=dev, dtype=dt)) for _ in range(3))
