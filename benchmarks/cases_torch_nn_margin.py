"""Cases for the margin, embedding and CTC losses of stdlib/torch_nn.loss (torch.nn.functional's own).

Every variant returns the stdlib loss's default reduction (the mean over samples), so torch's built-ins that
give per-sample values (pairwise_distance) or another reduction (ctc_loss) are wrapped to match.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from case_kit import EMBED, Case, Tensor, classes, leaf, scores_signs, sign_targets, triplets

LABELS = 8  # classes of the multi-label case: its hinge terms are (rows, labels, labels), 8x the input


# ---- input generators
def multilabel(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Scores (n / LABELS, LABELS) and target lists of the same shape (torch needs that): 1 to LABELS / 2
    distinct classes per row, then -1 to the end."""
    rows = max(n // LABELS, 1)
    listed = torch.rand(rows, LABELS, device=dev).argsort(dim=1)  # a random order of the classes per row
    count = torch.randint(1, LABELS // 2 + 1, (rows, 1), device=dev)
    target = torch.where(torch.arange(LABELS, device=dev) < count, listed, -1)
    return leaf(torch.randn(rows, LABELS, device=dev, dtype=dt)), target


def ranking(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    a, b = (leaf(torch.randn(n, device=dev, dtype=dt)) for _ in range(2))
    return a, b, sign_targets((n,), dev, dt)


def _rows(n: int, dev: torch.device, dt: torch.dtype) -> Tensor:
    return leaf(torch.randn(max(n // EMBED, 1), EMBED, device=dev, dtype=dt))


def embedding_pair(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    return _rows(n, dev, dt), _rows(n, dev, dt)


def embedding_pair_signs(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    a, b = embedding_pair(n, dev, dt)
    return a, b, sign_targets((a.shape[0],), dev, dt)


def triplets_distance(n: int, dev: torch.device, dt: torch.dtype) -> tuple:
    return (*triplets(n, dev, dt), F.pairwise_distance)


def ctc_inputs(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """log_probs (T, N, C) normalised over C, C = 32 (blank 0), padded targets (N, T / 4) of lengths
    T / 8 .. T / 4, frames T / 2 .. T per sample: every target fits (a target of length S needs at most
    2S - 1 frames). T = 64 at the large size (N = 2048): the textbook DP reads frame t of a tensor in its
    loop, as users write it, which costs a full-size gradient per step (T^2 in all)."""
    c, t = 32, 64 if n >= 1 << 16 else 32
    batch, s = max(n // (t * c), 1), t // 4
    lp = torch.log_softmax(torch.randn(t, batch, c, device=dev, dtype=dt), dim=2)
    targets = torch.randint(1, c, (batch, s), device=dev)
    target_lengths = torch.randint(s // 2, s + 1, (batch,), device=dev)
    input_lengths = torch.randint(t // 2, t + 1, (batch,), device=dev)
    return leaf(lp), targets, input_lengths, target_lengths


# ---- textbook versions
def multilabel_margin_textbook(x: Tensor, target: Tensor) -> Tensor:
    c = x.shape[1]
    valid = (target >= 0).cumprod(dim=1)  # the listed targets: up to the first -1
    tgt = target.clamp(min=0)
    is_target = torch.zeros_like(x).scatter_add_(1, tgt, valid.to(x.dtype)) > 0
    x_t = x.gather(1, tgt)
    margins = torch.clamp(1 - x_t[:, :, None] + x[:, None, :], min=0)  # (rows, targets, classes)
    margins = margins * (~is_target)[:, None, :] * valid[:, :, None]
    return (margins.sum(dim=(1, 2)) / c).mean()


def multi_margin_textbook(x: Tensor, y: Tensor, p: int = 1, margin: float = 1.0) -> Tensor:
    x_y = x.gather(1, y[:, None])
    margins = torch.clamp(margin - x_y + x, min=0) ** p
    margins = margins.masked_fill(F.one_hot(y, x.shape[1]).bool(), 0)
    return (margins.sum(dim=1) / x.shape[1]).mean()


def hinge_embedding_textbook(x: Tensor, y: Tensor, margin: float = 1.0) -> Tensor:
    return torch.where(y == 1, x, torch.clamp(margin - x, min=0)).mean()


def margin_ranking_textbook(a: Tensor, b: Tensor, y: Tensor, margin: float = 0.0) -> Tensor:
    return torch.clamp(-y * (a - b) + margin, min=0).mean()


def cosine_embedding_textbook(a: Tensor, b: Tensor, y: Tensor, margin: float = 0.0) -> Tensor:
    cos = (a * b).sum(dim=1) / torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    return torch.where(y == 1, 1 - cos, torch.clamp(cos - margin, min=0)).mean()


def distance_textbook(a: Tensor, b: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """The p-norm of a - b + eps along the last axis, as torch.pairwise_distance defines it."""
    return ((a - b + eps).abs() ** p).sum(dim=-1) ** (1 / p)


def pairwise_distance_textbook(a: Tensor, b: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    return distance_textbook(a, b, p, eps).mean()


def pairwise_distance_builtin(a: Tensor, b: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    return F.pairwise_distance(a, b, p=p, eps=eps).mean()


def max_distance_textbook(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    return (a - b + eps).abs().amax(dim=-1).mean()


def max_distance_builtin(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    return F.pairwise_distance(a, b, p=float("inf"), eps=eps).mean()


def triplet_textbook(a: Tensor, pos: Tensor, neg: Tensor, margin: float = 1.0, p: float = 2.0,
                     eps: float = 1e-6) -> Tensor:
    d_pos, d_neg = distance_textbook(a, pos, p, eps), distance_textbook(a, neg, p, eps)
    return torch.clamp(margin + d_pos - d_neg, min=0).mean()


def triplet_swap_textbook(a: Tensor, pos: Tensor, neg: Tensor, margin: float = 1.0, p: float = 2.0,
                          eps: float = 1e-6) -> Tensor:
    d_pos = distance_textbook(a, pos, p, eps)
    d_neg = torch.min(distance_textbook(a, neg, p, eps), distance_textbook(pos, neg, p, eps))
    return torch.clamp(margin + d_pos - d_neg, min=0).mean()


def triplet_swap_builtin(a: Tensor, pos: Tensor, neg: Tensor, margin: float = 1.0, p: float = 2.0,
                         eps: float = 1e-6) -> Tensor:
    return F.triplet_margin_loss(a, pos, neg, margin=margin, p=p, eps=eps, swap=True)


def triplet_distance_textbook(a: Tensor, pos: Tensor, neg: Tensor, distance: Callable[[Tensor, Tensor], Tensor],
                              margin: float = 1.0) -> Tensor:
    return torch.clamp(margin + distance(a, pos) - distance(a, neg), min=0).mean()


def triplet_distance_swap_textbook(a: Tensor, pos: Tensor, neg: Tensor, distance: Callable[[Tensor, Tensor], Tensor],
                                   margin: float = 1.0) -> Tensor:
    d_neg = torch.min(distance(a, neg), distance(pos, neg))
    return torch.clamp(margin + distance(a, pos) - d_neg, min=0).mean()


def triplet_distance_builtin(a: Tensor, pos: Tensor, neg: Tensor, distance: Callable[[Tensor, Tensor], Tensor],
                             margin: float = 1.0) -> Tensor:
    return F.triplet_margin_with_distance_loss(a, pos, neg, distance_function=distance, margin=margin)


def triplet_distance_swap_builtin(a: Tensor, pos: Tensor, neg: Tensor, distance: Callable[[Tensor, Tensor], Tensor],
                                  margin: float = 1.0) -> Tensor:
    return F.triplet_margin_with_distance_loss(a, pos, neg, distance_function=distance, margin=margin, swap=True)


def ctc_nll_textbook(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                     blank: int = 0) -> Tensor:
    """-log p(target | frames) per sample: Graves' forward recursion over time in log space, vectorised
    over the batch (as in the pure-PyTorch CTC references). "Impossible" is the dtype's most negative number,
    not -inf, since torch.logsumexp of all -inf back-propagates NaN."""
    steps, batch, _ = log_probs.shape
    s = targets.shape[1]
    zero = torch.finfo(log_probs.dtype).min
    ext = torch.full((batch, 2 * s + 1), blank, dtype=torch.long, device=targets.device)  # b y1 b y2 ... b
    ext[:, 1::2] = targets
    skip = torch.zeros_like(ext, dtype=torch.bool)  # a label may follow the previous label directly
    skip[:, 3::2] = targets[:, 1:] != targets[:, :-1]
    emit = log_probs.gather(2, ext.expand(steps, -1, -1))  # (T, N, 2S + 1)
    alpha = torch.full_like(emit[0], zero)
    alpha[:, :2] = emit[0, :, :2]
    alphas = [alpha]
    for t in range(1, steps):
        one = F.pad(alpha[:, :-1], (1, 0), value=zero)
        two = torch.where(skip, F.pad(alpha[:, :-2], (2, 0), value=zero), zero)
        alpha = torch.logsumexp(torch.stack([alpha, one, two]), dim=0) + emit[t]
        alphas.append(alpha)
    last = torch.stack(alphas)[input_lengths - 1, torch.arange(batch, device=alpha.device)]  # (N, 2S + 1)
    ends = last.gather(1, torch.stack([2 * target_lengths - 1, 2 * target_lengths], dim=1))
    return -torch.logsumexp(ends, dim=1)


def ctc_textbook(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                 blank: int = 0) -> Tensor:
    return ctc_nll_textbook(log_probs, targets, input_lengths, target_lengths, blank).mean()


def ctc_mean_textbook(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                      blank: int = 0) -> Tensor:
    nll = ctc_nll_textbook(log_probs, targets, input_lengths, target_lengths, blank)
    return (nll / target_lengths.clamp(min=1)).mean()


def _ctc_gradient_fixed(loss: Tensor, log_probs: Tensor, input_lengths: Tensor, per_sample: Tensor) -> Tensor:
    """F.ctc_loss's gradient is the one with respect to the logits under a log_softmax (it adds
    exp(log_probs) * d loss / d nll on every frame in use), not with respect to log_probs, which the stdlib
    loss and the textbook DP give. This adds a term worth 0 whose gradient takes that part back out."""
    frames = torch.arange(log_probs.shape[0], device=log_probs.device)[:, None] < input_lengths  # (T, N)
    extra = log_probs.exp() * (frames * per_sample)[:, :, None]
    return loss + (extra.detach() - extra).sum()


def ctc_builtin(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                blank: int = 0) -> Tensor:
    batch = log_probs.shape[1]
    loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank, reduction="sum") / batch
    return _ctc_gradient_fixed(loss, log_probs, input_lengths, torch.full_like(input_lengths, 1, dtype=loss.dtype)
                               / batch)


def ctc_mean_builtin(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                     blank: int = 0) -> Tensor:
    loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank, reduction="mean")
    per_sample = 1 / (target_lengths.clamp(min=1).to(loss.dtype) * log_probs.shape[1])
    return _ctc_gradient_fixed(loss, log_probs, input_lengths, per_sample)


CTC_NAME = "F.ctc_loss + grad term w.r.t. log_probs"

CASES: dict[str, Case] = {
    "multilabel_margin_loss": Case(multilabel, multilabel_margin_textbook, F.multilabel_margin_loss),
    "multi_margin_loss": Case(classes, multi_margin_textbook, F.multi_margin_loss),
    "hinge_embedding_loss": Case(scores_signs, hinge_embedding_textbook, F.hinge_embedding_loss),
    "margin_ranking_loss": Case(ranking, margin_ranking_textbook, F.margin_ranking_loss),
    "cosine_embedding_loss": Case(embedding_pair_signs, cosine_embedding_textbook, F.cosine_embedding_loss),
    "pairwise_distance": Case(embedding_pair, pairwise_distance_textbook, pairwise_distance_builtin,
                              builtin_name="F.pairwise_distance().mean()"),
    "pairwise_distance_max": Case(embedding_pair, max_distance_textbook, max_distance_builtin,
                                  builtin_name="F.pairwise_distance(p=inf).mean()"),
    "triplet_margin_loss": Case(triplets, triplet_textbook, F.triplet_margin_loss),
    "triplet_margin_loss_swap": Case(triplets, triplet_swap_textbook, triplet_swap_builtin,
                                     builtin_name="F.triplet_margin_loss(swap=True)"),
    "triplet_margin_with_distance_loss": Case(triplets_distance, triplet_distance_textbook,
                                              triplet_distance_builtin),
    "triplet_margin_with_distance_loss_swap": Case(
        triplets_distance, triplet_distance_swap_textbook, triplet_distance_swap_builtin,
        builtin_name="F.triplet_margin_with_distance_loss(swap=True)"),
    "ctc_loss": Case(ctc_inputs, ctc_textbook, ctc_builtin, builtin_name=f"{CTC_NAME} (sum / N)"),
    "ctc_loss_mean": Case(ctc_inputs, ctc_mean_textbook, ctc_mean_builtin, builtin_name=f"{CTC_NAME} (mean)"),
}
