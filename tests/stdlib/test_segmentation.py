"""stdlib/segmentation.loss against plain-torch references (float64), edge cases and extreme inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossdsl import stdlib

from .helpers import assert_finite, check, low_precision

MODES = [{}, {"use_sigmoid": True}, {"use_softmax": True}]


def activate(p: torch.Tensor, mode: dict) -> torch.Tensor:
    if mode.get("use_sigmoid"):
        return torch.sigmoid(p)
    return torch.softmax(p, dim=1) if mode.get("use_softmax") else p


def ssum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the spatial dims (torch's sum(dim=()) would sum everything)."""
    return t.sum(tuple(range(2, t.dim()))) if t.dim() > 2 else t


def ref_dice(p, g, mode, eps=1e-5):
    q = activate(p, mode)
    num = 2 * ssum(q * g) + eps
    return (1 - num / (ssum(q * q) + ssum(g * g) + eps)).mean()


def ref_jaccard(p, g, mode, eps=1e-5):
    q = activate(p, mode)
    inter = ssum(q * g)
    return (1 - inter / (ssum(q) + ssum(g) - inter + eps)).mean()


def ref_tversky(p, g, mode, beta=0.3, gamma=0.7, eps=1e-5):
    q = activate(p, mode)
    tp, fp, fn = ssum(q * g), ssum(q * (1 - g)), ssum((1 - q) * g)
    return (1 - tp / (tp + beta * fp + gamma * fn + eps)).mean()


def inputs(shape=(2, 3, 4, 5), mode=None) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.randn(shape, dtype=torch.float64) if mode else torch.rand(shape, dtype=torch.float64)
    return p, torch.randint(0, 2, shape).double()


@pytest.mark.parametrize("mode", MODES, ids=["probs", "sigmoid", "softmax"])
@pytest.mark.parametrize("name, ref", [("dice_loss", ref_dice), ("jaccard_loss", ref_jaccard),
                                       ("tversky_loss", ref_tversky)])
def test_overlap_losses_match_reference(name: str, ref, mode: dict) -> None:
    p, g = inputs(mode=mode)
    check(getattr(stdlib, name)(**mode), lambda a, b: ref(a, b, mode), p, g)


def test_overlap_losses_any_spatial_rank() -> None:
    for shape in [(2, 3), (2, 1, 7), (1, 2, 2, 3, 2)]:
        p, g = inputs(shape)
        check(stdlib.dice_loss(), lambda a, b: ref_dice(a, b, {}), p, g)
        check(stdlib.tversky_loss(beta=0.5, gamma=0.5), lambda a, b: ref_tversky(a, b, {}, 0.5, 0.5), p, g)


def test_empty_masks() -> None:
    """Nothing to find and nothing predicted: Dice and Tversky say 0 (eps on both sides), Jaccard 1; no
    gradient either way, and a prediction on an empty mask is penalised."""
    p = torch.zeros(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    for name, value in [("dice_loss", 0.0), ("jaccard_loss", 1.0), ("tversky_loss", 1.0)]:
        out = getattr(stdlib, name)()(p, g)
        assert out.item() == pytest.approx(value, abs=1e-12), name
        assert not torch.autograd.grad(out, p)[0].any(), name
    assert stdlib.dice_loss()(torch.full_like(g, 0.5), g).item() > 0.99


def test_perfect_prediction_is_near_zero() -> None:
    g = torch.randint(0, 2, (2, 2, 8, 8)).double()
    g[:, :, 0, 0] = 1
    for name in ["dice_loss", "jaccard_loss", "tversky_loss"]:
        assert getattr(stdlib, name)()(g, g).item() < 1e-6


@low_precision
@pytest.mark.parametrize("name", ["dice_loss", "jaccard_loss", "tversky_loss"])
@pytest.mark.parametrize("mode", MODES[1:], ids=["sigmoid", "softmax"])
def test_overlap_losses_extreme_logits(name: str, mode: dict, dtype: torch.dtype) -> None:
    x = torch.tensor([1e4, -1e4, 0.0])[torch.randint(0, 3, (2, 3, 4, 4))]
    assert_finite(getattr(stdlib, name)(**mode), x, torch.randint(0, 2, x.shape).float(), dtype=dtype)


@low_precision
@pytest.mark.parametrize("name", ["dice_loss", "jaccard_loss", "tversky_loss"])
def test_overlap_losses_hard_probabilities(name: str, dtype: torch.dtype) -> None:
    """Probabilities at exactly 0 and 1, over a large map, with empty and full masks among them."""
    p = torch.randint(0, 2, (2, 3, 64, 64)).float()
    g = torch.randint(0, 2, p.shape).float()
    g[0, 0], g[1, 1] = 0.0, 1.0
    assert_finite(getattr(stdlib, name)(), p, g, dtype=dtype)


# ---- combo
def ref_combo(x, g, alpha=0.5, eps=1e-5):
    return alpha * F.binary_cross_entropy_with_logits(x, g) + (1 - alpha) * ref_dice(x, g, {"use_sigmoid": True}, eps)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_combo_matches_reference(alpha: float) -> None:
    x, g = inputs(mode=True)
    check(stdlib.combo_loss(alpha=alpha), lambda a, b: ref_combo(a, b, alpha), x, g)


@low_precision
def test_combo_extreme_logits(dtype: torch.dtype) -> None:
    x = torch.tensor([1e4, -1e4, 0.0])[torch.randint(0, 3, (2, 1, 4, 4))]
    assert_finite(stdlib.combo_loss(), x, torch.randint(0, 2, x.shape).float(), dtype=dtype)


# ---- box IoU
def ref_box_iou(b, t, eps=1e-7):
    lt, rb = torch.max(b[:, :2], t[:, :2]), torch.min(b[:, 2:], t[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    return (1 - inter / (area - inter + eps)).mean()


def boxes(n: int, scale: float = 10.0) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    return torch.cat([xy, xy + 0.5 + torch.rand(n, 2, dtype=torch.float64) * scale], dim=1)


def test_box_iou_matches_reference() -> None:
    check(stdlib.box_iou_loss(), ref_box_iou, boxes(8), boxes(8))


def test_box_iou_identical_and_disjoint_boxes() -> None:
    b = boxes(3)
    assert stdlib.box_iou_loss()(b, b).item() < 1e-7
    far = b + 100.0
    b.requires_grad_(True)
    out = stdlib.box_iou_loss()(b, far)
    assert out.item() == 1.0 and not torch.autograd.grad(out, b)[0].any()


@low_precision
def test_box_iou_extreme_boxes(dtype: torch.dtype) -> None:
    b = torch.tensor([[0.0, 0.0, 200.0, 200.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 1.0, 1.0]])
    t = torch.tensor([[100.0, 100.0, 250.0, 250.0], [5.0, 5.0, 5.0, 5.0], [150.0, 150.0, 151.0, 151.0]])
    assert_finite(stdlib.box_iou_loss(), b, t, dtype=dtype)
