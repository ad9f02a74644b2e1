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


def _extended(targets: Tensor, target_lengths: Tensor, blank: int, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Labels with blanks interleaved (b, y1, b, y2, ..., b), the states in use, and the allowed moves.

    moves[n, r, s] is 1 where state r may go to state s in one frame: stay, step, or skip a blank between
    two different labels.
    """
    n, s = targets.shape
    ext = torch.full((n, 2 * s + 1), blank, dtype=torch.long, device=targets.device)
    ext[:, 1::2] = targets.long().clamp(0, max(classes - 1, 0))
    states = torch.arange(2 * s + 1, device=targets.device)
    used = states[None, :] < (2 * target_lengths.long() + 1)[:, None]
    previous = torch.nn.functional.pad(ext, (2, 0), value=blank)[:, : ext.shape[1]]
    skip = (ext != blank) & (ext != previous)
    step = states[None, :] - states[:, None]
    moves = (step == 0) | (step == 1) | ((step == 2) & skip[:, None, :])
    return ext, used, moves


def ctc_nll(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
            blank: int) -> Tensor:
    """-log p(targets | log_probs) per sample, +inf where no alignment exists.

    log_probs is (T, N, C), targets (N, S) padded, lengths (N,). Graves' forward recursion runs in
    probability space with the state vector rescaled to sum 1 at every frame; the logs of the scales add
    up to log p. Rescaling keeps alpha in range, and plain sums and products keep autograd's gradient
    finite: a log-space recursion would back-propagate nan through states that are -inf on every path.
    One frame is one batched product with the (N, L, L) matrix of allowed moves.
    """
    steps, batch, classes = log_probs.shape
    ext, used, moves = _extended(targets, target_lengths, blank, classes)
    width = ext.shape[1]
    emit = log_probs.exp().gather(2, ext[None].expand(steps, batch, width)) * used
    moves = moves.to(emit.dtype)
    alpha = emit[0] * (torch.arange(width, device=ext.device) < 2) if steps else emit.new_zeros(batch, width)
    alphas, scales = [], []
    for t in range(steps):
        if t:
            alpha = torch.bmm(alpha[:, None, :], moves)[:, 0] * emit[t]
        scale = alpha.sum(1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        alpha = alpha / scale[:, None]
        alphas.append(alpha)
        scales.append(scale)
    return _finish(alphas, scales, input_lengths.long(), target_lengths.long())


def _finish(alphas: list[Tensor], scales: list[Tensor], input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """Reads each sample at its last frame: log p = the logs of its scales + log of its two final states."""
    batch = input_lengths.shape[0]
    if not alphas:
        return torch.where(target_lengths == 0, 0.0, float("inf")).to(torch.get_default_dtype())
    last, rows = (input_lengths - 1).clamp(min=0), torch.arange(batch, device=input_lengths.device)
    alpha = torch.stack(alphas)[last, rows]
    log_p = torch.cumsum(torch.stack(scales).log(), 0)[last, rows]
    end = 2 * target_lengths
    final = alpha.gather(1, end[:, None])[:, 0]
    final = final + torch.where(end > 0, alpha.gather(1, (end - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    feasible = final > 0
    nll = -(log_p + torch.where(feasible, final, torch.ones_like(final)).log())
    nll = torch.where(feasible, nll, torch.full_like(nll, float("inf")))
    no_frames = torch.where(target_lengths == 0, 0.0, float("inf")).to(nll.dtype)
    return torch.where(input_lengths == 0, no_frames, nll)


REGISTRY: dict[str, Builtin] = {
    "ctc_nll": Builtin(
        "ctc_nll", ctc_nll, 5,
        "ctc_nll(log_probs[t, n, c], targets[n, s], input_lengths[n], target_lengths[n], blank)[n]",
        "Connectionist temporal classification: -log of the total probability of every alignment of the "
        "padded targets with the frames, per sample; +inf when the targets cannot fit in the frames."),
}
