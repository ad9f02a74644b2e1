"""The emitter's values: a piece of Python code with the axis labels it carries, and how numbers print."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class V:
    """An emitted value: Python code (usually a variable), its axis labels and its flavour.

    kind: "tensor"; "num" (a Python literal); "py" (a Python int/bool such as an int parameter or a size).
    ell: the value carries the leading broadcast dims of undeclared-shape inputs.
    """

    code: str
    labels: tuple[str, ...] = ()
    kind: str = "tensor"
    ell: bool = False

    @property
    def is_tensor(self) -> bool:
        return self.kind == "tensor"


def _literal(e: sp.Basic) -> str:
    if e.is_Integer:
        if abs(int(e)) < 1 << 53:
            return f"{int(e)}.0"
        if abs(int(e)) >= 2**1024:  # 10^400 rounds to inf (repr: `inf`, a name generated code lacks)
            return "float('inf')" if e > 0 else "float('-inf')"
    value = float(e)
    return repr(value) if value == value and abs(value) != float("inf") else f"float('{value}')"


def _paren(code: str) -> str:
    if code.isidentifier() or code.replace(".", "", 1).isdigit():
        return code
    depth = 0
    for ch in code:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and ch in " +-*/<>=&|~":
            return f"({code})"
    return code
