"""Per stdlib loss: an input generator, torch's built-in (where one exists) and the textbook eager version.

The textbook versions are written as users write them (tutorials, reference repositories): plain tensor
ops, one-hot targets, `log(cosh(.))`, `exp` then `sum` then `log`. Each returns the mean (or the loss's own
reduction) so that every variant computes the same number; run.py checks that they agree.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from case_kit import (
    Case,
    Tensor,
    classes,
    dist_pair,
    embeddings,
    log_probs,
    logits_binary,
    pair,
    probs_binary,
    segmentation,
)


# ---- textbook versions
def focal_textbook(x: Tensor, y: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return (alpha_t * loss).mean()


def dice_textbook(p: Tensor, g: Tensor, eps: float = 1e-5) -> Tensor:
    num = 2 * (p * g).sum(dim=(2, 3)) + eps
    den = (p * p).sum(dim=(2, 3)) + (g * g).sum(dim=(2, 3)) + eps
    return (1 - num / den).mean()


def tversky_textbook(p: Tensor, g: Tensor, beta: float = 0.3, gamma: float = 0.7, eps: float = 1e-5) -> Tensor:
    tp = (p * g).sum(dim=(2, 3))
    fp = (p * (1 - g)).sum(dim=(2, 3))
    fn = ((1 - p) * g).sum(dim=(2, 3))
    return (1 - tp / (tp + beta * fp + gamma * fn + eps)).mean()


def log_cosh_textbook(x: Tensor, y: Tensor) -> Tensor:
    return torch.log(torch.cosh(x - y)).mean()


def label_smoothing_textbook(x: Tensor, y: Tensor, smoothing: float = 0.1) -> Tensor:
    c = x.shape[1]
    one_hot = F.one_hot(y, c).to(x.dtype)
    target = one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (c - 1)
    return -(target * F.log_softmax(x, dim=1)).sum(dim=1).mean()


def label_smoothing_builtin(x: Tensor, y: Tensor, smoothing: float = 0.1) -> Tensor:
    """torch spreads smoothing/C over all classes; smoothing*C/(C-1) gives the stdlib's smoothing/(C-1)."""
    c = x.shape[1]
    return F.cross_entropy(x, y, label_smoothing=smoothing * c / (c - 1))


def info_nce_textbook(q: Tensor, k: Tensor, temperature: float = 0.07) -> Tensor:
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    sim = torch.exp(q @ k.T / temperature)
    return -torch.log(torch.diag(sim) / sim.sum(dim=1)).mean()


def info_nce_builtin(q: Tensor, k: Tensor, temperature: float = 0.07) -> Tensor:
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def cross_entropy_textbook(x: Tensor, y: Tensor) -> Tensor:
    p = torch.softmax(x, dim=1)
    return -(F.one_hot(y, x.shape[1]).to(x.dtype) * torch.log(p)).sum(dim=1).mean()


def huber_textbook(x: Tensor, y: Tensor, delta: float = 1.0) -> Tensor:
    e = (x - y).abs()
    return torch.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta)).mean()


def smooth_l1_textbook(x: Tensor, y: Tensor, beta: float = 1.0) -> Tensor:
    e = (x - y).abs()
    return torch.where(e < beta, 0.5 * e**2 / beta, e - 0.5 * beta).mean()


def kl_div_builtin(x: Tensor, y: Tensor) -> Tensor:
    """F.kl_div's default reduction ('mean', the stdlib's too), without its warning that 'batchmean' is the
    true KL divergence: the warning would be printed on every timed call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "reduction: 'mean' divides", UserWarning)
        return F.kl_div(x, y)


CASES: dict[str, Case] = {
    "sigmoid_focal_loss": Case(logits_binary, focal_textbook),
    "dice_loss": Case(segmentation, dice_textbook),
    "tversky_loss": Case(segmentation, tversky_textbook),
    "log_cosh_loss": Case(pair, log_cosh_textbook),
    "label_smoothing_cross_entropy": Case(classes, label_smoothing_textbook, label_smoothing_builtin,
                                          builtin_name="F.cross_entropy(label_smoothing)"),
    "info_nce": Case(embeddings, info_nce_textbook, info_nce_builtin, builtin_name="F.cross_entropy(q k^T)"),
    "cross_entropy": Case(classes, cross_entropy_textbook, F.cross_entropy),
    "nll_loss": Case(log_probs, lambda x, y: -x.gather(1, y[:, None]).mean(), F.nll_loss),
    "mse_loss": Case(pair, lambda x, y: ((x - y) ** 2).mean(), F.mse_loss),
    "l1_loss": Case(pair, lambda x, y: (x - y).abs().mean(), F.l1_loss),
    "smooth_l1_loss": Case(pair, smooth_l1_textbook, F.smooth_l1_loss),
    "huber_loss": Case(pair, huber_textbook, F.huber_loss),
    "binary_cross_entropy": Case(
        probs_binary, lambda p, y: -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean(), F.binary_cross_entropy),
    "binary_cross_entropy_with_logits": Case(
        logits_binary, lambda x, y: -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))
                                      ).mean(), F.binary_cross_entropy_with_logits),
    "soft_margin_loss": Case(pair, lambda x, y: torch.log(1 + torch.exp(-y * x)).mean(), F.soft_margin_loss),
    "kl_div": Case(dist_pair, lambda x, y: (y * (torch.log(y) - x)).mean(), kl_div_builtin),
}


def _more_cases() -> dict[str, Case]:
    """The cases of benchmarks/cases_<group>.py, one module per group of stdlib losses, each with its CASES."""
    here = Path(__file__).resolve().parent
    out: dict[str, Case] = {}
    for path in sorted(here.glob("cases_*.py")):
        out.update(importlib.import_module(path.stem).CASES)
    return out


CASES.update(_more_cases())
