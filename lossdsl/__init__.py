"""lossdsl: loss functions written as mathematics, compiled to fast, numerically safe PyTorch."""

from . import stdlib
from .api import Loss, compile, load, parse
from .errors import (
    InputError,
    KindError,
    LossError,
    LossSyntaxError,
    ParameterError,
    ScopeError,
    ShapeError,
    UnknownNameError,
)
from .latex_in import LatexError, from_latex
from .verify import verify

__all__ = [
    "InputError",
    "KindError",
    "LatexError",
    "Loss",
    "LossError",
    "LossSyntaxError",
    "ParameterError",
    "ScopeError",
    "ShapeError",
    "UnknownNameError",
    "compile",
    "from_latex",
    "load",
    "parse",
    "stdlib",
    "verify",
]
__version__ = "0.1.0"

from . import rewrite as _rewrite  # noqa: F401 - registers the stability pass with the pipeline
