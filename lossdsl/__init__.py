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

__all__ = ["Loss", "compile", "load", "parse", "LossError", "LossSyntaxError", "UnknownNameError", "ScopeError",
           "KindError", "ShapeError", "ParameterError", "InputError"]
__version__ = "0.1.0"
