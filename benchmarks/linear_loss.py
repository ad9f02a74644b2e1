"""A linear layer + cross-entropy over a large vocabulary: the chunked stdlib loss (lossdsl.chunked) against
torch's F.cross_entropy of the full logits, forward + backward (d/dh, d/dweight), time and peak memory.

    python benchmarks/linear_loss.py [--rows 4096] [--dim 512] [--vocab 32768] [--chunks 256,1024]
        [--loss cross_entropy|cross_entropy_smoothed] [--device cpu|cuda] [--threads 1]

Memory is the peak above the inputs (benchmarks/measure.py): the unchunked loss holds the [N, V] logits
and their gradient; the chunked one a [chunk, V] block and the [V, D] weight gradient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import peak_bytes, step, time_steps

from lossdsl.chunked import linear_loss

SMOOTHING = 0.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--chunks", default="256,1024")
    ap.add_argument("--loss", default="cross_entropy", choices=("cross_entropy", "cross_entropy_smoothed"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(args.rows, args.dim, device=dev, generator=gen).requires_grad_()
    w = (torch.randn(args.vocab, args.dim, device=dev, generator=gen) / args.dim ** 0.5).requires_grad_()
    y = torch.randint(args.vocab, (args.rows,), device=dev, generator=gen)
    params = {"label_smoothing": SMOOTHING} if args.loss == "cross_entropy_smoothed" else {}
    smoothing = params.get("label_smoothing", 0.0)

    def full(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(h @ w.T, y, label_smoothing=smoothing)

    variants = {"torch full logits": full}
    for chunk in (int(c) for c in args.chunks.split(",")):
        module = linear_loss(args.loss, chunk=chunk, **params)
        variants[f"lossdsl chunk={chunk}"] = lambda h, w, m=module: m(h, w, y)
    values = {k: float(fn(h, w)) for k, fn in variants.items()}
    runs = {k: step(fn, (h, w)) for k, fn in variants.items()}
    times = time_steps(runs, dev, budget=2.0, max_rounds=10)
    logits_mb = args.rows * args.vocab * 4 / 2**20
    print(f"{args.loss}: N={args.rows} D={args.dim} V={args.vocab} on {dev} "
          f"({torch.get_num_threads()} threads); one [N, V] float32 tensor = {logits_mb:.0f} MB")
    print(f"{'variant':22} {'ms':>9} {'peak MB':>9} {'time/torch':>11} {'mem/torch':>10}  value")
    base_t, base_m = times["torch full logits"].median, peak_bytes(runs["torch full logits"], dev)
    for key in variants:
        t, m = times[key].median, peak_bytes(runs[key], dev)
        print(f"{key:22} {t * 1e3:9.1f} {m / 2**20:9.1f} {t / base_t:11.2f} {m / base_m:10.3f}  {values[key]:.6f}")


if __name__ == "__main__":
    main()
