"""The pass pipeline between the front end and the code generator: LossIR → LossIR.

Passes are registered in order (stability rewrites, simplification, ...) and each records what it did in
`LossIR.notes` so that reports can say which rewrites fired and where.
"""

from __future__ import annotations

from collections.abc import Callable

from .ir import LossIR

Pass = Callable[[LossIR], LossIR]
PIPELINE: list[tuple[str, Pass]] = []


def register(name: str) -> Callable[[Pass], Pass]:
    """Decorator: append a pass to the pipeline (modules register themselves on import)."""

    def deco(fn: Pass) -> Pass:
        if all(n != name for n, _ in PIPELINE):
            PIPELINE.append((name, fn))
        return fn

    return deco


def run(loss: LossIR, skip: tuple[str, ...] = ()) -> LossIR:
    for name, fn in PIPELINE:
        if name not in skip:
            loss = fn(loss)
    return loss
