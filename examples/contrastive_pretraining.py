"""Example 3: contrastive pre-training with InfoNCE on a small bundled data set, then a linear probe.

scikit-learn's digits (1797 8x8 images, shipped inside the package) are encoded by a small MLP trained
without labels: two random augmentations of each image (shift, pixel dropout, noise) are a positive pair,
the rest of the batch are negatives, and the loss is the stdlib's info_nce (van den Oord et al., 2018).
A logistic-regression probe on the frozen embeddings then measures what the encoder learned; the same
probe on an untrained encoder is the baseline.
"""

from __future__ import annotations

import torch
from _common import seed, single_thread, steps
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import lossdsl


def augment(x: torch.Tensor) -> torch.Tensor:
    """A random view of a batch of 8x8 images: shifted by up to one pixel, 20% pixels dropped, noise."""
    img = x.view(-1, 1, 8, 8)
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,)))
    img = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
    img = img * (torch.rand_like(img) > 0.2) + 0.1 * torch.randn_like(img)
    return img.view(len(x), 64)


def encoder() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))


def probe(enc: torch.nn.Module, xtr, ytr, xte, yte) -> float:
    with torch.no_grad():
        ftr, fte = enc(xtr).numpy(), enc(xte).numpy()
    clf = LogisticRegression(max_iter=steps(2000, 50)).fit(ftr, ytr)
    return float(clf.score(fte, yte))


def main() -> dict[str, float]:
    single_thread()
    seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    print(f"digits: {len(xtr)} images to pre-train on (labels unused), {len(xte)} to test the probe")
    loss_fn = lossdsl.stdlib.info_nce(temperature=0.2)
    enc = encoder()
    result = {"untrained encoder": probe(enc, xtr, ytr, xte, yte)}
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    for step in range(steps(400, 3)):
        batch = xtr[torch.randint(0, len(xtr), (256,))]
        opt.zero_grad()
        loss = loss_fn(enc(augment(batch)), enc(augment(batch)))
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps(400, 3) - 1:
            print(f"  step {step:4d}  InfoNCE {loss.item():.3f}")
    result["InfoNCE pre-trained"] = probe(enc, xtr, ytr, xte, yte)
    for name, acc in result.items():
        print(f"linear probe on {name:<20} test accuracy {acc:.3f}")
    return result


if __name__ == "__main__":
    main()
