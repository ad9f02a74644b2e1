"""Example 1: imbalanced classification, cross-entropy versus focal loss, on a real data set.

The Wisconsin breast-cancer set ships inside scikit-learn (nothing is downloaded). Malignant tumours are
the positive class; we keep one in six of them, so positives are about 9% of the data, and train the same
small network with the stdlib's binary cross-entropy and sigmoid focal loss (Lin et al., 2017), over
several seeds, printing the minority class's recall and F1 on a held-out split with the same imbalance.
"""

from __future__ import annotations

import numpy as np
import torch
from _common import seed, single_thread, steps
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import f1_score, recall_score
from sklearn.model_selection import train_test_split

import lossdsl

SEEDS = (0, 1, 2, 3, 4)


def data(rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    x, y = load_breast_cancer(return_X_y=True)
    y = (y == 0).astype(np.float32)  # malignant = 1, the class we make rare
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    keep = np.concatenate([neg, rng.choice(pos, size=len(pos) // 6, replace=False)])
    xtr, xte, ytr, yte = train_test_split(x[keep], y[keep], test_size=0.4, stratify=y[keep], random_state=0)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_t((xtr - mu) / sd), as_t(ytr), as_t((xte - mu) / sd), as_t(yte)


def train(loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(model(x).squeeze(1), y).backward()
        opt.step()
    return model


def main() -> dict[str, tuple[float, float]]:
    single_thread()
    losses = {
        "cross-entropy": lossdsl.stdlib.binary_cross_entropy_with_logits(),
        "focal (alpha=0.75, gamma=2)": lossdsl.stdlib.sigmoid_focal_loss(alpha=0.75, gamma=2.0),
    }
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in losses}
    xtr, ytr, xte, yte = data(np.random.default_rng(0))
    print(f"breast cancer, malignant made rare: {int(ytr.sum())}/{len(ytr)} positives in train, "
          f"{int(yte.sum())}/{len(yte)} in test")
    for s in SEEDS[:steps(len(SEEDS), 1)]:
        for name, loss_fn in losses.items():
            seed(s)
            model = train(loss_fn, xtr, ytr, steps(200, 5))
            with torch.no_grad():
                pred = (model(xte).squeeze(1) > 0).numpy()
            scores[name].append((recall_score(yte, pred, zero_division=0), f1_score(yte, pred, zero_division=0)))
    result = {}
    for name, rows in scores.items():
        recall, f1 = np.mean(rows, axis=0)
        result[name] = (float(recall), float(f1))
        print(f"{name:<28} minority recall {recall:.3f}   minority F1 {f1:.3f}   (mean of {len(rows)} seeds)")
    return result


if __name__ == "__main__":
    main()
