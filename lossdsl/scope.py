"""Index bookkeeping for the front end: which index names share an axis, and capture-free renaming."""

from __future__ import annotations

import itertools

import sympy as sp

from . import ir

ELLIPSIS = ir.index_symbol("...")  # the leading broadcast dims of undeclared-shape inputs
_fresh = itertools.count(1)


class Axes:
    """Union-find over index names: indices in one class range over the same axis (same size)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.order: list[str] = []  # first-seen order, used for canonical output order

    def add(self, name: str) -> None:
        if name not in self.parent:
            self.parent[name] = name
            self.order.append(name)

    def find(self, name: str) -> str:
        self.add(name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            first, second = sorted((ra, rb), key=self.order.index)
            self.parent[second] = first

    def known(self, name: str) -> bool:
        return name in self.parent


def free_indices(e: sp.Basic) -> list[sp.Symbol]:
    """Free index symbols of an IR expression, in a deterministic order of first occurrence."""
    out: list[sp.Symbol] = []

    def add(sym: sp.Symbol) -> None:
        if sym not in out:
            out.append(sym)

    def walk(node: sp.Basic, bound: frozenset) -> None:
        if ir.is_index(node):
            if node not in bound:
                add(node)
            return
        if isinstance(node, ir._Reduction):
            inner = bound | set(node.indices)
            walk(node.body, inner)
            walk(node.cond, inner)
            return
        if isinstance(node, ir.At):
            body, axes, values = node.args
            for sym in free_indices(body):
                if sym not in axes and sym not in bound:
                    add(sym)
            for v in values:
                walk(v, bound)
            return
        if isinstance(node, ir.FnCall):
            for sym in node.args[2]:
                walk(sym, bound)
            return
        if isinstance(node, ir.Grad):
            walk(node.args[1], bound)
            return
        if isinstance(node, ir.Size):
            return
        for arg in node.args:
            walk(arg, bound)

    walk(e, frozenset())
    return out


def fresh(sym: sp.Symbol) -> sp.Symbol:
    base = sym.name.split("__")[0]
    return ir.index_symbol(f"{base}__{next(_fresh)}")


def rename(e: sp.Basic, mapping: dict[sp.Symbol, sp.Basic],
           renamed: dict[sp.Symbol, sp.Symbol] | None = None) -> sp.Basic:
    """Substitute free index symbols, renaming bound indices that would capture a new name. `renamed`, when
    given, collects each fresh bound name with the one it replaced: the front end puts it on the same axis."""
    if not mapping:
        return e
    if ir.is_index(e):
        return mapping.get(e, e)
    if isinstance(e, ir._Reduction):
        inner = {k: v for k, v in mapping.items() if k not in e.indices}
        incoming = set().union(*(sp.sympify(v).free_symbols for v in inner.values())) if inner else set()
        new_idx, body, cond = [], e.body, e.cond
        for b in e.indices:
            if b in incoming:
                nb = fresh(b)
                body, cond = rename(body, {b: nb}, renamed), rename(cond, {b: nb}, renamed)
                if renamed is not None:
                    renamed[nb] = b
                b = nb
            new_idx.append(b)
        return type(e)(rename(body, inner, renamed), sp.Tuple(*new_idx), rename(cond, inner, renamed))
    if isinstance(e, ir.At):  # x[k, j][j = 0] binds j as a reduction does: k -> j must not be captured
        body, axes, values = e.args
        inner = {k: v for k, v in mapping.items() if k not in axes}
        incoming = set().union(*(sp.sympify(v).free_symbols for v in inner.values())) if inner else set()
        new_axes = []
        for a in axes:
            if a in incoming:
                na = fresh(a)
                body = rename(body, {a: na}, renamed)
                if renamed is not None:
                    renamed[na] = a
                a = na
            new_axes.append(a)
        return ir.At(rename(body, inner, renamed), sp.Tuple(*new_axes),
                     sp.Tuple(*(rename(v, mapping, renamed) for v in values)))
    if not e.args or isinstance(e, ir.Size):
        return e
    new_args = [rename(a, mapping, renamed) for a in e.args]
    return e.func(*new_args) if any(a is not b for a, b in zip(new_args, e.args, strict=True)) else e
