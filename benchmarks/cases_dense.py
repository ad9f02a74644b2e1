"""Cases for the dense classification, regression and segmentation losses of the stdlib (issue 6).

focal_loss, weighted_bce, hinge_loss, poly1_cross_entropy, rmse_loss, jaccard_loss, combo_loss, box_iou_loss.
torchvision is not a dependency, so its box IoU loss is no built-in here; only weighted_bce (pos_weight) and
rmse_loss (sqrt of mse) have a torch function to compare with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from case_kit import Case, Tensor, classes, leaf, logits_binary, pair, scores_signs, segmentation


# ---- input generators
def segmentation_logits(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """segmentation()'s shapes and masks, with standard-normal logits instead of probabilities."""
    p, g = segmentation(n, dev, dt)
    return leaf(torch.randn_like(p)), g


def boxes(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """n // 4 predicted boxes (x1, y1, x2, y2) and targets that mostly overlap them (a few are disjoint)."""
    rows = max(n // 4, 1)
    xy = torch.rand(rows, 2, device=dev, dtype=dt) * 10
    wh = torch.rand(rows, 2, device=dev, dtype=dt) * 2 + 0.5
    t_xy = xy + 0.5 * torch.randn(rows, 2, device=dev, dtype=dt)
    t_wh = wh * torch.exp(0.3 * torch.randn(rows, 2, device=dev, dtype=dt))
    return leaf(torch.cat([xy, xy + wh], 1)), torch.cat([t_xy, t_xy + t_wh], 1)


# ---- textbook versions and built-ins
def focal_textbook(x: Tensor, y: Tensor, alpha: float | Tensor = 1.0, gamma: float = 2.0) -> Tensor:
    """The usual multi-class focal loss of PyTorch repositories: gather log p_t, weight by (1 - p_t)^gamma."""
    logpt = F.log_softmax(x, dim=1).gather(1, y[:, None]).squeeze(1)
    pt = logpt.exp()
    at = alpha[y] if isinstance(alpha, Tensor) else alpha
    return (-at * (1 - pt) ** gamma * logpt).mean()


def _bce_weights(pos_count: float, neg_count: float) -> tuple[float, float]:
    total = pos_count + neg_count
    return total / (2 * pos_count), total / (2 * neg_count)


def weighted_bce_textbook(x: Tensor, y: Tensor, pos_count: float = 1, neg_count: float = 1) -> Tensor:
    w1, w0 = _bce_weights(pos_count, neg_count)
    p = torch.sigmoid(x)
    return -(w1 * y * torch.log(p) + w0 * (1 - y) * torch.log(1 - p)).mean()


def weighted_bce_builtin(x: Tensor, y: Tensor, pos_count: float = 1, neg_count: float = 1) -> Tensor:
    """torch weights only the positives: pos_weight = w1 / w0, then the whole loss times w0."""
    w1, w0 = _bce_weights(pos_count, neg_count)
    pos_weight = torch.tensor(w1 / w0, device=x.device, dtype=x.dtype)
    return w0 * F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)


def hinge_textbook(x: Tensor, y: Tensor, margin: float = 1.0) -> Tensor:
    return torch.clamp(margin - y * x, min=0).mean()


def poly1_textbook(x: Tensor, y: Tensor, epsilon: float = 1.0) -> Tensor:
    """Leng et al.'s reference code: pt from one-hot times softmax, plus the cross-entropy."""
    pt = (F.one_hot(y, x.shape[1]).to(x.dtype) * torch.softmax(x, dim=1)).sum(dim=1)
    ce = F.cross_entropy(x, y, reduction="none")
    return (ce + epsilon * (1 - pt)).mean()


def rmse_textbook(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    return torch.sqrt(((x - y) ** 2).mean() + eps)


def rmse_builtin(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    return torch.sqrt(F.mse_loss(x, y) + eps)


def jaccard_textbook(p: Tensor, g: Tensor, eps: float = 1e-5) -> Tensor:
    inter = (p * g).sum(dim=(2, 3))
    union = p.sum(dim=(2, 3)) + g.sum(dim=(2, 3)) - inter
    return (1 - inter / (union + eps)).mean()


def combo_textbook(x: Tensor, g: Tensor, alpha: float = 0.5, eps: float = 1e-5) -> Tensor:
    """BCE with logits plus the squared-denominator Dice on sigmoid(x), per sample and class."""
    bce = F.binary_cross_entropy_with_logits(x, g, reduction="none").mean(dim=(2, 3))
    p = torch.sigmoid(x)
    dice = 1 - (2 * (p * g).sum(dim=(2, 3)) + eps) / ((p * p).sum(dim=(2, 3)) + (g * g).sum(dim=(2, 3)) + eps)
    return (alpha * bce + (1 - alpha) * dice).mean()


def box_iou_textbook(b: Tensor, t: Tensor, eps: float = 1e-7) -> Tensor:
    """As torchvision's box losses compute the intersection and union."""
    x1 = torch.max(b[:, 0], t[:, 0])
    y1 = torch.max(b[:, 1], t[:, 1])
    x2 = torch.min(b[:, 2], t[:, 2])
    y2 = torch.min(b[:, 3], t[:, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    return (1 - inter / (area_b + area_t - inter + eps)).mean()


CASES: dict[str, Case] = {
    "focal_loss": Case(classes, focal_textbook),
    "weighted_bce": Case(logits_binary, weighted_bce_textbook, weighted_bce_builtin,
                         builtin_name="F.binary_cross_entropy_with_logits(pos_weight)"),
    "hinge_loss": Case(scores_signs, hinge_textbook),
    "poly1_cross_entropy": Case(classes, poly1_textbook),
    "rmse_loss": Case(pair, rmse_textbook, rmse_builtin, builtin_name="sqrt(F.mse_loss + eps)"),
    "jaccard_loss": Case(segmentation, jaccard_textbook),
    "combo_loss": Case(segmentation_logits, combo_textbook),
    "box_iou_loss": Case(boxes, box_iou_textbook),
}
