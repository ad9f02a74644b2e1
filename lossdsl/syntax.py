"""The typed AST the parser produces: plain dataclasses, each with the source span it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Num(Node):
    value: float | int


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class Unary(Node):
    op: str  # "-", "+", "not", "abs", "iverson"
    operand: Expr


@dataclass(frozen=True)
class Binary(Node):
    op: str  # + - * / ^ and or, or a comparison
    left: Expr
    right: Expr


@dataclass(frozen=True)
class IfElse(Node):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True)
class IndexItem(Node):
    """One position inside `x[...]`: an expression, or `*group`."""

    expr: Expr | None
    group: str | None = None


@dataclass(frozen=True)
class Subscript(Node):
    base: Expr
    items: tuple[IndexItem, ...]


@dataclass(frozen=True)
class RedItem(Node):
    """One entry of `sum_{...}`: an index, a `*group`, or `k != i`-style condition."""

    index: str
    group: bool = False
    op: str | None = None
    bound: Expr | None = None


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...] = ()
    red_items: tuple[RedItem, ...] | None = None  # set for `op_{...}(e)`


Expr = Num | Name | Unary | Binary | IfElse | Subscript | Call


@dataclass(frozen=True)
class Axis:
    name: str
    group: bool = False


@dataclass(frozen=True)
class InputDecl(Node):
    name: str
    axes: tuple[Axis, ...] | None  # None: shape not declared, elementwise broadcast
    kind: str = "real"
    kind_arg: str | None = None


@dataclass(frozen=True)
class Constraint(Node):
    op: str  # ">", ">=", "<", "<=", "in"
    bounds: tuple[Expr, ...]


@dataclass(frozen=True)
class ParamDecl(Node):
    name: str
    axes: tuple[Axis, ...] | None
    type: str | None  # None, "int", "bool", "learnable"
    default: Expr | None
    constraint: Constraint | None


@dataclass(frozen=True)
class Statement(Node):
    kind: str  # "assign", "return", "bare", "reduce"
    target: Expr | None = None
    value: Expr | None = None
    reduce_mode: str | None = None


@dataclass(frozen=True)
class LossDef(Node):
    name: str
    inputs: tuple[InputDecl, ...]
    params: tuple[ParamDecl, ...]
    body: tuple[Statement, ...]
    doc: str | None = None
    source: str = field(default="", compare=False, repr=False)
    header: bool = True  # False for a one-line formula
