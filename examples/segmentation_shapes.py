"""Example 2: segmentation of synthetic shapes with Dice, Tversky and combo losses, printing IoU.

Images are 32x32: a random disc, square or ring on a noisy, shaded background, whose mask is the target.
The foreground is small (about 10% of the pixels), the setting where overlap losses beat plain pixel-wise
cross-entropy. The same small fully-convolutional net is trained with each stdlib loss on its logits
(dice_loss and tversky_loss with use_sigmoid, combo_loss = BCE + Dice) and scored by IoU on a held-out set.
"""

from __future__ import annotations

import torch
from _common import seed, single_thread, steps

import lossdsl

SIZE = 32


def shapes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [n, 1, 32, 32] and their binary masks."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 1, 1, generator=gen)  # noqa: E731
    cy, cx, rad, kind = r(8, 24), r(8, 24), r(3, 7), torch.randint(0, 3, (n, 1, 1), generator=gen)
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    square = ((yy - cy).abs() < rad) & ((xx - cx).abs() < rad)
    mask = torch.where(kind == 0, dist < rad, torch.where(kind == 1, square, (dist < rad + 2) & (dist > rad - 1)))
    shade = 0.3 * r(-1, 1) * (xx - SIZE / 2) / SIZE
    image = mask.float() * r(0.5, 1.0) + shade + 0.35 * torch.randn(n, SIZE, SIZE, generator=gen)
    return image.unsqueeze(1), mask.float().unsqueeze(1)


def net() -> torch.nn.Module:
    conv = lambda i, o: torch.nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
    return torch.nn.Sequential(conv(1, 16), torch.nn.ReLU(), conv(16, 16), torch.nn.ReLU(), conv(16, 1))


def iou(logits: torch.Tensor, mask: torch.Tensor) -> float:
    pred = logits > 0
    inter = (pred & (mask > 0.5)).sum().item()
    union = (pred | (mask > 0.5)).sum().item()
    return inter / max(union, 1)


def main() -> dict[str, float]:
    single_thread()
    gen = torch.Generator().manual_seed(0)
    xtr, ytr = shapes(steps(512, 32), gen)
    xte, yte = shapes(steps(256, 16), gen)
    print(f"synthetic shapes: {len(xtr)} train / {len(xte)} test images, foreground {ytr.mean():.1%} of pixels")
    losses = {
        "dice": lossdsl.stdlib.dice_loss(use_sigmoid=True),
        "tversky (beta=0.3, gamma=0.7)": lossdsl.stdlib.tversky_loss(use_sigmoid=True),
        "combo (BCE + Dice)": lossdsl.stdlib.combo_loss(alpha=0.5),
    }
    result = {}
    for name, loss_fn in losses.items():
        seed(0)
        model = net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps(150, 3)):
            idx = torch.randint(0, len(xtr), (16,), generator=gen)
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        with torch.no_grad():
            result[name] = iou(model(xte), yte)
        print(f"{name:<30} test IoU {result[name]:.3f}")
    return result


if __name__ == "__main__":
    main()
