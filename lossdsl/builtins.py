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

from .errors import InputError

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
    if compiling():
        return _ctc_nll_outside_graph(log_probs, targets, input_lengths, target_lengths, blank)
    return _ctc_nll(log_probs, targets, input_lengths, target_lengths, blank)


def _ctc_nll(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
             blank: int) -> Tensor:
    """-log p(targets | log_probs) per sample, +inf where no alignment exists.

    log_probs is (T, N, C), targets (N, S) padded, lengths (N,). The gradient is Graves' forward-backward
    (_CtcNll), not autograd through the recursion: autograd kept a dozen [N, 2S + 1] temporaries per frame
    (130 MB peak at T = 64, N = 2048, C = 32, against 68 MB for torch's ctc_loss)."""
    _check_lengths(input_lengths, "input_lengths", log_probs.shape[0], "the number of frames")
    _check_lengths(target_lengths, "target_lengths", targets.shape[1], "the targets' padded length")
    return _CtcNll.apply(log_probs, targets, input_lengths.long(), target_lengths.long(), blank)


def _check_lengths(lengths: Tensor, name: str, most: int, what: str) -> None:
    """A length past its tensor would index out of range deep in the recursion: say which one, as torch does."""
    if lengths.numel() and (bool((lengths < 0).any()) or bool((lengths > most).any())):
        raise InputError(f"ctc_loss: {name} must lie in [0, {most}] ({what}), got {lengths.tolist()}")


class _CtcNll(torch.autograd.Function):
    """Forward: the alphas. Backward: the betas, frame by frame from each sample's last frame, and from
    alpha + beta the probability gamma_t(s) that an alignment sits in state s at frame t; the gradient of
    -log p with respect to log_probs[t, n, c] is minus the sum of gamma_t(s) over the states labelled c.
    Only the alphas are kept ([T, N, 2S + 1]); the betas live in a buffer of a few frames, whose gammas are
    scattered into the gradient in one call when it is full."""

    @staticmethod
    def forward(ctx, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                blank: int) -> Tensor:
        ext, used, skip = _extended(targets, target_lengths, blank, log_probs.shape[2])
        alphas = _alphas(log_probs, ext, _closed(used, log_probs), _closed(skip, log_probs))
        nll = _finish(alphas, input_lengths, target_lengths)
        ctx.save_for_backward(log_probs, alphas, nll, ext, used, skip, input_lengths, target_lengths)
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        log_probs, alphas, nll, ext, used, skip, input_lengths, target_lengths = ctx.saved_tensors
        feasible = torch.isfinite(nll)
        weight = torch.where(feasible, -grad, 0.0)[:, None]  # no alignment: a zero gradient
        shift = torch.where(feasible, nll, 0.0)[:, None]  # gamma = exp(alpha + beta + nll)
        out = torch.zeros_like(log_probs)
        steps, (batch, width) = log_probs.shape[0], ext.shape
        starts = _closed(torch.arange(steps, device=ext.device)[:, None] == input_lengths - 1, alphas)
        betas = _Betas(log_probs, ext, _closed(_ahead(skip, 2, False), alphas),
                       _end_states(target_lengths, used, alphas), starts[..., None])
        for t0, t1 in reversed(_ranges(steps, batch * width)):
            v = betas.frames(t0, t1).add_(alphas[t0:t1]).add_(shift)  # in the betas' own buffer
            keep = v > EXP_FLOOR
            gamma = v.clamp_(min=EXP_FLOOR).exp_().mul_(keep).mul_(weight)
            out[t0:t1].scatter_add_(2, ext.expand(t1 - t0, -1, -1), gamma)
        return out, None, None, None, None


def _ranges(steps: int, per_frame: int) -> list[tuple[int, int]]:
    """Frames [t0, t1) whose per-state temporaries (emissions, betas, gammas) are made together: a
    sixteenth of the alphas, at most 64K elements, so that the few alive at once (emissions, betas reused
    for gamma, a bool mask) stay a small part of what the alphas hold (one frame at a time at large
    batches); at least 2K, so that a small problem, whose cost is the number of torch calls, takes few
    ranges."""
    elements = min(max(steps * per_frame // 16, 1 << 11), 1 << 16)
    chunk = max(1, elements // max(per_frame, 1))
    return [(t0, min(t0 + chunk, steps)) for t0 in range(0, steps, chunk)]


def _emissions(log_probs: Tensor, ext: Tensor) -> Tensor:
    """[T', N, 2S + 1]: log y_t of each state's label at the frames of log_probs ([T', N, C])."""
    return log_probs.gather(2, ext.expand(log_probs.shape[0], -1, -1))


class _Betas:
    """Graves' backward recursion, beta_t(s) = log-sum of beta_{t+1} + log y_{t+1} at s, s + 1 and (where
    the skip exists) s + 2, with beta at a sample's last frame set to its end states. Each frame is two
    log-adds of fixed views into one buffer padded on the right, so no shifted copy is made, and per-frame
    views come from one unbind per range: five torch calls a frame. Frames after a sample's last one are
    -inf and stay so, and so do states past its target (beta flows from higher states to lower ones, and
    nothing enters above the end states), so no mask is added per frame."""

    def __init__(self, log_probs: Tensor, ext: Tensor, no_skip: Tensor, ends: Tensor, starts: Tensor) -> None:
        self.log_probs, self.ext, self.no_skip, self.ends, self.starts = log_probs, ext, no_skip, ends, starts
        width = ext.shape[1]
        self.padded = log_probs.new_full((ext.shape[0], width + 2), float("-inf"))
        self.here, self.one_on, self.two_on = (self.padded[:, :width], self.padded[:, 1:-1],
                                               self.padded[:, 2:])
        self.previous: Tensor | None = None

    def frames(self, t0: int, t1: int) -> Tensor:
        """beta over frames [t0, t1), a fresh [t1 - t0, N, 2S + 1] tensor the caller may overwrite; called
        for descending ranges (the next one reads beta_t0, kept as a copy)."""
        out = self.ends.new_empty((t1 - t0, *self.ext.shape))
        emit = _emissions(self.log_probs[t0 + 1:t1 + 1], self.ext).unbind(0)  # log y_{t+1}: one fewer at the end
        start = (self.ends + self.starts[t0:t1]).unbind(0)  # the end states at a sample's last frame, else -inf
        beta = out.unbind(0)
        for k in range(t1 - t0 - 1, -1, -1):
            if self.previous is None:
                beta[k].copy_(start[k])
            else:
                torch.add(self.previous, emit[k], out=self.here)
                total = torch.logaddexp(self.here, self.one_on)
                torch.maximum(torch.logaddexp(total, self.two_on + self.no_skip), start[k], out=beta[k])
            self.previous = beta[k]
        self.previous = self.previous.clone()
        return out


EXP_FLOOR = -80.0
"""Where _log_sum (of the final two states) and the occupation probabilities stop calling exp: e^-80 < 2e-35
is nothing next to the largest term (1) of a shifted sum, and below it exp enters the subnormal range, which
costs this CPU 30x (exp of 67K floats in [-100, -88]: 2.2 ms against 0.07 ms in [-50, 0]; -inf itself
0.34 ms)."""


def _closed(keep: Tensor, like: Tensor) -> Tensor:
    """0 where keep, -inf elsewhere, in like's dtype: added to a log-probability, it masks with one add."""
    return torch.zeros(keep.shape, dtype=like.dtype, device=like.device).masked_fill_(~keep, float("-inf"))


def _alphas(log_probs: Tensor, ext: Tensor, unused: Tensor, no_skip: Tensor) -> Tensor:
    """[T, N, 2S + 1]: Graves' forward recursion in log space (an emission of log-probability -1e4 is a
    number, not an underflow): each state takes the log-sum of itself, its predecessor and, past a blank,
    the state two back. unused / no_skip are -inf at the states and skips that do not exist, else 0. The
    alphas are a view of a buffer with two -inf states on the left, where s - 1 and s - 2 are views too:
    a frame is two torch.logaddexp (exact at -inf, and without the subnormal exps of a shifted sum's
    far terms) and two adds, four torch calls where shifted copies and a max-shifted log-sum took ~25 (at
    ASR batch sizes a frame costs its number of calls: benchmarks/ctc_frames.py)."""
    steps, batch, _ = log_probs.shape
    width = ext.shape[1]
    padded = log_probs.new_full((max(steps, 1), batch, width + 2), float("-inf"))
    alphas, one_back, two_back = padded[..., 2:], padded[..., 1:-1], padded[..., :-2]
    start = _closed(torch.arange(width, device=ext.device) < 2, unused)
    at, one_at, two_at = alphas.unbind(0), one_back.unbind(0), two_back.unbind(0)  # per-frame views at once
    for t0, t1 in _ranges(steps, batch * width):
        emit = _emissions(log_probs[t0:t1], ext).add_(unused).unbind(0)
        for t in range(t0, t1):
            if t == 0:
                torch.add(emit[0], start, out=at[0])
                continue
            total = torch.logaddexp(at[t - 1], one_at[t - 1])
            torch.add(torch.logaddexp(total, two_at[t - 1] + no_skip), emit[t - t0], out=at[t])
    return alphas


def _end_states(target_lengths: Tensor, used: Tensor, like: Tensor) -> Tensor:
    """[N, 2S + 1]: 0 at the two states an alignment may end in (the last label and the blank after it),
    -inf elsewhere: beta at a sample's last frame."""
    states = torch.arange(used.shape[1], device=used.device)[None, :]
    end = 2 * target_lengths[:, None]
    return _closed(((states == end) | ((states == end - 1) & (end > 0))) & used, like)


_ctc_nll_outside_graph = torch.compiler.disable(_ctc_nll)
compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)  # torch >= 2.3; older: eager


def _ahead(x: Tensor, k: int, fill: float | bool = float("-inf")) -> Tensor:
    """x moved k states to the left along the last axis (state s reads s + k), `fill` entering on the right."""
    return torch.nn.functional.pad(x, (0, k), value=fill)[..., k:]


def _log_sum(*xs: Tensor) -> Tensor:
    """log(sum exp xs), elementwise, -inf where every term is -inf. No where: shifting by the top clamped to
    the most negative float keeps -inf - top at -inf, and log(sum) + top is -inf when top is."""
    top = xs[0]
    for x in xs[1:]:
        top = torch.maximum(top, x)
    shift = top.clamp(min=torch.finfo(top.dtype).min)
    total = sum(torch.exp((x - shift).clamp_(min=EXP_FLOOR)) for x in xs)
    return total.log_() + top


def _finish(alphas: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """Reads each sample at its last frame: log p = log-sum of its two final states."""
    batch = input_lengths.shape[0]
    alpha = alphas[(input_lengths - 1).clamp(min=0), torch.arange(batch, device=input_lengths.device)]
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
