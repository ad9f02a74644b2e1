"""One exception family for everything a user can get wrong.

Every compile-time error carries the source position so the message can show the offending line with a caret;
runtime input errors also derive from ValueError so plain `except ValueError` code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in the loss source."""

    line: int
    column: int
    end_line: int
    end_column: int


class LossError(Exception):
    """Base class of every error lossdsl raises on purpose."""

    def __init__(self, message: str, span: Span | None = None, source: str | None = None) -> None:
        self.message = message
        self.span = span
        self.source = source
        super().__init__(self._render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_source(self, source: str) -> LossError:
        """Attach the text the span refers to, so the message can quote it."""
        if self.source is None:
            self.source = source
            self.args = (self._render(),)
        return self

    def excerpt(self) -> str:
        if self.span is None or self.source is None:
            return ""
        lines = self.source.splitlines() or [""]
        text = lines[min(self.span.line, len(lines)) - 1]
        width = 1
        if self.span.end_line == self.span.line:
            width = max(1, self.span.end_column - self.span.column)
        caret = " " * (self.span.column - 1) + "^" * width
        return f"    {text}\n    {caret}"

    def _render(self) -> str:
        where = f"line {self.span.line}, column {self.span.column}: " if self.span else ""
        excerpt = self.excerpt()
        return f"{where}{self.message}" + (f"\n{excerpt}" if excerpt else "")

    def __str__(self) -> str:
        return self._render()


class LossSyntaxError(LossError):
    """The text does not follow the grammar."""


class UnknownNameError(LossError):
    """A name that is neither an input, a parameter, an intermediate, an index nor a function."""


class ScopeError(LossError):
    """An index used where it is not bound, or bound twice."""


class KindError(LossError):
    """A value used against its declared kind (calling a non-`fn`, gathering with a non-index, ...)."""


class ShapeError(LossError):
    """Axes that must agree do not (compile time)."""


class ParameterError(LossError, ValueError):
    """A parameter value is missing, of the wrong type, or violates its constraint."""


class InputError(LossError, ValueError):
    """A tensor handed to a compiled loss at run time has the wrong shape, dtype or values."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The known name a typo most likely meant, if any is close enough."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    guess = closest(name, candidates)
    return f"; did you mean '{guess}'?" if guess else ""
