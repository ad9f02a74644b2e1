"""Times each lossdsl.functional drop-in against torch's built-in: forward + backward, CPU, two sizes.

    python benchmarks/dropins.py [--repeat 20] [--threads 1] [--only cross_entropy,ctc_loss]

Prints one row per loss: the median time of torch and of lossdsl for a small and a large problem, and the
ratio lossdsl / torch (below 1 means lossdsl is faster). The small size measures per-call overhead
(argument translation, module lookup, validation); the large one the generated arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as TF

import lossdsl.functional as LF

Case = Callable[[int], tuple[list, dict]]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return 0.01 + 0.98 * torch.rand(*shape, generator=_g(seed))


def signs(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=_g(5)).float() * 2 - 1


def classes(n: int, c: int) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=_g(7))


def _multilabel_targets(n: int, c: int) -> torch.Tensor:
    target = torch.full((n, c), -1)
    target[:, :2] = torch.stack([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)], 1) % c
    return target


def _ctc(n: int) -> tuple[list, dict]:
    frames, batch, labels = (20, 2, 4) if n < 100 else (100, 32, 20)
    lp = torch.log_softmax(randn(frames, batch, labels + 1), -1)
    targets = torch.randint(1, labels + 1, (batch, frames // 3), generator=_g(3))
    lengths = torch.full((batch,), frames, dtype=torch.long)
    return [lp, targets, lengths, torch.full((batch,), frames // 3, dtype=torch.long)], {}


# name -> size -> (inputs, options); n is the number of elements along the batch axis
CASES: dict[str, Case] = {
    "l1_loss": lambda n: ([randn(n, 16), randn(n, 16, seed=1)], {}),
    "mse_loss": lambda n: ([randn(n, 16), randn(n, 16, seed=1)], {}),
    "smooth_l1_loss": lambda n: ([randn(n, 16), randn(n, 16, seed=1)], {"beta": 0.5}),
    "huber_loss": lambda n: ([randn(n, 16), randn(n, 16, seed=1)], {"delta": 0.5}),
    "binary_cross_entropy": lambda n: ([rand(n, 16), rand(n, 16, seed=1)], {}),
    "binary_cross_entropy_with_logits": lambda n: ([randn(n, 16), rand(n, 16, seed=1)],
                                                   {"pos_weight": rand(16, seed=2)}),
    "cross_entropy": lambda n: ([randn(n, 100), classes(n, 100)], {"label_smoothing": 0.1}),
    "nll_loss": lambda n: ([torch.log_softmax(randn(n, 100), 1), classes(n, 100)], {}),
    "kl_div": lambda n: ([torch.log_softmax(randn(n, 16), 1), torch.softmax(randn(n, 16, seed=1), 1)],
                         {"reduction": "batchmean"}),
    "poisson_nll_loss": lambda n: ([randn(n, 16), torch.poisson(rand(n, 16, seed=1) * 4)], {}),
    "gaussian_nll_loss": lambda n: ([randn(n, 16), randn(n, 16, seed=1), rand(n, 16, seed=2)], {}),
    "soft_margin_loss": lambda n: ([randn(n, 16), signs(n, 16)], {}),
    "multilabel_soft_margin_loss": lambda n: ([randn(n, 16), rand(n, 16, seed=1).round()], {}),
    "multilabel_margin_loss": lambda n: ([randn(n, 16), _multilabel_targets(n, 16)], {}),
    "multi_margin_loss": lambda n: ([randn(n, 100), classes(n, 100)], {}),
    "hinge_embedding_loss": lambda n: ([randn(n, 16), signs(n, 16)], {}),
    "margin_ranking_loss": lambda n: ([randn(n), randn(n, seed=1), signs(n)], {}),
    "cosine_embedding_loss": lambda n: ([randn(n, 64), randn(n, 64, seed=1), signs(n)], {}),
    "triplet_margin_loss": lambda n: ([randn(n, 64), randn(n, 64, seed=1), randn(n, 64, seed=2)], {}),
    "triplet_margin_with_distance_loss": lambda n: ([randn(n, 64), randn(n, 64, seed=1), randn(n, 64, seed=2)], {}),
    "ctc_loss": _ctc,
}
SIZES = {"small": 8, "large": 4096}


def time_call(fn: Callable, inputs: list, options: dict, repeat: int) -> float:
    """Median seconds of forward + backward (gradient of the first input)."""
    samples = []
    for _ in range(repeat + 2):
        leaf = inputs[0].detach().requires_grad_()
        start = time.perf_counter()
        fn(leaf, *inputs[1:], **options).backward()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[2:])


def run(names: list[str], repeat: int) -> list[tuple[str, dict[str, tuple[float, float]]]]:
    rows = []
    for name in names:
        timings = {}
        for size, n in SIZES.items():
            inputs, options = CASES[name](n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = time_call(getattr(TF, name), inputs, options, repeat)
                ours = time_call(getattr(LF, name), inputs, options, repeat)
            timings[size] = (theirs, ours)
        rows.append((name, timings))
    return rows


def report(rows) -> str:
    head = f"{'loss':36} " + " ".join(f"{s + ' torch':>12} {s + ' ours':>12} {'ratio':>6}" for s in SIZES)
    lines = [head, "-" * len(head)]
    for name, timings in rows:
        cells = " ".join(f"{t * 1e6:10.0f}us {o * 1e6:10.0f}us {o / t:6.2f}" for t, o in timings.values())
        lines.append(f"{name:36} {cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated loss names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(CASES)
    print(f"CPU, {torch.get_num_threads()} thread(s), float32, forward + backward, median of {args.repeat}")
    print(f"sizes: {SIZES} (batch rows)\n")
    print(report(run(names, args.repeat)))


if __name__ == "__main__":
    main()
