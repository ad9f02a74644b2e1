"""Elementwise losses over 10^8 elements on a GPU: achieved memory bandwidth as a fraction of the device's peak.

    python benchmarks/gpu_elementwise.py                      # float32, 10^8 elements
    python benchmarks/gpu_elementwise.py --elements 30000000 --dtype bfloat16

For each loss: forward + backward time of torch's built-in, the textbook eager version, and every lossdsl
mode; the bandwidth of each as bytes a perfect fused pass must move (read every input in the forward and again
in the backward, write each gradient: `measure.min_traffic`) over its time, and the fraction of the device's
peak (memory clock x bus width). Peak memory is what one forward + backward allocates above its inputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES
from measure import min_traffic, peak_bandwidth, peak_bytes, step, time_steps

import lossdsl
from lossdsl import compiled

ELEMENTWISE = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy_with_logits",
               "sigmoid_focal_loss", "soft_margin_loss", "log_cosh_loss")


def variants(name: str) -> dict:
    """Every way to compute the loss: the built-in, the textbook version and each lossdsl mode."""
    case, loss = CASES[name], lossdsl.stdlib.get(name)
    out = {}
    if case.builtin is not None:
        out["builtin"] = lambda *a: case.builtin(*a, **case.params)
    out["textbook"] = lambda *a: case.textbook(*a, **case.params)
    out["eager"] = loss.compile(**case.params)
    out["fused"] = loss.compile(mode="fused", **case.params)
    out["compiled"] = compiled.build(loss, loss.compile(**case.params))
    return out


def row(name: str, n: int, device: torch.device, dtype: torch.dtype, peak: float | None) -> None:
    inputs = CASES[name].make(n, device, dtype)
    fns = variants(name)
    ref = float(fns["textbook"](*inputs).detach())
    for key, fn in fns.items():
        got = float(fn(*inputs).detach())
        if abs(got - ref) > 1e-3 * max(abs(ref), 1e-6):
            print(f"  MISMATCH {name} {key}: {got} vs textbook {ref}")
    runs = {k: step(f, inputs) for k, f in fns.items()}
    times = time_steps(runs, device, budget=2.0)
    traffic = min_traffic(inputs)
    cells = []
    for key in fns:
        if key not in times:
            cells.append(f"{key}=failed")
            continue
        t = times[key].median
        frac = f" {traffic / t / peak:4.0%}" if peak else ""
        cells.append(f"{key}={t * 1e3:7.2f}ms{frac} {peak_bytes(runs[key], device) / 2**20:6.0f}MiB")
    best = min((k for k in ("eager", "fused", "compiled") if k in times), key=lambda k: times[k].median)
    ratio = f" best/builtin={times[best].median / times['builtin'].median:.2f}" if "builtin" in times else ""
    print(f"{name:34s} " + " | ".join(cells) + f" | best={best}{ratio}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=10**8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    peak = peak_bandwidth(device)
    print(f"{torch.cuda.get_device_name(device)}: peak {peak / 1e12 if peak else float('nan'):.2f} TB/s, "
          f"{args.elements:.0e} elements, {dtype}; time = median fwd+bwd, % = min traffic / time / peak")
    names = [n for n in ELEMENTWISE if not args.only or n in args.only.split(",")]
    for name in names:
        row(name, args.elements, device, dtype, peak)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
