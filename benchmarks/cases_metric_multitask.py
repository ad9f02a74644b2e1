"""Cases for the metric-learning losses (stdlib/metric.loss) and the multi-task recipes (stdlib/multitask.loss).

contrastive_loss, triplet_loss, nt_xent, clip_loss, supcon_loss, center_loss; uncertainty_weighting,
dynamic_weighting, distillation_loss, ohem_cross_entropy, faster_rcnn_loss. For the similarity-matrix losses
n counts matrix entries (as case_kit.embeddings). The learnable parameters of center_loss, uncertainty_weighting
and dynamic_weighting are created by the module at their initial value (0, 0, 1); the textbook versions use
that value as a constant, which is the same work since the benchmark differentiates the inputs only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from case_kit import EMBED, Case, Tensor, classes, embeddings, leaf, triplets

SUPCON_CLASSES = 10  # labels of the supcon case (CIFAR-10, the paper's smallest benchmark)
CENTER_CLASSES = 100  # k of the center_loss case: the size of its [k, d] centres
DETECTION_CLASSES = 81  # COCO's 80 classes and the background (class 0)


# ---- input generators
def pairs_labelled(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """[n / 128, 128] pairs, similar (0) or dissimilar (1). Scaled so that distances are about the margin 1:
    with standard-normal embeddings every distance is about 16 and the dissimilar term would always be 0."""
    rows = max(n // EMBED, 1)
    s = 1 / math.sqrt(2 * EMBED)
    a = torch.randn(rows, EMBED, device=dev, dtype=dt) * s
    b = torch.randn(rows, EMBED, device=dev, dtype=dt) * s
    return leaf(a), leaf(b), (torch.rand(rows, device=dev) > 0.5).to(dt)


def two_views(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """N = sqrt(n) / 2 samples of two views: SimCLR's similarity matrix over the 2N views has n entries."""
    rows = max(int(math.sqrt(n)) // 2, 2)
    return leaf(torch.randn(rows, EMBED, device=dev, dtype=dt)), leaf(torch.randn(rows, EMBED, device=dev, dtype=dt))


def labelled_embeddings(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    z, _ = embeddings(n, dev, dt)
    return z, torch.randint(SUPCON_CLASSES, (z.shape[0],), device=dev)


def features(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    rows = max(n // EMBED, 1)
    return leaf(torch.randn(rows, EMBED, device=dev, dtype=dt)), torch.randint(CENTER_CLASSES, (rows,), device=dev)


def task_losses(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """n task losses in [0.1, 5): real models have a handful, but the case scales like the others."""
    return (leaf(torch.rand(n, device=dev, dtype=dt) * 4.9 + 0.1),)


def student_teacher(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Student logits (differentiated), a detached and more confident teacher, labels."""
    s, y = classes(n, dev, dt)
    return s, torch.randn_like(s.detach()) * 2, y


def detections(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """n / 81 sampled RoIs: class logits, labels a quarter foreground (the paper's sampling), box deltas for the
    label's class and their targets."""
    rows = max(n // DETECTION_CLASSES, 1)
    x = torch.randn(rows, DETECTION_CLASSES, device=dev, dtype=dt)
    fg = torch.rand(rows, device=dev) < 0.25
    y = torch.where(fg, torch.randint(1, DETECTION_CLASSES, (rows,), device=dev), 0)
    r = torch.randn(rows, 4, device=dev, dtype=dt)
    return leaf(x), y, leaf(r), torch.randn(rows, 4, device=dev, dtype=dt) * 0.5


# ---- textbook versions and built-ins
def contrastive_textbook(a: Tensor, b: Tensor, y: Tensor, margin: float = 1.0) -> Tensor:
    d = torch.sqrt(((a - b) ** 2).sum(dim=1))
    return ((1 - y) * d**2 + y * torch.clamp(margin - d, min=0) ** 2).mean()


def triplet_textbook(a: Tensor, p: Tensor, q: Tensor, margin: float = 1.0) -> Tensor:
    d_ap = torch.sqrt(((a - p) ** 2).sum(dim=1))
    d_aq = torch.sqrt(((a - q) ** 2).sum(dim=1))
    return torch.clamp(d_ap - d_aq + margin, min=0).mean()


def triplet_builtin(a: Tensor, p: Tensor, q: Tensor, margin: float = 1.0) -> Tensor:
    """eps = 0: torch adds eps = 1e-6 to each difference before the norm, the stdlib does not."""
    return F.triplet_margin_loss(a, p, q, margin=margin, eps=0.0)


def nt_xent_textbook(u: Tensor, v: Tensor, temperature: float = 0.5) -> Tensor:
    """The usual PyTorch SimCLR snippet: exp of the 2N x 2N similarities, self-similarity masked out."""
    n = u.shape[0]
    z = torch.cat([F.normalize(u, dim=1), F.normalize(v, dim=1)], dim=0)
    sim = z @ z.T / temperature
    positives = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)])
    mask = (~torch.eye(2 * n, dtype=torch.bool, device=u.device)).to(u.dtype)
    denominator = (mask * torch.exp(sim)).sum(dim=1)
    return -torch.log(torch.exp(positives) / denominator).mean()


def nt_xent_builtin(u: Tensor, v: Tensor, temperature: float = 0.5) -> Tensor:
    """Cross-entropy over the 2N x 2N logits with the diagonal at -inf and the other view as the class."""
    n = u.shape[0]
    z = torch.cat([F.normalize(u, dim=1), F.normalize(v, dim=1)], dim=0)
    eye = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
    return F.cross_entropy(logits, target)


def clip_textbook(x: Tensor, t: Tensor, temperature: float = 0.07) -> Tensor:
    """CLIP's pseudo-code with the cross-entropies written out: exp, sum along each axis, log."""
    sim = torch.exp(F.normalize(x, dim=1) @ F.normalize(t, dim=1).T / temperature)
    pos = torch.diag(sim)
    loss_i = -torch.log(pos / sim.sum(dim=1)).mean()
    loss_t = -torch.log(pos / sim.sum(dim=0)).mean()
    return (loss_i + loss_t) / 2


def clip_builtin(x: Tensor, t: Tensor, temperature: float = 0.07) -> Tensor:
    """open_clip's ClipLoss: F.cross_entropy on the logits and their transpose, labels on the diagonal."""
    logits = F.normalize(x, dim=1) @ F.normalize(t, dim=1).T / temperature
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def supcon_textbook(z: Tensor, y: Tensor, temperature: float = 0.07) -> Tensor:
    """The official SupContrast code (one view, base_temperature = temperature), max subtraction included."""
    f = F.normalize(z, dim=1)
    mask = (y[:, None] == y[None, :]).to(z.dtype)
    logits = f @ f.T / temperature
    logits_max, _ = torch.max(logits, dim=1, keepdim=True)
    logits = logits - logits_max.detach()
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(len(y), device=z.device)[:, None], 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
    return -((mask * log_prob).sum(1) / mask_pos_pairs).mean()


def center_textbook(f: Tensor, y: Tensor, k: int = CENTER_CLASSES) -> Tensor:
    """The centres' initial value, zeros of [k, d] (the module's own parameter)."""
    centers = torch.zeros(k, f.shape[1], device=f.device, dtype=f.dtype)
    return 0.5 * ((f - centers[y]) ** 2).sum(dim=1).mean()


def uncertainty_textbook(losses: Tensor) -> Tensor:
    """Kendall et al. with log-variances at their initial value, 0."""
    log_vars = torch.zeros_like(losses)
    return (torch.exp(-log_vars) * losses + log_vars).sum()


def dynamic_textbook(losses: Tensor, temperature: float = 2.0) -> Tensor:
    """Softmax weights of logits at their initial value, 1."""
    w = torch.ones_like(losses)
    return (F.softmax(w / temperature, dim=0) * losses).sum()


def distillation_textbook(s: Tensor, t: Tensor, y: Tensor, alpha: float = 0.3, temperature: float = 4.0) -> Tensor:
    """PyTorch's knowledge-distillation tutorial: KL written as sum p (log p - log q) / batch, times T^2."""
    soft_targets = F.softmax(t / temperature, dim=-1)
    soft_prob = F.log_softmax(s / temperature, dim=-1)
    soft_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.shape[0] * temperature**2
    return (1 - alpha) * soft_loss + alpha * F.cross_entropy(s, y)


def distillation_builtin(s: Tensor, t: Tensor, y: Tensor, alpha: float = 0.3, temperature: float = 4.0) -> Tensor:
    """Hinton et al. with F.kl_div (batchmean: the true KL per sample) and F.cross_entropy."""
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * temperature**2 * kl


def ohem_textbook(x: Tensor, y: Tensor, k: int = 128) -> Tensor:
    """Per-sample cross-entropy, then the mean of the k largest (topk; all of them when fewer)."""
    ce = F.cross_entropy(x, y, reduction="none")
    return ce.topk(min(k, ce.numel())).values.mean()


def faster_rcnn_textbook(x: Tensor, y: Tensor, r: Tensor, g: Tensor, lambda_: float = 1.0,
                         beta: float = 1.0) -> Tensor:
    """py-faster-rcnn's _smooth_l1_loss (sigma^2 = 1 / beta, inside weights = foreground) as in the PyTorch
    ports, plus the classification cross-entropy; both averaged over the RoIs."""
    sigma_2 = 1 / beta
    inside = (y >= 1).to(r.dtype)[:, None]
    diff = inside * (r - g)
    abs_diff = diff.abs()
    sign = (abs_diff < 1 / sigma_2).detach().to(r.dtype)
    box = diff**2 * (sigma_2 / 2) * sign + (abs_diff - 0.5 / sigma_2) * (1 - sign)
    return F.cross_entropy(x, y) + lambda_ * box.sum(dim=1).mean()


def faster_rcnn_builtin(x: Tensor, y: Tensor, r: Tensor, g: Tensor, lambda_: float = 1.0,
                        beta: float = 1.0) -> Tensor:
    """torchvision's fastrcnn_loss: smooth L1 summed over the foreground RoIs, divided by all RoIs."""
    fg = torch.where(y > 0)[0]
    box = F.smooth_l1_loss(r[fg], g[fg], beta=beta, reduction="sum") / y.numel()
    return F.cross_entropy(x, y) + lambda_ * box


CASES: dict[str, Case] = {
    "contrastive_loss": Case(pairs_labelled, contrastive_textbook),
    "triplet_loss": Case(triplets, triplet_textbook, triplet_builtin, builtin_name="F.triplet_margin_loss(eps=0)"),
    "nt_xent": Case(two_views, nt_xent_textbook, nt_xent_builtin, builtin_name="F.cross_entropy(masked z z^T)"),
    "clip_loss": Case(embeddings, clip_textbook, clip_builtin, builtin_name="F.cross_entropy(x t^T, both ways)"),
    "supcon_loss": Case(labelled_embeddings, supcon_textbook),
    "center_loss": Case(features, center_textbook, params={"k": CENTER_CLASSES}),
    "uncertainty_weighting": Case(task_losses, uncertainty_textbook),
    "dynamic_weighting": Case(task_losses, dynamic_textbook),
    "distillation_loss": Case(student_teacher, distillation_textbook, distillation_builtin,
                              builtin_name="F.kl_div(batchmean) + F.cross_entropy"),
    "ohem_cross_entropy": Case(classes, ohem_textbook),
    "faster_rcnn_loss": Case(detections, faster_rcnn_textbook, faster_rcnn_builtin,
                             builtin_name="F.cross_entropy + F.smooth_l1_loss"),
}
