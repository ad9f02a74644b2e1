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
    """Labels with blanks interleaved (b, y1, b, y2, ..., b), the states in use, and where a blank may be
    skipped (state s may be entered from s - 2 when it is a label different from the one two states back)."""
    n, s = targets.shape
    ext = torch.full((n, 2 * s + 1), blank, dtype=torch.long, device=targets.device)
    ext[:, 1::2] = targets.long().clamp(0, max(classes - 1, 0))
    states = torch.arange(2 * s + 1, device=targets.device)
    used = states[None, :] < (2 * target_lengths.long() + 1)[:, None]
    previous = torch.nn.functional.pad(ext, (2, 0), value=blank)[:, : ext.shape[1]]
    skip = (ext != blank) & (ext != previous)
    return ext, used, skip


def ctc_nll(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
            blank: int) -> Tensor:
    """-log p(targets | log_probs) per sample, +inf where no alignment exists (see _ctc_nll).

    Under torch.compile the recursion runs outside the graph: Dynamo would unroll its T steps, which took
    57-105 s to compile at T = 32-64 (ctc_loss in benchmarks/run.py), grows with T, and is paid again for
    every new T because shapes are static, i.e. for nearly every batch of variable-length speech. Outside
    the graph it costs what eager mode costs, about torch's own ctc_loss."""
    if _compiling():
        return _ctc_nll_outside_graph(log_probs, targets, input_lengths, target_lengths, blank)
    return _ctc_nll(log_probs, targets, input_lengths, target_lengths, blank)


def _ctc_nll(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
             blank: int) -> Tensor:
    """-log p(targets | log_probs) per sample, +inf where no alignment exists.

    log_probs is (T, N, C), targets (N, S) padded, lengths (N,). Graves' forward recursion in log space
    (an emission of log-probability -1e4 is a number, not an underflow): each state takes the log-sum of
    itself, its predecessor and, past a blank, the state two back. The log-sum is guarded so unreachable
    states are -inf with zero gradient, not the nan that logsumexp over all -inf back-propagates.
    """
    steps, batch, classes = log_probs.shape
    ext, used, skip = _extended(targets, target_lengths, blank, classes)
    width = ext.shape[1]
    emit = log_probs.gather(2, ext[None].expand(steps, batch, width))
    start = used & (torch.arange(width, device=ext.device) < 2)
    alpha = _masked(emit[0], start) if steps else emit.new_full((batch, width), float("-inf"))
    alphas = [alpha]
    frames = emit.unbind(0)  # one backward node for all steps: emit[t] per step zero-fills a whole emit each
    for t in range(1, steps):
        one, two = _shifted(alpha, 1), _masked(_shifted(alpha, 2), skip)
        alpha = _masked(_log_sum(alpha, one, two) + frames[t], used)
        alphas.append(alpha)
    return _finish(alphas, input_lengths.long(), target_lengths.long())


_ctc_nll_outside_graph = torch.compiler.disable(_ctc_nll)
_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)  # torch >= 2.3; older: eager


def _shifted(x: Tensor, k: int) -> Tensor:
    """x moved k states to the right along the last axis, -inf entering on the left."""
    return torch.nn.functional.pad(x, (k, 0), value=float("-inf"))[..., : x.shape[-1]]


def _log_sum(*xs: Tensor) -> Tensor:
    """log(sum exp xs), elementwise; -inf (with zero gradient) where every term is -inf."""
    top = torch.stack(xs).amax(0).detach()
    alive = torch.isfinite(top)
    top = torch.where(alive, top, torch.zeros_like(top))
    total = sum((x - top).exp() for x in xs)
    return _masked(_safe_log(total) + top, alive)


def _safe_log(x: Tensor) -> Tensor:
    """log x where x > 0, and 0 (with zero gradient) elsewhere: the caller masks those places to -inf."""
    return torch.where(x > 0, x, torch.ones_like(x)).log()


def _masked(x: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, x, torch.full_like(x, float("-inf")))


def _finish(alphas: list[Tensor], input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """Reads each sample at its last frame: log p = log-sum of its two final states."""
    batch = input_lengths.shape[0]
    alpha = torch.stack(alphas)[(input_lengths - 1).clamp(min=0), torch.arange(batch, device=input_lengths.device)]
    end = 2 * target_lengths
    last = alpha.gather(1, end[:, None])[:, 0]
    before = torch.where(end > 0, alpha.gather(1, (end - 1).clamp(min=0)[:, None])[:, 0], float("-inf"))
    nll = -_log_sum(last, before)
    no_frames = torch.where(target_lengths == 0, 0.0, float("inf")).to(nll.dtype)
    return torch.where(input_lengths == 0, no_frames, nll)


REGISTRY: dict[str, Builtin] = {
    "ctc_nll": Builtin(
        "ctc_nll", ctc_nll, 5,
        "ctc_nll(log_probs[t, n, c], targets[n, s], input_lengths[n], target_lengths[n], blank)[n]",
        "Connectionist temporal classification: -log of the total probability of every alignment of the "
        "padded targets with the frames, per sample; +inf when the targets cannot fit in the frames."),
}
