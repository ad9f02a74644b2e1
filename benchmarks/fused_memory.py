"""Peak memory of forward + backward: autograd mode against fused mode, for losses on 10^7 elements.

    python benchmarks/fused_memory.py [--elements 10000000] [--device cpu|cuda]
    python benchmarks/fused_memory.py --stdlib [--axis 256] [--device cpu|cuda] [--only a,b]

`--stdlib` times fused against eager mode for every stdlib loss with a symbolic gradient (every axis of
size --axis, a *group as 16 x 16, undeclared-shape inputs as 64 x --axis) and flags a fused mode more than
3x slower or holding more than 2x the peak memory (benchmarks/measure.py's timing and peak).

CUDA: torch.cuda.max_memory_allocated above the inputs. CPU: the process's peak resident set (VmHWM,
reset through /proc/self/clear_refs) above the resident set once inputs exist; tensors of this size are
mmapped by glibc (MALLOC_MMAP_THRESHOLD_ is pinned below them), so freeing returns them to the OS and the
high-water mark is the peak of live tensors. Each (loss, mode) runs in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

FOCAL = """loss focal(x: logits, y: binary; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0):
    p  = sigmoid(x)
    pt = where(y == 1, p, 1 - p)
    at = where(y == 1, alpha, 1 - alpha)
    return -at * (1 - pt)^gamma * log(pt)"""
CE = """loss softmax_ce(x[n, c]: logits, y[n]: index(c)):
    -log_softmax_c(x)[n, y]"""
DICE = """loss dice(p[n, c, *s]: prob, g[n, c, *s]: binary; eps = 1e-5 > 0):
    1 - (2*sum_{*s}(p*g) + eps) / (sum_{*s}(p^2) + sum_{*s}(g^2) + eps)"""
CASES = {"focal": FOCAL, "softmax_ce": CE, "dice": DICE}


def make_inputs(case: str, n: int, device: str):
    import torch

    g = torch.Generator().manual_seed(0)
    if case == "focal":
        return [torch.randn(n, generator=g), (torch.rand(n, generator=g) > 0.5).float()]
    if case == "softmax_ce":
        rows = n // 100
        return [torch.randn(rows, 100, generator=g), torch.randint(0, 100, (rows,), generator=g)]
    spatial = n // 20
    return [torch.rand(4, 5, spatial, generator=g), (torch.rand(4, 5, spatial, generator=g) > 0.5).float()]


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def measure(case: str, mode: str, n: int, device: str) -> dict:
    """One measurement in this process: peak bytes above the inputs, and the wall time."""
    import gc

    import torch

    import lossdsl

    module = lossdsl.compile(CASES[case], mode=mode).to(device)
    small = [t.to(device) for t in make_inputs(case, 2000, "cpu")]
    small[0].requires_grad_(True)
    module(*small).backward()  # generate and load the classes before measuring
    inputs = [t.to(device) for t in make_inputs(case, n, device)]
    x = inputs[0].requires_grad_(True)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss("VmRSS:")
    start = time.perf_counter()
    module(x, *inputs[1:]).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss("VmHWM:") - base
    return {"case": case, "mode": mode, "peak_bytes": peak, "seconds": time.perf_counter() - start,
            "grad_bytes": x.grad.numel() * x.grad.element_size()}


def stdlib_inputs(loss, axis: int, device: str) -> tuple[list, dict]:
    """Inputs of every tensor input by kind (float ones requiring grad) and the axis keywords to build with."""
    import torch

    from lossdsl.strategies import axes_of, classes_of, sample, shapes

    gen = torch.Generator().manual_seed(0)
    sizes = dict.fromkeys(axes_of(loss.ir), axis)
    drawn = shapes(loss.ir, sizes, group=(16, 16), loose=(64, axis))
    out = []
    for i in loss.inputs:
        t = sample(i.kind, drawn[i.name], gen, classes_of(loss.ir, i, sizes)).to(device)
        out.append(t.float().requires_grad_(True) if t.is_floating_point() else t)
    return out, {k: axis for k in loss.axis_keywords()}


def stdlib_sweep(axis: int, device: str, only: list[str] | None) -> None:
    import torch

    import lossdsl.stdlib
    from lossdsl.fused import differentiable

    sys.path.insert(0, os.path.dirname(__file__))
    from measure import peak_bytes, time_steps

    def step(module, inputs):  # allow_unused: fused mode leaves a gradient that is identically 0 as None
        diff = [t for t in inputs if t.requires_grad]
        return lambda: torch.autograd.grad(module(*inputs), diff, allow_unused=True)

    print(f"{'loss':<40} {'eager ms':>9} {'fused ms':>9} {'x':>6} {'eager MiB':>10} {'fused MiB':>10} {'x':>6}")
    dev = torch.device(device)
    for name in only or lossdsl.stdlib.names():
        loss = lossdsl.stdlib.get(name)
        if any(i.kind == "fn" for i in loss.inputs) or not differentiable(loss.ir):
            continue
        inputs, keywords = stdlib_inputs(loss, axis, device)
        runs = {mode: step(loss.compile(mode=mode, **keywords).to(dev), inputs) for mode in ("eager", "fused")}
        t = time_steps(runs, dev, budget=0.5, max_rounds=15)
        if len(t) < 2:
            print(f"{name:<40} failed")
            continue
        mem = {mode: peak_bytes(run, dev) for mode, run in runs.items()}
        slow, big = t["fused"].median / t["eager"].median, mem["fused"] / max(mem["eager"], 1)
        flag = ("  SLOW" if slow > 3 else "") + ("  MEMORY" if big > 2 else "")
        print(f"{name:<40} {t['eager'].median * 1e3:9.2f} {t['fused'].median * 1e3:9.2f} {slow:6.2f} "
              f"{mem['eager'] / 2**20:10.2f} {mem['fused'] / 2**20:10.2f} {big:6.2f}{flag}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=10_000_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--stdlib", action="store_true", help="fused vs eager time and memory for every stdlib loss")
    ap.add_argument("--axis", type=int, default=256, help="--stdlib: the size of every axis")
    ap.add_argument("--only", help="--stdlib: comma-separated loss names")
    args = ap.parse_args()
    if args.stdlib:
        stdlib_sweep(args.axis, args.device, args.only.split(",") if args.only else None)
        return
    if args.one:
        print(json.dumps(measure(*args.one, args.elements, args.device)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"{'loss':<12} {'mode':<9} {'peak MiB':>9} {'x grad MiB':>10} {'seconds':>8}")
    for case in CASES:
        peaks = {}
        for mode in ("eager", "fused"):
            cmd = [sys.executable, __file__, "--one", case, mode, "--elements", str(args.elements),
                   "--device", args.device]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{case} {mode} failed:\n{done.stderr}")
            r = json.loads(done.stdout)
            peaks[mode] = r["peak_bytes"]
            print(f"{case:<12} {mode:<9} {r['peak_bytes'] / 2**20:9.1f} {r['grad_bytes'] / 2**20:10.1f} "
                  f"{r['seconds']:8.2f}")
        print(f"{case:<12} fused/eager peak = {peaks['fused'] / max(peaks['eager'], 1):.2f}")


if __name__ == "__main__":
    main()
