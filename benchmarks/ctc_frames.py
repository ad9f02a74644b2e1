"""CTC against torch's ctc_loss as the number of frames grows, at speech-recognition batch sizes: the
regime where lossdsl's recursion, one set of torch calls per frame, costs per call rather than per element
(run.py's ctc cases fix T at 32 and 64 and grow the batch instead).

    python benchmarks/ctc_frames.py [--frames 50,200,800] [--batch 16] [--classes 32] [--threads 1]

Each sample has a target of a fifth of its frames (characters at ~25 ms a frame) and between 3/4 of T and T
frames. Prints, per T, the median forward + backward time of torch's F.ctc_loss (reduction="sum") and of
the stdlib ctc_loss (eager, also reduction="sum"), their ratio, and peak memory above the inputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import peak_bytes, retain_freed_memory, step, time_steps

import lossdsl


def problem(frames: int, batch: int, classes: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(frames, batch, classes, generator=gen), 2).requires_grad_()
    width = max(frames // 5, 1)
    targets = torch.randint(1, classes, (batch, width), generator=gen)
    target_lengths = torch.randint(max(width // 2, 1), width + 1, (batch,), generator=gen)
    input_lengths = torch.randint(3 * frames // 4, frames + 1, (batch,), generator=gen)
    return [log_probs, targets, input_lengths, target_lengths]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="50,200,800")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(retain_freed_memory())
    ours = lossdsl.stdlib.ctc_loss(reduction="sum")

    def theirs(*inputs: torch.Tensor) -> torch.Tensor:
        return F.ctc_loss(*inputs, reduction="sum")

    cpu = torch.device("cpu")
    print(f"{'T':>6} {'torch ms':>9} {'lossdsl ms':>11} {'ratio':>6} {'torch MB':>9} {'lossdsl MB':>11}")
    for frames in (int(t) for t in args.frames.split(",")):
        inputs = problem(frames, args.batch, args.classes)
        runs = {"torch": step(theirs, inputs), "lossdsl": step(ours, inputs)}
        times = time_steps(runs, cpu)
        mem = {k: peak_bytes(run, cpu) / 1e6 for k, run in runs.items()}
        t, o = times["torch"].median * 1e3, times["lossdsl"].median * 1e3
        print(f"{frames:>6} {t:>9.2f} {o:>11.2f} {o / t:>6.2f} {mem['torch']:>9.2f} {mem['lossdsl']:>11.2f}")


if __name__ == "__main__":
    main()
