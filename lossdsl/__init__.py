"""lossdsl: loss functions written as mathematics, compiled to fast, numerically safe PyTorch."""

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

__all__ = [
    "InputError",
    "KindError",
    "Loss",
    "LossError",
    "LossSyntaxError",
    "ParameterError",
    "ScopeError",
    "ShapeError",
    "UnknownNameError",
    "compile",
    "load",
    "parse",
]
__version__ = "0.1.0"
