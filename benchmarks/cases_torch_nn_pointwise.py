"""Cases for the torch.nn losses of stdlib/torch_nn.loss that are elementwise terms or a softmax/sigmoid per row:
the weighted regression losses, cross entropy with smoothing or soft targets, KL with log targets, the Poisson
and Gaussian NLLs and the multi-label soft margin loss.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from case_kit import Case, Tensor, classes, leaf


# ---- input generators
def weighted_pair(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """input, target and a positive per-element weight (sample weights are data: no grad)."""
    x = leaf(torch.randn(n, device=dev, dtype=dt))
    return x, torch.randn(n, device=dev, dtype=dt), torch.rand(n, device=dev, dtype=dt) + 0.1


def soft_targets(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Logits [rows, c] and class probabilities of the same shape (a teacher's softmax, say)."""
    x, _ = classes(n, dev, dt)
    return x, torch.softmax(torch.randn_like(x.detach()), 1)


def log_dist_pair(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Two rows-of-64 log-distributions: input log q (differentiated) and target log p."""
    x = torch.log_softmax(torch.randn(max(n // 64, 1), 64, device=dev, dtype=dt), 1)
    return leaf(x), torch.log_softmax(torch.randn_like(x), 1)


def log_rate_counts(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """A log-rate around 0 and Poisson counts drawn from it (zeros and ones included)."""
    x = torch.randn(n, device=dev, dtype=dt) * 0.5
    return leaf(x), torch.poisson(torch.exp(x))


def rate_counts(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """A positive rate and Poisson counts drawn from it."""
    r = torch.exp(torch.randn(n, device=dev, dtype=dt) * 0.5)
    return leaf(r), torch.poisson(r)


def positive_targets(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Stirling's term alone: positive targets on both sides of 1, differentiated so the loss has a gradient.
    Strictly positive because t*log(t) at t = 0 has an infinite derivative that the textbook where() turns into
    a NaN gradient (the stdlib's guarded form gives 0)."""
    return (leaf(torch.rand(n, device=dev, dtype=dt) * 10 + 0.05),)


def mean_target_var(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Predicted mean, target, and predicted variance (heteroscedastic, one per element, well above eps)."""
    x = leaf(torch.randn(n, device=dev, dtype=dt))
    var = leaf(torch.exp(torch.randn(n, device=dev, dtype=dt) * 0.5))
    return x, torch.randn(n, device=dev, dtype=dt), var


def multilabel(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Logits [rows, c] and 0/1 labels of the same shape."""
    x, _ = classes(n, dev, dt)
    return x, (torch.rand(x.shape, device=dev) > 0.5).to(dt)


def multilabel_weighted(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """multilabel's logits and labels, with a weight per element."""
    x, y = multilabel(n, dev, dt)
    return x, y, torch.rand(x.shape, device=dev, dtype=dt)


# ---- textbook versions
def huber_weighted_textbook(x: Tensor, y: Tensor, w: Tensor, delta: float = 1.0) -> Tensor:
    e = (x - y).abs()
    return (w * torch.where(e < delta, 0.5 * e**2, delta * (e - 0.5 * delta))).mean()


def smoothed_ce_textbook(x: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """torch's smoothing: (1 - s) on the target class plus s/C spread over every class."""
    c = x.shape[1]
    target = F.one_hot(y, c).to(x.dtype) * (1 - label_smoothing) + label_smoothing / c
    return -(target * torch.log(torch.softmax(x, dim=1))).sum(dim=1).mean()


def poisson_full_textbook(x: Tensor, t: Tensor) -> Tensor:
    stirling = t * torch.log(t) - t + 0.5 * torch.log(2 * math.pi * t)
    return (torch.exp(x) - t * x + stirling.masked_fill(t <= 1, 0)).mean()


def poisson_rate_full_textbook(x: Tensor, t: Tensor, eps: float = 1e-8) -> Tensor:
    stirling = t * torch.log(t) - t + 0.5 * torch.log(2 * math.pi * t)
    return (x - t * torch.log(x + eps) + stirling.masked_fill(t <= 1, 0)).mean()


def stirling_textbook(t: Tensor) -> Tensor:
    stirling = t * torch.log(t) - t + 0.5 * torch.log(2 * math.pi * t)
    return torch.where(t > 1, stirling, 0).mean()


def gaussian_nll_textbook(x: Tensor, y: Tensor, var: Tensor, full: bool = False, eps: float = 1e-6) -> Tensor:
    var = var.clamp(min=eps)
    loss = 0.5 * (torch.log(var) + (x - y) ** 2 / var)
    return (loss + 0.5 * math.log(2 * math.pi) if full else loss).mean()


def multilabel_soft_margin_textbook(x: Tensor, y: Tensor) -> Tensor:
    p = torch.sigmoid(x)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean(dim=1).mean()


def multilabel_soft_margin_weighted_textbook(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    p = torch.sigmoid(x)
    return -(w * (y * torch.log(p) + (1 - y) * torch.log(1 - p))).mean(dim=1).mean()


# ---- built-ins, wrapped where the signature differs
def kl_div_log_target_builtin(x: Tensor, t: Tensor) -> Tensor:
    """F.kl_div's default 'mean' (the stdlib's too), without the warning it prints on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "reduction: 'mean' divides", UserWarning)
        return F.kl_div(x, t, log_target=True)


CASES: dict[str, Case] = {
    "l1_loss_weighted": Case(weighted_pair, lambda x, y, w: (w * (x - y).abs()).sum() / w.sum(),
                             lambda x, y, w: F.l1_loss(x, y, weight=w), builtin_name="F.l1_loss(weight)"),
    "mse_loss_weighted": Case(weighted_pair, lambda x, y, w: (w * (x - y) ** 2).sum() / w.sum(),
                              lambda x, y, w: F.mse_loss(x, y, weight=w), builtin_name="F.mse_loss(weight)"),
    "huber_loss_weighted": Case(weighted_pair, huber_weighted_textbook,
                                lambda x, y, w, delta=1.0: F.huber_loss(x, y, delta=delta, weight=w),
                                builtin_name="F.huber_loss(weight)"),
    # label_smoothing = 0 is plain cross_entropy (the wrappers pick that one): the case smooths, as its users do
    "cross_entropy_smoothed": Case(classes, smoothed_ce_textbook, F.cross_entropy, params={"label_smoothing": 0.1},
                                   builtin_name="F.cross_entropy(label_smoothing)"),
    "cross_entropy_probs": Case(soft_targets, lambda x, p: -(p * torch.log(torch.softmax(x, dim=1))).sum(dim=1).mean(),
                                F.cross_entropy, builtin_name="F.cross_entropy(probs)"),
    "kl_div_log_target": Case(log_dist_pair, lambda x, t: (torch.exp(t) * (t - x)).mean(), kl_div_log_target_builtin,
                              builtin_name="F.kl_div(log_target)"),
    "poisson_nll_loss": Case(log_rate_counts, lambda x, t: (torch.exp(x) - t * x).mean(), F.poisson_nll_loss),
    "poisson_nll_loss_rate": Case(rate_counts, lambda x, t, eps=1e-8: (x - t * torch.log(x + eps)).mean(),
                                  lambda x, t, eps=1e-8: F.poisson_nll_loss(x, t, log_input=False, eps=eps),
                                  builtin_name="F.poisson_nll_loss(log_input=False)"),
    "stirling": Case(positive_targets, stirling_textbook),
    "poisson_nll_loss_full": Case(log_rate_counts, poisson_full_textbook,
                                  lambda x, t: F.poisson_nll_loss(x, t, full=True),
                                  builtin_name="F.poisson_nll_loss(full)"),
    "poisson_nll_loss_rate_full": Case(
        rate_counts, poisson_rate_full_textbook,
        lambda x, t, eps=1e-8: F.poisson_nll_loss(x, t, log_input=False, full=True, eps=eps),
        builtin_name="F.poisson_nll_loss(log_input=False, full)"),
    "gaussian_nll_loss": Case(mean_target_var, gaussian_nll_textbook, F.gaussian_nll_loss),
    "multilabel_soft_margin_loss": Case(multilabel, multilabel_soft_margin_textbook, F.multilabel_soft_margin_loss),
    "multilabel_soft_margin_loss_weighted": Case(
        multilabel_weighted, multilabel_soft_margin_weighted_textbook,
        lambda x, y, w: F.multilabel_soft_margin_loss(x, y, weight=w),
        builtin_name="F.multilabel_soft_margin_loss(weight)"),
}
