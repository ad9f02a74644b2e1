"""Opaque builtins: named primitives the language can call but not express (see docs/builtins.md).

A builtin is a torch function over whole tensors. The front end lowers `name(args...)` to an opaque call,
the emitter imports the function from here, and the loss labels the result's axes as it does for an `fn`
input (`ctc_nll(lp, y, il, tl, blank)[n]`). Everything around the call (masks, reductions) stays in the
language. Builtins are a last resort: one exists only when the mathematics is a dynamic program or another
algorithm with no closed form over indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Builtin:
    """A registered primitive: its torch implementation and how a loss calls it."""

    name: str
    function: Callable[..., Tensor]
    arity: int
    signature: str  # as written in a loss, with the layout of each argument and of the result
    doc: str


def _shift(alpha: Tensor, k: int) -> Tensor:
    """alpha moved k states to the right along dim 1, zeros entering (the CTC transitions s-1 and s-2)."""
    return torch.nn.functional.pad(alpha, (k, 0))[:, : alpha.shape[1]]


def _extended(targets: Tensor, target_lengths: Tensor, blank: int, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Labels with blanks interleaved (b, y1, b, y2, ..., b), the states in use, and where a skip is allowed."""
    n, s = targets.shape
    ext = torch.full((n, 2 * s + 1), blank, dtype=torch.long, device=targets.device)
    ext[:, 1::2] = targets.long().clamp(0, max(classes - 1, 0))
    states = torch.arange(2 * s + 1, device=targets.device)
    used = states[None, :] < (2 * target_lengths.long() + 1)[:, None]
    skip = (ext != blank) & (ext != _shift(ext, 2)) & (states[None, :] >= 2)
    return ext, used, skip


def ctc_nll(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
            blank: int) -> Tensor:
    """-log p(targets | log_probs) per sample, +inf where no alignment exists.

    log_probs is (T, N, C), targets (N, S) padded, lengths (N,). Graves' forward recursion runs in
    probability space with the state vector rescaled to sum 1 at every step; the log of the scales adds
    up to log p. Rescaling keeps alpha in range, and plain sums and products keep autograd's gradient
    finite: a log-space recursion would back-propagate nan through states that are -inf on every path.
    """
    steps, batch, classes = log_probs.shape
    ext, used, skip = _extended(targets, target_lengths, blank, classes)
    emit = log_probs.exp().gather(2, ext[None].expand(steps, batch, ext.shape[1]))
    live = torch.arange(steps, device=log_probs.device)[:, None] < input_lengths.long()[None, :]
    first = (torch.arange(ext.shape[1], device=ext.device) < 2)[None, :] & used
    start = torch.arange(ext.shape[1], device=ext.device)[None, :] == 0  # no frame yet: the empty prefix
    alpha = torch.where(live[0][:, None], emit[0] * first, start.to(emit.dtype))
    log_p = torch.zeros(batch, dtype=log_probs.dtype, device=log_probs.device)
    for t in range(steps):
        if t:
            alpha = torch.where(live[t][:, None], (alpha + _shift(alpha, 1) + _shift(alpha, 2) * skip) * emit[t]
                                * used, alpha)
        scale = alpha.sum(1)
        nonzero = scale > 0
        safe = torch.where(nonzero, scale, torch.ones_like(scale))
        alpha = torch.where(live[t][:, None], alpha / safe[:, None], alpha)
        log_p = log_p + torch.where(live[t] & nonzero, safe.log(), torch.zeros_like(safe))
    end = 2 * target_lengths.long()
    final = alpha.gather(1, end[:, None]).squeeze(1)
    final = final + torch.where(end > 0, alpha.gather(1, (end - 1).clamp(min=0)[:, None]).squeeze(1), 0.0)
    feasible = final > 0
    nll = -(log_p + torch.where(feasible, final, torch.ones_like(final)).log())
    return torch.where(feasible, nll, torch.full_like(nll, float("inf")))


REGISTRY: dict[str, Builtin] = {
    "ctc_nll": Builtin(
        "ctc_nll", ctc_nll, 5,
        "ctc_nll(log_probs[t, n, c], targets[n, s], input_lengths[n], target_lengths[n], blank)[n]",
        "Connectionist temporal classification: -log of the total probability of every alignment of the "
        "padded targets with the frames, per sample; +inf when the targets cannot fit in the frames."),
}
