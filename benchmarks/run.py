"""Forward + backward time and peak memory of every stdlib loss: torch built-in, textbook eager, lossdsl modes.

    python benchmarks/run.py                 # everything: table, size sweep, pipeline/compile times
    python benchmarks/run.py --only mse_loss,dice_loss --skip-sweep --skip-startup

Ratios are printed against the built-in (`best/builtin`, lower is better) and as speed-ups over the textbook
eager version (`textbook/best`, higher is better). Every time is a median of repeated calls; `noise` is the
largest interquartile spread / median among the variants of a row. On a GPU each row also gives the
bandwidth achieved by the best lossdsl mode as a fraction of the device's peak (minimum traffic model:
read each input twice, write each gradient once).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES, Case
from measure import SLOW, min_traffic, peak_bandwidth, peak_bytes, retain_freed_memory, step, time_steps

import lossdsl
from lossdsl import compiled
from lossdsl.api import Loss

SIZES = {"small": 1 << 12, "large": 1 << 22}


def elements(size: str) -> int:
    """A size name of SIZES, or an element count such as 1e8 (the GPU target's size)."""
    return SIZES[size] if size in SIZES else int(float(size))
MODES = ("eager", "fused", "compiled", "compiled_sym", "compiled_fwd")
# compiled.build's backward, by mode name
COMPILED = {"compiled": "autograd", "compiled_sym": "symbolic", "compiled_fwd": "in_forward",
            "compiled_auto": "auto"}  # compiled_auto: on request (--modes), it compiles the other three again
RECOMPUTE = "masks"  # compiled.build's recompute policy, set by --recompute (one per process: Dynamo shares
# compiled code between modules of one class, so two policies in one process would mix)
SWEEP = ("mse_loss", "sigmoid_focal_loss", "cross_entropy")


def stdlib_losses() -> dict[str, Loss]:
    """Every stdlib loss that lowers today, by name (one that fails is reported and left out)."""
    out: dict[str, Loss] = {}
    for name in lossdsl.stdlib.names():
        try:
            out[name] = lossdsl.stdlib.get(name)
        except Exception as err:
            print(f"  {name}: skipped (does not compile: {type(err).__name__}: {str(err)[:100]})")
    return out


def variants(loss: Loss, case: Case, modes: tuple[str, ...], dynamic: bool) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    if case.builtin is not None:
        out["builtin"] = lambda *a: case.builtin(*a, **case.params)
    out["textbook"] = lambda *a: case.textbook(*a, **case.params)
    for mode in modes:
        try:
            if mode in COMPILED:
                out[mode] = compiled.build(loss, loss.compile(**case.params), dynamic=dynamic, recompute=RECOMPUTE,
                                           backward=COMPILED[mode])
            else:
                out[mode] = loss.compile(mode=mode, **case.params)
        except Exception as err:  # a mode still being built must not stop the benchmark
            print(f"  {loss.name}: mode {mode} unavailable ({type(err).__name__}: {err})")
    return out


def agree(fns: dict[str, Callable], inputs: tuple) -> str:
    """'' when every variant gives the reference's value (textbook), else the names that differ."""
    ref = float(fns["textbook"](*inputs).detach())
    bad = [k for k, f in fns.items() if abs(float(f(*inputs).detach()) - ref) > 1e-3 * max(1.0, abs(ref))]
    return "" if not bad else "MISMATCH:" + ",".join(bad)


def bench_row(name: str, loss: Loss, size: str, device: torch.device, dtype: torch.dtype,
              modes: tuple[str, ...]) -> dict | None:
    case = CASES[name]
    inputs = case.make(elements(size), device, dtype)
    fns = variants(loss, case, modes, dynamic=False)
    row: dict = {"name": name, "size": size, "check": "", "t": {}, "mem": {}, "noise": 0.0, "compile": None}
    runs = {key: step(fn, inputs) for key, fn in fns.items()}
    for key, timing in time_steps(runs, device, budget=0.5 if elements(size) >= SIZES["large"] else 0.2).items():
        row["t"][key] = timing.median
        row["noise"] = max(row["noise"], timing.spread)
        if timing.median < SLOW:
            row["mem"][key] = peak_bytes(runs[key], device)
        if key == "compiled":
            row["compile"] = timing.first
    working = {k: f for k, f in fns.items() if k in row["mem"] or k == "textbook"}  # the reference, even if slow
    row["check"] = agree(working, inputs)
    peak = peak_bandwidth(device)
    modes_done = [m for m in modes if m in row["t"]]
    if peak and modes_done:
        best = min(row["t"][m] for m in modes_done)
        row["bw"] = min_traffic(inputs) / best / peak
    return row


def fmt_ms(t: float | None) -> str:
    return f"{t * 1e3:8.3f}" if t is not None else "       -"


def print_rows(rows: list[dict], modes: tuple[str, ...]) -> None:
    cols = ["builtin", "textbook", *modes]
    head = f"{'loss':34} {'size':5} " + " ".join(f"{c:>8}" for c in cols)
    head += "  best/builtin textbook/best  mem best/builtin  noise  compile_s"
    print("\ntime per forward+backward (ms, median); memory = peak bytes above inputs")
    print(head)
    for r in rows:
        t = r["t"]
        best_mode = min((m for m in modes if m in t), key=lambda m: t[m], default=None)
        best = t.get(best_mode) if best_mode else None
        vs_builtin = f"{best / t['builtin']:12.2f}" if best and "builtin" in t else f"{'-':>12}"
        vs_text = f"{t['textbook'] / best:13.2f}" if best and "textbook" in t else f"{'-':>13}"
        mem = r["mem"]
        mem_ratio = (f"{mem[best_mode] / max(mem['builtin'], 1):16.2f}" if best_mode and "builtin" in mem
                     else f"{'-':>16}")
        comp = f"{r['compile']:10.1f}" if r["compile"] is not None else f"{'-':>10}"
        line = f"{r['name']:34} {r['size']:5} " + " ".join(fmt_ms(t.get(c)) for c in cols)
        line += f"  {vs_builtin} {vs_text} {mem_ratio} {r['noise']:6.2f} {comp}"
        line += f"  best={best_mode}" + (f" bw={r['bw']:.0%}" if "bw" in r else "") + (f" {r['check']}"
                                                                                           if r["check"] else "")
        print(line)
    print("\npeak memory (MB)")
    print(f"{'loss':34} {'size':5} " + " ".join(f"{c:>9}" for c in cols))
    for r in rows:
        print(f"{r['name']:34} {r['size']:5} "
              + " ".join(f"{r['mem'][c] / 1e6:9.2f}" if c in r["mem"] else f"{'-':>9}" for c in cols))


def sweep(losses: dict[str, Loss], device: torch.device, dtype: torch.dtype) -> None:
    """How time grows with the number of elements (compiled with dynamic shapes: one compilation)."""
    print("\nsize sweep: ms per forward+backward (ns per element)")
    for name in SWEEP:
        if name not in losses:
            print(f"  {name}: skipped (not in the stdlib yet)")
            continue
        case, loss = CASES[name], losses[name]
        fns = variants(loss, case, ("eager", "compiled"), dynamic=True)
        print(f"  {name}")
        for exp in range(12, 23, 2):
            inputs = case.make(1 << exp, device, dtype)
            n = inputs[0].numel()
            timings = time_steps({k: step(f, inputs) for k, f in fns.items()}, device, budget=0.2)
            cells = [f"{k}={tm.median * 1e3:.3f} ({tm.median / n * 1e9:.2f})" for k, tm in timings.items()]
            print(f"    n={n:>8}  " + "  ".join(cells), flush=True)


STARTUP = """
import sys, time
t0 = time.perf_counter()
import torch
tt = time.perf_counter()
import lossdsl
from lossdsl import api
from lossdsl.api import STDLIB_DIR
fresh = api._lower_fresh
misses = []
api._lower_fresh = lambda d, defs: misses.append(d.name) or fresh(d, defs)
t1 = time.perf_counter()
count = 0
for path in sorted(STDLIB_DIR.glob("*.loss")):
    for loss in lossdsl.load(path).values():
        loss.compile(**{p.name: 1 for p in loss.parameters if p.default is None}, **dict.fromkeys(
            loss.axis_keywords(), 3))
        count += 1
t2 = time.perf_counter()
print(f"{count} {t1 - tt:.3f} {t2 - t1:.3f} {len(misses)} {tt - t0:.3f}")
"""

FIRST_CALL = """
import time, torch, lossdsl
from lossdsl import compiled
t0 = time.perf_counter()
loss = lossdsl.stdlib.get('NAME')
m = compiled.build(loss, loss.compile(), dynamic=False)
x, y = torch.randn(1 << 20, requires_grad=True), (torch.rand(1 << 20) > 0.5).float()
torch.autograd.grad(m(x, y), x)
t1 = time.perf_counter()
torch.autograd.grad(m(x, y), x)
print(f"{t1 - t0:.2f} {m.compile_seconds:.2f}")
"""


def startup(keep_inductor: bool) -> None:
    """The pipeline cache and the Inductor cache, cold then warm, each in a new process."""
    print("\ncompile times (separate processes)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOSSDSL_CACHE_DIR": tmp}
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", STARTUP], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"  stdlib, eager, {label:4}: {out[0]} losses to nn.Modules in {float(out[2]):.2f} s, "
                  f"{out[3]} lowered afresh (not included: import lossdsl {float(out[1]):.2f} s, "
                  f"import torch {float(out[4]):.2f} s)")
        if "sigmoid_focal_loss" not in stdlib_losses():
            return
        inductor = {} if keep_inductor else {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL.replace("NAME", "sigmoid_focal_loss")],
                                 env={**env, **inductor}, capture_output=True, text=True, check=True).stdout.split()
            print(f"  sigmoid_focal_loss, compiled, {label:4}: first forward+backward {float(out[0]):.1f} s "
                  f"(forward compile {float(out[1]):.1f} s)" + ("  [torch's shared Inductor cache]"
                                                                  if keep_inductor else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated loss names")
    ap.add_argument("--sizes", default="small,large", help="small, large or element counts (1e8)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="of eager, fused and compiled.build's backwards: compiled (autograd), compiled_sym "
                         "(symbolic), compiled_fwd (in_forward), compiled_auto (auto, not in the default)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--keep-inductor-cache", action="store_true",
                    help="measure compiled cold/warm with torch's own Inductor cache dir instead of a fresh one")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's trim thresholds as they are (see measure.retain_freed_memory)")
    ap.add_argument("--recompute", default="masks", choices=tuple(compiled.POLICIES),
                    help="what compiled mode's backward recomputes instead of saving (lossdsl.compiled.POLICIES)")
    args = ap.parse_args()
    global RECOMPUTE
    RECOMPUTE = args.recompute
    torch._dynamo.config.recompile_limit = 64
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    modes = tuple(args.modes.split(","))
    losses = stdlib_losses()
    wanted = args.only.split(",") if args.only else list(CASES)
    malloc = "system allocator (--system-malloc)" if args.system_malloc else retain_freed_memory()
    print(f"device={device} dtype={dtype} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"load={os.getloadavg()[0]:.2f} malloc: {malloc}")
    if device.type == "cuda":
        peak = peak_bandwidth(device)
        print(f"GPU {torch.cuda.get_device_name(device)}, peak bandwidth "
              + (f"{peak / 1e9:.0f} GB/s" if peak else "unknown"))
    rows = []
    for name in wanted:
        if name not in losses:
            print(f"  {name}: skipped (not in the stdlib yet)")
            continue
        for size in args.sizes.split(","):
            rows.append(bench_row(name, losses[name], size, device, dtype, modes))
            print(f"  {name}/{size}: " + ", ".join(f"{k}={v * 1e3:.3f}ms" for k, v in rows[-1]["t"].items()),
                  flush=True)
    no_case = sorted(set(losses) - set(CASES))
    print(f"  no benchmark case (input generator) yet for {len(no_case)} stdlib losses: {', '.join(no_case)}")
    print_rows([r for r in rows if r], modes)
    if not args.skip_sweep:
        sweep(losses, device, dtype)
    if not args.skip_startup:
        startup(args.keep_inductor_cache)
    print(textwrap.dedent(f"""
        done; load average now {os.getloadavg()[0]:.2f} (2 cores shared: rerun when noise is high)"""))


if __name__ == "__main__":
    main()
