"""Stability report for the whole stdlib: rules fired per loss and bits lost, naive vs rewritten.

    python benchmarks/stability_report.py            # summary table, one line per loss
    python benchmarks/stability_report.py --full     # every loss's full report
    python benchmarks/stability_report.py --dtypes float32,float16,bfloat16,float64

Bits are log2(1 + |error| / ulp) against the naive formula evaluated in mpmath (lossdsl.mpeval); the
summary shows, for float32 and float16 on sampled and on extreme inputs (magnitudes 1e-3 .. 1e4), the worst
value and gradient error of the rewritten loss and, in brackets, of the naive one ("nf" = NaN or inf).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from lossdsl.api import load
from lossdsl.stability import Measure, StabilityReport, report

STDLIB = Path(__file__).parents[1] / "stdlib"


def cell(m: Measure | None) -> str:
    if m is None:
        return "-"
    if m.nonfinite:
        return "nf"
    return "nan" if math.isnan(m.worst) else f"{m.worst:.1f}"


def summary(rep: StabilityReport, dtypes: list[str]) -> str:
    rules = ",".join(sorted({n["rule"] for n in rep.fired})) or "-"
    if rep.skipped:
        return f"{rep.name:<36} {rules:<40} not measured ({rep.skipped[:50]})"
    parts = []
    for inputs in ("sampled", "extreme"):
        for dt in dtypes:
            new, old = rep.row(dt, inputs, "rewritten"), rep.row(dt, inputs, "naive")
            parts.append(f"{cell(new.value)}/{cell(new.grad)} [{cell(old.value)}/{cell(old.grad)}]")
    return f"{rep.name:<36} {rules:<40} " + "  ".join(f"{p:<22}" for p in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="print every loss's full report")
    parser.add_argument("--dtypes", default="float32,float16", help="comma-separated: float64, float32, "
                        "float16, bfloat16 (inputs are drawn exact in the narrowest)")
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    start = time.perf_counter()
    head = "value/grad worst bits: rewritten [naive]"
    cols = [f"{kind} {dt.replace('bfloat', 'bf').replace('float', 'f')}" for kind in ("sampled", "extreme")
            for dt in dtypes]
    print(f"{'loss':<36} {'rules fired':<40} " + "  ".join(f"{c:<22}" for c in cols) + f"   ({head})")
    for path in sorted(STDLIB.glob("*.loss")):
        for loss in load(path).values():
            rep = report(loss, dtypes=tuple(dtypes))
            print(str(rep) if args.full else summary(rep, dtypes), flush=True)
    print(f"\n{time.perf_counter() - start:.1f} s for the whole stdlib")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
